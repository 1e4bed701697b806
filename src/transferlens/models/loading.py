"""``load_model(spec)``: one entry point for every way researchers hold a model.

``spec`` may be a transferlens ``.pt`` checkpoint, a Hugging Face model folder, a GGUF file,
a PEFT adapter folder, an ``nn.Module`` (pass ``tokenizer=``), a TransformerLens
``TransformerBridge``, an nnsight model object, or a hub id (online users only).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, TransferlensError
from .checkpoint import read_checkpoint
from .handle import ModelHandle
from .sitemap import SiteMap

__all__ = ["load_model", "model_from_checkpoint_doc", "resolve_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"float32"`` / ``torch.float16`` / None -> a torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16, float64")
    return _DTYPES[key]


def load_model(
    spec: Any,
    *,
    tokenizer: Any = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    merge: bool = False,
    name: str | None = None,
) -> ModelHandle:
    """Load a model and return a :class:`ModelHandle` (eval mode).

    Args:
        spec: path, hub id, or model object (see module docstring).
        tokenizer: tokenizer for an ``nn.Module`` spec (others carry their own).
        device: where to put the model.
        dtype: convert the weights (``"float32"``, ``"bfloat16"``, ...); None keeps them.
        merge: for LoRA checkpoints and PEFT folders, merge the adapter into the weights.
        name: display name (default: derived from the spec).

    Raises:
        FileNotFoundError: a path that does not exist.
        CheckpointError / TransferlensError / ValueError: anything else wrong with the input,
            with a one-line message.
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(spec, ModelHandle):
        handle = spec
    elif isinstance(spec, (str, os.PathLike)):
        handle = _load_path(str(spec), merge=merge)
    else:
        handle = _load_object(spec, tokenizer)
    if name:
        handle.name = name
    model = handle.model
    if torch_dtype is not None or device is not None:
        model.to(device=device, dtype=torch_dtype)
    model.eval()
    return handle


# --------------------------------------------------------------------------- objects
def _load_object(obj: Any, tokenizer: Any) -> ModelHandle:
    mod = type(obj).__module__
    if mod.startswith("transformer_lens"):
        hf = getattr(obj, "original_model", None)
        if hf is None:
            raise TransferlensError(
                "this TransformerLens object has no Hugging Face model inside; build it with "
                "TransformerBridge (boot_transformers / boot_native)"
            )
        tok = tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
        return _handle(hf, tok, "<TransformerBridge>", "transformer_lens")
    if mod.startswith("nnsight"):
        inner = getattr(obj, "_module", None)
        if not isinstance(inner, nn.Module):
            raise TransferlensError("this nnsight object does not wrap a torch module")
        tok = tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
        return _handle(inner, tok, "<nnsight>", "nnsight")
    if isinstance(obj, nn.Module):
        return _handle(obj, tokenizer, "<module>", "module")
    raise TransferlensError(
        f"cannot load a model from a {type(obj).__name__}: pass a path, a hub id, an nn.Module "
        "with tokenizer=, a TransformerBridge or an nnsight model"
    )


def _handle(model: nn.Module, tokenizer: Any, spec: str, source: str,
            provenance: dict | None = None) -> ModelHandle:
    sitemap = SiteMap(model)
    name = Path(spec).stem if not spec.startswith("<") else sitemap.family.name
    return ModelHandle(model=model, tokenizer=tokenizer, sitemap=sitemap, spec=spec,
                       source=source, provenance=provenance or {}, name=name)


# --------------------------------------------------------------------------- paths
def _load_path(spec: str, *, merge: bool) -> ModelHandle:
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _load_gguf(path)
        return _load_checkpoint(path, merge=merge)
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            return _load_peft_dir(path, merge=merge)
        if (path / "config.json").exists():
            return _load_hf_dir(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0])
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
        return _load_hub(spec)
    raise FileNotFoundError(f"{spec}: no such file or folder")


def _hf_classes(config: Any):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    if getattr(config, "is_decoder", False) or config.model_type != "bert":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForMaskedLM


def _load_hf_dir(path: Path) -> ModelHandle:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise TransferlensError(f"{path}: cannot read config.json ({_first_line(e)})") from None
    from .sites import family_for

    family_for(config.model_type)  # fail early, with the list of families
    cls = _hf_classes(config)
    model = cls.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return _handle(model, tok, str(path), "hf")


def _load_hub(spec: str) -> ModelHandle:  # pragma: no cover - needs network
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(spec)
    model = _hf_classes(config).from_pretrained(spec)
    tok = AutoTokenizer.from_pretrained(spec)
    return _handle(model, tok, spec, "hub")


