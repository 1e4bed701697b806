"""The transferlens ``.pt`` checkpoint: self-describing, loadable with ``weights_only=True``.

Layout (a plain dict; only tensors, str, int, float, bool, None, lists and dicts)::

    {
      "format": "transferlens.checkpoint",
      "format_version": 1,
      "config": {...},                  # Hugging Face config as a plain dict (with architectures)
      "tokenizer": {"files": {name: text}, "binary": {name: uint8 tensor}},
      "provenance": {...},              # parent, method, config, data, seed, versions
      "state_dict": {name: tensor} | None,   # full weights (None for LoRA runs)
      "adapter": None | {
          "state_dict": {name: tensor},  # PEFT adapter weights (get_peft_model_state_dict)
          "peft_config": {...},          # LoraConfig as a dict
          "parent": {"path": str, "fingerprint": str},
      },
    }

Nothing is ever unpickled: :func:`read_checkpoint` checks the zip container first and then
uses ``torch.load(weights_only=True)``. Writes are atomic (temporary file in the same folder,
flushed to disk, then renamed). See docs/checkpoint.md.
"""

from __future__ import annotations

import enum
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, first_line

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "package_versions",
    "plain_data",
    "read_checkpoint",
    "save_checkpoint",
    "tokenizer_files",
]

