"""``load_model(spec)``: one entry point for every way researchers hold a model.

``spec`` may be a transferlens ``.pt`` checkpoint, a Hugging Face model folder, a GGUF file
(or a folder holding exactly one), a PEFT adapter folder, an ``nn.Module`` (pass
``tokenizer=``), a TransformerLens ``TransformerBridge``, an nnsight model object
(``NNsight``, ``LanguageModel``, ``TransformersModel``), a :class:`ModelHandle`, or a hub id
(online users only). See docs/models.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TransferlensError
from .checkpoint import read_checkpoint
from .handle import ModelHandle
from .hf_sources import load_gguf, load_hf_dir, load_hub, load_peft_dir
from .restore import model_from_checkpoint_doc
from .sitemap import SiteMap

__all__ = ["load_model", "model_from_checkpoint_doc", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"float32"`` / ``torch.float16`` / None -> a torch dtype or None.

    Raises:
        ValueError: an unknown name.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16, float64")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``"cuda:1"`` / ``torch.device`` / None -> a torch device this machine has, or None
    (``cpu``, ``cuda``, ``mps``, ``xpu``, and ``meta`` for shapes without weights).

    Raises:
        ValueError: an unknown device name, or a device this machine does not have (no CUDA,
            a CUDA index beyond the GPUs present, no MPS).
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N (the N-th GPU) or mps"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {str(device)!r}: this machine has no CUDA GPU that torch can use "
                f"(torch {torch.__version__}); use cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use cpu")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ValueError(f"device {str(device)!r}: no XPU is available here; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise ValueError(
            f"unsupported device {str(device)!r}; use cpu, cuda, cuda:N (the N-th GPU) or mps"
        )
    return dev


def load_model(
    spec: Any,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    merge: bool = False,
    name: str | None = None,
) -> ModelHandle:
    """Load a model and return a :class:`ModelHandle` (eval mode).

    Args:
        spec: path, hub id, or model object (see module docstring).
        tokenizer: tokenizer for an ``nn.Module`` / ``NNsight`` spec, or to replace the one a
            spec carries.
        device: where to put the model (checked first: a device this machine lacks is a
            ``ValueError``); None leaves it where it is (files load on the CPU).
        dtype: convert the floating-point weights (``"float32"``, ``"bfloat16"``, ...); None
            keeps the stored dtype. Objects passed in are converted (and set to eval mode) in
            place, as ``nn.Module.to`` does.
        merge: for LoRA checkpoints and PEFT folders, merge the adapter into the weights.
        name: display name (default: derived from the spec).

    Returns:
        The handle; ``handle.fingerprint`` identifies the weights whatever file held them.

    Raises:
        FileNotFoundError: a path that does not exist, or a PEFT/LoRA parent that is missing.
        CheckpointError: a file that is not an intact, safe transferlens checkpoint, or whose
            weights do not match its config.
        TransferlensError / ValueError: anything else wrong with the input (unsupported
            architecture, GGUF without the ``gguf`` package, ...), with a one-line message.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if isinstance(spec, ModelHandle):
        handle = spec
        if tokenizer is not None:
            handle.tokenizer = tokenizer
    elif isinstance(spec, (str, os.PathLike)):
        handle = _load_path(str(spec), merge=merge)
        if tokenizer is not None:
            handle.tokenizer = tokenizer
    else:
        handle = _load_object(spec, tokenizer)
    if name:
        handle.name = name
    model = handle.model
    if torch_dtype is not None and torch_dtype != handle.dtype:
        _convert(model, torch_dtype)
        handle._fingerprint = None  # the bytes changed
    if torch_device is not None:
        model.to(device=torch_device)
    model.eval()
    return handle


