"""Loading Hugging Face folders, hub ids, GGUF files and PEFT adapter folders.

Each loader returns ``(model, tokenizer, provenance)``; :mod:`.loading` wraps that into a
:class:`~transferlens.models.handle.ModelHandle`. Every failure is raised with a one-line
message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import TransferlensError, first_line
from .sites import family_for

__all__ = [
    "build_model",
    "quiet_transformers",
    "load_gguf",
    "load_hf_dir",
    "load_hub",
    "load_peft_dir",
    "model_class",
]

log = logging.getLogger(__name__)

Loaded = tuple[nn.Module, Any, dict[str, Any]]


def model_class(config: Any) -> type:
    """The class to build for ``config``: its ``architectures`` entry when transformers has it,
    else the auto class of the family (masked LM for encoders, causal LM otherwise).

    Raises:
        ValueError: unsupported architecture (the message lists the supported families).
    """
    import transformers

    family = family_for(config.model_type)
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    if family.lm_head is None:
        return transformers.AutoModelForMaskedLM
    return transformers.AutoModelForCausalLM


def build_model(config: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """A randomly initialised model for ``config`` (weights are loaded afterwards).

    The initialisation draws from a forked RNG, so the caller's random state is untouched.
    """
    cls = model_class(config)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with torch.random.fork_rng(devices=[]):
        if hasattr(cls, "from_config"):  # auto classes
            return cls.from_config(config, **kwargs)
        return cls._from_config(config, **kwargs)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading warnings and per-tensor progress bars for the duration
    of a load (restored afterwards): transferlens checks the loading report itself and turns
    every missing, unexpected or mismatched tensor into one clear error."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _damaged_weights(path: Path, e: BaseException) -> str:
    return (
        f"{path}: a weights file is truncated or corrupt ({first_line(e)}); copy the folder "
        "again or re-save it"
    )


# --------------------------------------------------------------------------- HF folder / hub
def load_hf_dir(path: Path) -> Loaded:
    """A Hugging Face model folder (``config.json`` + weights + tokenizer files)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise TransferlensError(f"{path}: cannot read config.json ({first_line(e)})") from None
    try:
        cls = model_class(config)  # fails early, naming the supported families
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            model, info = cls.from_pretrained(
                path, config=config, local_files_only=True, output_loading_info=True
            )
    except RuntimeError as e:
        if "mismatched_sizes" in str(e):
            raise TransferlensError(
                f"{path}: the weights do not match config.json (tensors of the wrong shape); "
                "fix the folder or its config.json"
            ) from None
        raise TransferlensError(f"{path}: cannot load the weights ({first_line(e)})") from None
    except (ValueError, OSError) as e:
        raise TransferlensError(f"{path}: cannot load the weights ({first_line(e)})") from None
    except SafetensorError as e:
        raise TransferlensError(_damaged_weights(path, e)) from None
    bad = [
        (kind, _key(k))
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        for k in sorted(info.get(kind) or [], key=str)
    ]
    if bad:
        kind, key = bad[0]
        raise TransferlensError(
            f"{path}: the weights do not match config.json ({len(bad)} tensors missing, "
            f"unexpected or of the wrong shape, e.g. {kind.split('_')[0]} {key}); fix the folder "
            "or its config.json"
        )
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError) as e:
        raise TransferlensError(
            f"{path}: no usable tokenizer in the folder ({first_line(e)}); save it there with "
            "tokenizer.save_pretrained(folder)"
        ) from None
    return model, tok, {}


def _key(k: Any) -> str:
    return k[0] if isinstance(k, tuple) else str(k)


def load_hub(spec: str) -> Loaded:  # pragma: no cover - needs network
    """A model id on the Hugging Face hub (online users only)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(spec)
    with torch.random.fork_rng(devices=[]):
        model = model_class(config).from_pretrained(spec, config=config)
    return model, AutoTokenizer.from_pretrained(spec), {}


# --------------------------------------------------------------------------- GGUF
def _gguf_damage(path: Path) -> str | None:
    """What is wrong with the GGUF file at ``path`` (the message after ``"<path>: "``), or None if
    its header, metadata, tensor table and every tensor's data parse."""
    import gguf

    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            return "not a GGUF file (it does not start with the bytes 'GGUF'); check the path"
    try:  # the reader maps every tensor's data: a file cut anywhere fails here
        gguf.GGUFReader(path, "r")
    except Exception as e:  # the parser's errors on a damaged file are of many kinds
        log.debug("%s: GGUF parse error: %r", path, e)
        return (
            f"the GGUF file is truncated or corrupt (the parser stops inside its {size} bytes); "
            "copy it again or export it again"
        )
    return None


