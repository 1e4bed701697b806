"""The transferlens ``.pt`` checkpoint: self-describing, loadable with ``weights_only=True``.

Layout (a plain dict; only tensors, str, int, float, bool, None, lists and dicts)::

    {
      "format": "transferlens.checkpoint",
      "format_version": 1,
      "config": {...},                  # Hugging Face config as a plain dict
      "tokenizer": {"files": {name: text}, "binary": {name: uint8 tensor}},
      "provenance": {...},              # parent, method, config, data, seed, versions
      "state_dict": {name: tensor} | None,   # full weights (None for LoRA runs)
      "adapter": None | {
          "state_dict": {name: tensor},  # PEFT adapter weights
          "peft_config": {...},          # LoraConfig as a dict
          "parent": {"path": str, "fingerprint": str},
      },
    }

Nothing is ever unpickled: :func:`read_checkpoint` uses ``torch.load(weights_only=True)``.
Writes are atomic (temporary file in the same folder, then rename). See docs/checkpoint.md.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..results import to_jsonable

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "package_versions",
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
    for pkg in ("transferlens", "torch", "transformers", "peft", "tokenizers", "accelerate",
                "transformer-lens", "nnsight", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


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
        tokenizer: its tokenizer (files embedded).
        provenance: plain-JSON provenance; package versions are added.
        adapter: for LoRA runs, ``{"state_dict", "peft_config", "parent": {"path", "fingerprint"}}``;
            only the adapter weights are stored.
        overwrite: replace an existing file.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from .sitemap import unwrap_model

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    root = unwrap_model(model)
    prov = dict(provenance or {})
    prov.setdefault("versions", package_versions())
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_jsonable(root.config.to_dict()),
        "tokenizer": tokenizer_files(tokenizer),
        "provenance": to_jsonable(prov),
        "state_dict": None,
        "adapter": None,
    }
    if adapter is None:
        doc["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in root.state_dict().items()}
    else:
        doc["adapter"] = {
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in adapter["state_dict"].items()},
            "peft_config": to_jsonable(adapter["peft_config"]),
            "parent": to_jsonable(adapter["parent"]),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(doc, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint without unpickling anything.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a checkpoint, truncated, an unsafe pickle, or a wrong layout.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a .pt checkpoint")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that would run code "
                "when unpickled (transferlens checkpoints hold only tensors and plain data)"
            ) from None
        raise CheckpointError(f"{path}: not a transferlens checkpoint ({msg})") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as e:
        text = str(e)
        if "failed finding central directory" in text or "not a ZIP" in text.lower() or isinstance(
            e, (zipfile.BadZipFile, EOFError)
        ):
            raise CheckpointError(
                f"{path}: not a transferlens checkpoint, or truncated/corrupt (cannot read it "
                "as a torch file)"
            ) from None
        raise CheckpointError(f"{path}: cannot read the checkpoint ({text.splitlines()[0]})") from None
    except Exception as e:  # torch raises assorted errors on garbage input
        raise CheckpointError(
            f"{path}: not a transferlens checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
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
    if doc.get("state_dict") is None and doc.get("adapter") is None:
        raise CheckpointError(f"{path}: checkpoint has neither weights nor an adapter")
    return doc
