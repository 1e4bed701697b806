"""Rebuilding a model from a validated transferlens checkpoint (see :mod:`.checkpoint`).

Full-weight checkpoints rebuild the architecture from the stored config and load the stored
tensors, refusing any mismatch (missing, unexpected or wrongly shaped tensors; tied weights
that were stored with different values). LoRA checkpoints load their parent model, check that
its fingerprint is the one the adapter was trained on, and attach (or merge) the adapter.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, first_line
from .hf_sources import build_model

__all__ = ["model_from_checkpoint_doc"]


def model_from_checkpoint_doc(
    doc: dict[str, Any],
    *,
    path: Path | None = None,
    merge: bool = False,
    load_parent: Callable[[str], Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Build ``(model, tokenizer)`` from a checkpoint dict returned by ``read_checkpoint``.

    Args:
        doc: the checkpoint dict.
        path: the file it came from (for messages and to resolve a relative parent path).
        merge: for LoRA checkpoints, merge the adapter into the parent's weights.
        load_parent: ``spec -> ModelHandle`` used to load a LoRA checkpoint's parent
            (default: :func:`transferlens.models.load_model` with ``merge=True``).

    Raises:
        CheckpointError: the config or weights do not describe one model; the LoRA parent
            changed since training.
        FileNotFoundError: a LoRA checkpoint's parent is missing.
        ValueError: unsupported architecture.
    """
    from transformers import AutoConfig

    where = str(path) if path else "checkpoint"
    cfg_dict = dict(doc["config"])
    model_type = cfg_dict.pop("model_type", None)
    if not model_type:
        raise CheckpointError(f"{where}: the stored config has no model_type")
    from .sites import family_for

    try:
        family_for(model_type)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    try:
        config = AutoConfig.for_model(model_type, **cfg_dict)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{where}: cannot build the config ({first_line(e)})") from None
    tok = _tokenizer_from_files(doc["tokenizer"], where)
    if doc.get("adapter") is not None:
        return _apply_adapter(doc, where, path, merge, load_parent), tok
    state = doc["state_dict"]
    model = build_model(config, _main_dtype(state))
    load_weights(model, state, where)
    return model, tok


def _main_dtype(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    counts: Counter = Counter()
    for v in state.values():
        if v.is_floating_point():
            counts[v.dtype] += v.numel()
    return counts.most_common(1)[0][0] if counts else None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model`` exactly, or raise a one-line :class:`CheckpointError`.

    Tied parameters (one tensor under several names) may be stored under any one of their
    names; when several are stored they must hold the same values. Stored dtypes are kept.
    """
    own = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for k, v in own.items():
        groups.setdefault(id(v), []).append(k)
    missing, tied_diff = [], []
    for names in groups.values():
        stored = [k for k in names if k in state]
        if not stored:
            missing += names
        elif len(stored) > 1 and any(
            state[k].shape != state[stored[0]].shape or not torch.equal(state[k], state[stored[0]])
            for k in stored[1:]
        ):
            tied_diff.append(stored)
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes or tied_diff:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (e.g. {k}: stored "
                f"{tuple(state[k].shape)}, config wants {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if tied_diff:
            a, b = tied_diff[0][:2]
            parts.append(f"{a} and {b} are tied by the config but stored with different values")
        raise CheckpointError(
            f"{where}: weights do not match the config: " + "; ".join(parts) + "; the stored "
            "config was edited or belongs to another model: re-save it with save_checkpoint"
        )
    with torch.no_grad():
        for k, t in own.items():
            src = state.get(k)
            if src is None:
                continue  # a tied name stored under another name
            if t.dtype != src.dtype and src.is_floating_point():
                t.data = src.to(device=t.device).clone()  # keep the stored dtype
            else:
                t.copy_(src)


def _tokenizer_from_files(tokdoc: dict[str, Any], where: str) -> Any:
    from transformers import AutoTokenizer

    files = tokdoc.get("files") or {}
    if not files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in list(files.items()) + list((tokdoc.get("binary") or {}).items()):
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise CheckpointError(f"{where}: bad tokenizer file name {name!r}")
            if isinstance(data, str):
                Path(tmp, name).write_text(data, encoding="utf-8")
            else:
                Path(tmp, name).write_bytes(data.numpy().tobytes())
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        except (ValueError, OSError, KeyError) as e:
            raise CheckpointError(
                f"{where}: the stored tokenizer cannot be rebuilt ({first_line(e)})"
            ) from None


def _apply_adapter(
    doc: dict[str, Any],
    where: str,
    path: Path | None,
    merge: bool,
    load_parent: Callable[[str], Any] | None,
) -> nn.Module:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    ad = doc["adapter"]
    parent = ad.get("parent") or {}
    ref = parent.get("path") or ""
    ppath = Path(ref).expanduser()
    if ref and not ppath.is_absolute() and not ppath.exists() and path is not None:
        ppath = path.parent / ppath
    if not ref or not ppath.exists():
        raise FileNotFoundError(
            f"{where}: LoRA checkpoint's parent model {ref!r} is missing; put it back or load "
            "a merged checkpoint"
        )
    if load_parent is None:
        from .loading import load_model

        def load_parent(spec: str) -> Any:
            return load_model(spec, merge=True)

    base = load_parent(str(ppath))
    want = parent.get("fingerprint")
    if want and base.fingerprint != want:
        raise CheckpointError(
            f"{where}: parent {ppath} has fingerprint {base.fingerprint[:12]}, but the adapter "
            f"was trained on {str(want)[:12]}: the parent changed since training"
        )
    cfg = dict(ad["peft_config"])
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise CheckpointError(f"{where}: adapter type {peft_type} is not supported (LoRA only)")
    known = set(LoraConfig.__dataclass_fields__) - {"peft_type"}
    kwargs = {k: v for k, v in cfg.items() if k in known}
    kwargs["inference_mode"] = True
    try:
        lora = LoraConfig(**kwargs)
        with torch.random.fork_rng(devices=[]):
            model = get_peft_model(base.model, lora)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{where}: cannot rebuild the adapter ({first_line(e)})") from None
    res = set_peft_model_state_dict(model, ad["state_dict"])
    bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
    bad += [k for k in getattr(res, "missing_keys", []) if "lora_" in k]
    if bad:
        raise CheckpointError(f"{where}: adapter weights do not match its config (e.g. {bad[0]})")
    if merge:
        model = model.merge_and_unload()
    return model