def _convert(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)`` as ``from_pretrained(dtype=...)`` would load the model: buffers
    outside the state dict (computed at construction, like RoPE's ``inv_freq``) keep their
    dtype and values (float32) — cast to bfloat16, the rotary angles drifted with position
    (logits off by > 1 at position 500)."""
    persistent = set(model.state_dict())
    keep = {n for n, b in model.named_buffers() if b.is_floating_point() and n not in persistent}
    saved = {n: b.clone() for n, b in model.named_buffers() if n in keep}
    model.to(dtype=dtype)
    for n, buf in saved.items():
        owner, _, attr = n.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        mod._buffers[attr] = buf.to(device=mod._buffers[attr].device)


def _bridge_tokenizer(bridge: Any, hf: nn.Module) -> Any:
    """The model's own tokenizer for a TransformerBridge: read from the model's local folder
    when there is one. The bridge's ``tokenizer`` is a copy that always prepends BOS (its
    convention), so for models whose tokenizer adds none (GPT-2, SmolLM2) every text would be
    tokenised differently from the same model loaded from its folder."""
    folder = getattr(getattr(hf, "config", None), "_name_or_path", "") or ""
    if folder and Path(folder).is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError):
            pass
    tok = getattr(bridge, "tokenizer", None)
    if tok is not None:
        log.warning(
            "using the TransformerBridge's tokenizer, which always prepends BOS; pass "
            "tokenizer= (the model's own) to tokenise as the model does elsewhere"
        )
    return tok


# --------------------------------------------------------------------------- objects
def _load_object(obj: Any, tokenizer: Any) -> ModelHandle:
    mod = type(obj).__module__
    if mod.startswith("transformer_lens"):
        hf = getattr(obj, "original_model", None)
        if not isinstance(hf, nn.Module):
            raise TransferlensError(
                f"this TransformerLens {type(obj).__name__} holds converted weights, not a "
                "Hugging Face model; build it with TransformerBridge.boot_transformers(...) "
                "or pass the Hugging Face model itself"
            )
        tok = tokenizer if tokenizer is not None else _bridge_tokenizer(obj, hf)
        return _handle(hf, tok, "<TransformerBridge>", "transformer_lens")
    if mod.startswith("nnsight"):
        if getattr(obj, "dispatched", True) is False and callable(getattr(obj, "dispatch", None)):
            obj.dispatch()  # a lazily built (meta) model: load its real weights
        inner = getattr(obj, "_module", None)
        if not isinstance(inner, nn.Module):
            raise TransferlensError(
                f"this nnsight {type(obj).__name__} does not wrap a torch module"
            )
        tok = tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
        return _handle(inner, tok, "<nnsight>", "nnsight")
    if isinstance(obj, nn.Module):
        return _handle(obj, tokenizer, "<module>", "module")
    raise TransferlensError(
        f"cannot load a model from a {type(obj).__name__}: pass a path, a hub id, an nn.Module "
        "with tokenizer=, a TransformerBridge or an nnsight model"
    )


def _handle(
    model: nn.Module, tokenizer: Any, spec: str, source: str, provenance: dict | None = None
) -> ModelHandle:
    sitemap = SiteMap(model)
    if tokenizer is None:
        log.warning("%s has no tokenizer: pass tokenizer= to load_model to analyse text", spec)
    name = Path(spec).stem if not spec.startswith("<") else sitemap.family.name
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        sitemap=sitemap,
        spec=spec,
        source=source,
        provenance=provenance or {},
        name=name,
    )


# --------------------------------------------------------------------------- paths
def _load_path(spec: str, *, merge: bool) -> ModelHandle:
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _handle(*_split(load_gguf(path)), str(path), "gguf")
        doc = read_checkpoint(path)
        model, tok = model_from_checkpoint_doc(doc, path=path, merge=merge)
        return _handle(model, tok, str(path), "checkpoint", doc["provenance"])
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            model, tok, prov = load_peft_dir(
                path, merge=merge, load_base=lambda s: _load_path(s, merge=True)
            )
            return _handle(model, tok, str(path), "peft", prov)
        if (path / "config.json").exists():
            return _handle(*_split(load_hf_dir(path)), str(path), "hf")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _handle(*_split(load_gguf(ggufs[0])), str(ggufs[0]), "gguf")
        raise TransferlensError(
            f"{path}: folder holds no config.json (Hugging Face model), adapter_config.json "
            "(PEFT adapter) or single .gguf file"
        )
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if looks_like_hub_id and not path.suffix:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(
                f"{spec}: no such path, and HF_HUB_OFFLINE=1 forbids loading it as a hub id"
            )
        return _handle(*_split(load_hub(spec)), spec, "hub")  # pragma: no cover - network
    raise FileNotFoundError(f"{spec}: no such file or folder")


def _split(loaded: tuple[nn.Module, Any, dict]) -> tuple[nn.Module, Any]:
    return loaded[0], loaded[1]