FORMAT = "transferlens.checkpoint"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide numbers (for provenance and manifests)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "transferlens",
        "torch",
        "transformers",
        "peft",
        "tokenizers",
        "accelerate",
        "transformer-lens",
        "nnsight",
        "numpy",
        "scikit-learn",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def plain_data(obj: Any) -> Any:
    """``obj`` as plain Python data that ``torch.load(weights_only=True)`` accepts.

    Enums become their value, sets sorted lists, tuples lists, paths and dtypes strings,
    numpy/torch scalars and arrays Python numbers and lists, objects with ``to_dict`` dicts.

    Raises:
        TypeError: an object with no plain-data form.
    """
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, enum.Enum):
        return plain_data(obj.value)
    if isinstance(obj, str):
        return str(obj)  # drops str subclasses, which would need their class to unpickle
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(plain_data(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, (os.PathLike, torch.dtype)):
        return str(obj)
    if hasattr(obj, "tolist"):
        return plain_data(obj.tolist())
    if hasattr(obj, "to_dict"):
        return plain_data(obj.to_dict())
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (plain data only)")


def tokenizer_files(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's files as ``{"files": {name: text}, "binary": {name: uint8 tensor}}``."""
    files: dict[str, str] = {}
    binary: dict[str, torch.Tensor] = {}
    if tokenizer is None:
        return {"files": files, "binary": binary}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for p in sorted(Path(tmp).iterdir()):
            if not p.is_file():
                continue
            data = p.read_bytes()
            try:
                files[p.name] = data.decode("utf-8")
            except UnicodeDecodeError:
                binary[p.name] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    return {"files": files, "binary": binary}


def _config_dict(root: nn.Module) -> dict[str, Any]:
    cfg = getattr(root, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise ValueError(
            f"{type(root).__name__} has no Hugging Face config: save_checkpoint stores Hugging "
            "Face models (load other modules through transferlens.models.load_model first)"
        )
    d = cfg.to_dict()
    if type(root).__module__.startswith("transformers."):
        d["architectures"] = [type(root).__name__]  # the exact class to rebuild on load
    return plain_data(d)


def _check_adapter(adapter: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("state_dict", "peft_config", "parent") if k not in adapter]
    if missing:
        raise ValueError(
            f"adapter needs the keys state_dict, peft_config and parent; missing: {', '.join(missing)}"
        )
    parent = adapter["parent"]
    if not isinstance(parent, dict) or not parent.get("path") or not parent.get("fingerprint"):
        raise ValueError(
            "adapter['parent'] must be {'path': <parent model>, 'fingerprint': <its fingerprint>}"
        )
    return {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in adapter["state_dict"].items()},
        "peft_config": plain_data(adapter["peft_config"]),
        "parent": plain_data(parent),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    tokenizer: Any,
    provenance: dict[str, Any] | None = None,
    *,
    adapter: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: target ``.pt`` file.
        model: the Hugging Face model (full weights are stored unless ``adapter`` is given).
            A PEFT-wrapped model needs ``adapter`` (or ``merge_and_unload()`` first).
        tokenizer: its tokenizer (files embedded).
        provenance: plain-data provenance; package versions are added under ``versions``.
        adapter: for LoRA runs, ``{"state_dict", "peft_config", "parent": {"path",
            "fingerprint"}}``; only the adapter weights are stored.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: a model without a Hugging Face config, an incomplete ``adapter``, a PEFT
            model without ``adapter``, or provenance that is not plain data.
    """
    from .sitemap import is_peft_model, unwrap_model

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as model.pt")
    if adapter is None and is_peft_model(model):
        raise ValueError(
            "this is a PEFT model: pass adapter={'state_dict', 'peft_config', 'parent'} to store "
            "the adapter, or call merge_and_unload() to store merged full weights"
        )
    root = unwrap_model(model)
    prov = dict(provenance or {})
    prov.setdefault("versions", package_versions())
    try:
        prov = plain_data(prov)
    except TypeError as e:
        raise ValueError(f"provenance: {e}") from None
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _config_dict(root),
        "tokenizer": tokenizer_files(tokenizer),
        "provenance": prov,
        "state_dict": None,
        "adapter": None,
    }
    if adapter is None:
        doc["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in root.state_dict().items()}
    else:
        doc["adapter"] = _check_adapter(adapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _sniff(path: Path) -> None:
    """Refuse files that are not an intact torch zip archive, before torch sees them."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] != b"PK\x03\x04":
        if head[:4] == b"GGUF":
            raise CheckpointError(f"{path}: this is a GGUF file; give it the .gguf extension")
        kind = "a text file" if _looks_like_text(head) else "not a torch file"
        raise CheckpointError(
            f"{path}: not a transferlens checkpoint ({kind}); pass a .pt file written by "
            "transferlens, a Hugging Face model folder, a PEFT folder or a .gguf file"
        )
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: the checkpoint is truncated or corrupt (its zip directory is missing); "
                "copy it again or re-run the step that wrote it"
            )
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n.endswith("/data.pkl") for n in names):
                raise CheckpointError(
                    f"{path}: a zip archive, but not a torch file (no data.pkl); pass a .pt file "
                    "written by transferlens"
                )
            bad = z.testzip()
    except CheckpointError:
        raise
    except Exception as e:  # zipfile raises assorted errors on a damaged directory or header
        raise CheckpointError(
            f"{path}: the checkpoint is corrupt ({type(e).__name__}: {first_line(e)}); "
            "copy it again"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{path}: the checkpoint is corrupt (checksum mismatch in {bad}); copy it again"
        )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint without unpickling anything.

    Args:
        path: a ``.pt`` file written by :func:`save_checkpoint`.

    Returns:
        The checkpoint dict (layout in the module docstring).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a checkpoint, truncated or corrupt, an unsafe pickle, or a wrong
            layout.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a .pt checkpoint")
    _sniff(path)
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that would run code "
                "when unpickled (transferlens checkpoints hold only tensors and plain data)"
            ) from None
        raise CheckpointError(f"{path}: not a transferlens checkpoint ({first_line(e)})") from None
    except Exception as e:  # torch raises assorted errors on damaged archives
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {first_line(e)})"
        ) from None
    _validate(doc, path)
    return doc


def _validate(doc: Any, path: Path) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a transferlens checkpoint (no 'format: {FORMAT}' header); "
            "for a Hugging Face model pass its folder instead"
        )
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {doc.get('format_version')!r} is not supported "
            f"(this transferlens reads version {FORMAT_VERSION})"
        )
    for key in ("config", "tokenizer", "provenance"):
        if not isinstance(doc.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no '{key}' section")
    sd, ad = doc.get("state_dict"), doc.get("adapter")
    if sd is None and ad is None:
        raise CheckpointError(f"{path}: checkpoint has neither weights nor an adapter")
    if sd is not None and not (
        isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    ):
        raise CheckpointError(f"{path}: checkpoint 'state_dict' is not a dict of tensors")
    if ad is not None and not (
        isinstance(ad, dict)
        and isinstance(ad.get("state_dict"), dict)
        and isinstance(ad.get("peft_config"), dict)
        and isinstance(ad.get("parent"), dict)
    ):
        raise CheckpointError(
            f"{path}: checkpoint 'adapter' needs state_dict, peft_config and parent sections"
        )