def _load_gguf(path: Path) -> ModelHandle:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise TransferlensError(
            f"{path}: loading GGUF files needs the 'gguf' package; install it with "
            "`pip install gguf` (or `pip install transferlens[gguf]`)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise TransferlensError(f"{path}: cannot load the GGUF file ({_first_line(e)})") from None
    return _handle(model, tok, str(path), "gguf")


def _load_peft_dir(path: Path, *, merge: bool) -> ModelHandle:
    from peft import PeftModel

    cfg = json.loads((path / "adapter_config.json").read_text())
    base_ref = cfg.get("base_model_name_or_path")
    if not base_ref:
        raise TransferlensError(f"{path}: adapter_config.json names no base model")
    base_path = Path(base_ref)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = path / base_ref
    if not base_path.exists():
        raise FileNotFoundError(
            f"{path}: the adapter's base model {base_ref!r} is missing; put it there or edit "
            "base_model_name_or_path in adapter_config.json"
        )
    base = _load_path(str(base_path), merge=False)
    model = PeftModel.from_pretrained(base.model, str(path))
    if merge:
        model = model.merge_and_unload()
    prov = {"parent": {"path": str(base_path), "fingerprint": base.fingerprint},
            "method": "peft-adapter", "merged": merge}
    return _handle(model, base.tokenizer, str(path), "peft", prov)


# --------------------------------------------------------------------------- checkpoints
def _load_checkpoint(path: Path, *, merge: bool) -> ModelHandle:
    doc = read_checkpoint(path)
    model, tok = model_from_checkpoint_doc(doc, path=path, merge=merge)
    return _handle(model, tok, str(path), "checkpoint", doc["provenance"])


def model_from_checkpoint_doc(doc: dict[str, Any], *, path: Path | None = None,
                              merge: bool = False) -> tuple[nn.Module, Any]:
    """Build (model, tokenizer) from a validated checkpoint dict."""
    from transformers import AutoConfig

    where = str(path) if path else "checkpoint"
    cfg_dict = dict(doc["config"])
    model_type = cfg_dict.pop("model_type", None)
    if not model_type:
        raise CheckpointError(f"{where}: the stored config has no model_type")
    from .sites import family_for

    family_for(model_type)
    try:
        config = AutoConfig.for_model(model_type, **cfg_dict)
    except ValueError as e:
        raise CheckpointError(f"{where}: cannot build the config ({_first_line(e)})") from None
    tok = _tokenizer_from_files(doc["tokenizer"], where)
    if doc.get("adapter") is not None:
        return _apply_adapter(doc, where, path, merge), tok
    model = _hf_classes(config).from_config(config)
    _load_weights(model, doc["state_dict"], where)
    return model, tok


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    # tied weights may be stored under one name only
    tied = {k for k in missing if any(own[k] is own[o] or own[k].data_ptr() == own[o].data_ptr()
                                      for o in own if o in state)}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: stored "
                         f"{tuple(state[k].shape)}, config wants {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{where}: weights do not match the config: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _tokenizer_from_files(tokdoc: dict[str, Any], where: str) -> Any:
    from transformers import AutoTokenizer

    files = tokdoc.get("files") or {}
    if not files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            if "/" in name or name.startswith("."):
                raise CheckpointError(f"{where}: bad tokenizer file name {name!r}")
            Path(tmp, name).write_text(text, encoding="utf-8")
        for name, tensor in (tokdoc.get("binary") or {}).items():
            if "/" in name or name.startswith("."):
                raise CheckpointError(f"{where}: bad tokenizer file name {name!r}")
            Path(tmp, name).write_bytes(tensor.numpy().tobytes())
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)


def _apply_adapter(doc: dict[str, Any], where: str, path: Path | None, merge: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    ad = doc["adapter"]
    parent = ad.get("parent") or {}
    ppath = Path(parent.get("path", ""))
    if not ppath.is_absolute() and path is not None and not ppath.exists():
        ppath = path.parent / ppath
    if not parent.get("path") or not ppath.exists():
        raise FileNotFoundError(
            f"{where}: LoRA checkpoint's parent model {parent.get('path')!r} is missing; "
            "put it back or load the merged checkpoint"
        )
    base = _load_path(str(ppath), merge=True)
    want = parent.get("fingerprint")
    if want and base.fingerprint != want:
        raise CheckpointError(
            f"{where}: parent {ppath} has fingerprint {base.fingerprint[:12]}, but the adapter "
            f"was trained on {want[:12]}: the parent changed since training"
        )
    cfg = dict(ad["peft_config"])
    known = set(LoraConfig.__dataclass_fields__)
    cfg = {k: v for k, v in cfg.items() if k in known}
    model = get_peft_model(base.model, LoraConfig(**cfg))
    res = set_peft_model_state_dict(model, ad["state_dict"])
    bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise CheckpointError(f"{where}: adapter weights do not match its config (e.g. {bad[0]})")
    if merge:
        model = model.merge_and_unload()
    return model


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__