def _raise_gguf(path: Path, e: Exception, what: str) -> NoReturn:
    """Turn a failed GGUF load into one line: a damaged file says so, whatever the parser
    raised; an intact file that transformers cannot read or build (its metadata describe no
    valid model: the errors come from transformers' parsing and validation, of many kinds)
    keeps the cause."""
    damage = _gguf_damage(path)
    if damage is not None:
        raise TransferlensError(f"{path}: {damage}") from None
    raise TransferlensError(f"{path}: {what} ({type(e).__name__}: {first_line(e)})") from None


def load_gguf(path: Path) -> Loaded:
    """A GGUF file, through transformers' ``gguf_file=`` loader (dequantised to float32)."""
    if importlib.util.find_spec("gguf") is None:
        raise TransferlensError(
            f"{path}: loading GGUF files needs the 'gguf' package; install it with "
            "`pip install gguf` (or `pip install transferlens[gguf]`)"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    where, name = path.parent, path.name
    try:
        config = AutoConfig.from_pretrained(where, gguf_file=name)
    except Exception as e:
        _raise_gguf(path, e, "cannot read the GGUF metadata")
    try:
        family_for(config.model_type)  # before the (slow) weights, naming the supported families
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        # The tokenizer is rebuilt from the GGUF metadata either way; AutoTokenizer would
        # parse all metadata once more just to pick this same class (30 s on SmolLM2).
        tok = PreTrainedTokenizerFast.from_pretrained(where, gguf_file=name)
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                where, gguf_file=name, config=config, dtype=torch.float32
            )
    except Exception as e:
        _raise_gguf(path, e, "cannot load the GGUF file")
    return model, tok, {}


# --------------------------------------------------------------------------- PEFT folder
def _resolve_base(path: Path, base_ref: str) -> str:
    """Where the adapter's base model is: an existing path (absolute, relative to the working
    folder, or relative to the adapter folder), or a hub id for online users."""
    cand = Path(base_ref).expanduser()
    for p in (cand, path / cand) if not cand.is_absolute() else (cand,):
        if p.exists():
            return str(p)
    looks_like_hub_id = base_ref.count("/") == 1 and not base_ref.startswith((".", "/", "~"))
    if looks_like_hub_id and os.environ.get("HF_HUB_OFFLINE") != "1":
        return base_ref
    raise FileNotFoundError(
        f"{path}: the adapter's base model {base_ref!r} is missing; put it there or edit "
        "base_model_name_or_path in adapter_config.json"
    )


def load_peft_dir(path: Path, *, merge: bool, load_base) -> Loaded:
    """A PEFT adapter folder; ``load_base(spec) -> ModelHandle`` loads its base model."""
    from peft import PeftModel

    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise TransferlensError(f"{path}: cannot read adapter_config.json ({e})") from None
    if not isinstance(cfg, dict):
        raise TransferlensError(f"{path}: adapter_config.json is not a JSON object")
    base_ref = cfg.get("base_model_name_or_path")
    if not base_ref:
        raise TransferlensError(
            f"{path}: adapter_config.json names no base model; set base_model_name_or_path"
        )
    base = load_base(_resolve_base(path, str(base_ref)))
    parent = {"path": base.spec, "fingerprint": base.fingerprint}  # before LoRA layers go in
    try:
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            model = PeftModel.from_pretrained(base.model, str(path))
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        raise TransferlensError(f"{path}: cannot load the adapter ({first_line(e)})") from None
    except SafetensorError as e:
        raise TransferlensError(_damaged_weights(path, e)) from None
    if merge:
        model = model.merge_and_unload()
    prov = {
        "parent": parent,
        "method": "peft-adapter",
        "merged": merge,
    }
    return model, base.tokenizer, prov
