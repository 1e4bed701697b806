"""Pieces the training methods share: output folders, the parent model, language-model data,
held-out evaluation, and writing the checkpoint with its provenance."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..analysis.behaviour import token_nll
from ..errors import TransferlensError
from .config import FinetuneConfig, TrainConfig
from .loop import LoopResult

__all__ = [
    "TrainResult",
    "bpb_by_language",
    "finish",
    "fit_pair",
    "held_out_split",
    "lm_collate",
    "lm_loss",
    "load_parent",
    "pack_texts",
    "parent_record",
    "relative_parent",
    "prepare_output",
    "run_dir_for",
    "tokenizer_sha",
    "training_record",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training method returns.

    Attributes:
        path: the checkpoint (``.pt``) written.
        metrics: final held-out metrics (also stored in the checkpoint's provenance).
        run_dir: the run folder (JSONL log, resumable state while running).
        steps: optimiser steps done.
        tokens: training tokens seen.
        seconds: wall-clock seconds of the whole call (data, tokenizer, training, saving).
        provenance: the provenance written into the checkpoint.
    """

    path: Path
    metrics: dict[str, Any]
    run_dir: Path
    steps: int
    tokens: int
    seconds: float
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"


def run_dir_for(out: Path) -> Path:
    """The run folder of checkpoint ``out``: ``base.pt`` -> ``base.run/``."""
    return out.with_suffix(".run")


def prepare_output(
    out: str | os.PathLike, overwrite: bool, resume: bool, accelerator: Any
) -> tuple[Path, Path]:
    """Check the output path; returns (checkpoint path, run folder).

    With ``overwrite`` the run folder is cleared by the main process (training starts over);
    without ``resume`` an existing run folder with saved state is an error.

    Raises:
        ValueError: not a ``.pt`` path.
        FileExistsError: the checkpoint exists and ``overwrite`` is False, or unfinished state
            exists and ``resume`` is False.
    """
    out = Path(out)
    if out.suffix != ".pt":
        raise ValueError(f"{out}: the output must be a .pt checkpoint path (e.g. runs/base.pt)")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a .pt file path")
    run_dir = run_dir_for(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if overwrite and run_dir.exists():
        if accelerator.is_main_process:
            shutil.rmtree(run_dir)
    elif (run_dir / "state.pt").exists() and not resume:
        raise FileExistsError(
            f"{run_dir} holds an unfinished run; resume it (drop --no-resume) or start over "
            "with --overwrite"
        )
    accelerator.wait_for_everyone()
    return out, run_dir


def tokenizer_sha(tokenizer: Any) -> str:
    """sha256 of the tokenizer's serialised form (identity of a run's tokenizer)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def load_parent(spec: str | os.PathLike) -> Any:
    """Load the parent model (LoRA checkpoints merged) and check it is a causal LM.

    Raises:
        TransferlensError: the parent is not a causal (decoder) language model.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ..models import load_model
    from ..models.sitemap import unwrap_model

    handle = load_model(spec, merge=True)
    root = unwrap_model(handle.model)
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if type(root).__name__ not in causal or getattr(root.config, "is_encoder_decoder", False):
        raise TransferlensError(
            f"{spec}: the parent is a {type(root).__name__}, not a causal language model; "
            "training here needs a decoder LM (GPT-2, Llama, Gemma, SmolLM, ...)"
        )
    if handle.tokenizer is None:
        raise TransferlensError(f"{spec}: the parent model has no tokenizer")
    return handle


def pack_texts(tokenizer: Any, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Pack ``start + text + eos`` token streams into (n_blocks, seq_len) blocks.

    The remainder that does not fill a block is dropped.

    Raises:
        ValueError: no texts, or too little text for one block.
    """
    from ..analysis.behaviour import _start_id

    if not texts:
        raise ValueError("no training texts")
    start = _start_id(tokenizer)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else start
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream.append(start)
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(
            f"too little training text: {len(stream)} tokens do not fill one block of "
            f"seq_len={seq_len}; add text or lower seq_len"
        )
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def lm_collate(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack packed blocks into a language-modelling batch."""
    return {"input_ids": torch.stack(blocks)}


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy over every position of packed blocks."""
    ids = batch["input_ids"]
    out = model(input_ids=ids, labels=ids)
    return out.loss, {"tokens": ids.numel()}


def bpb_by_language(
    model: nn.Module, tokenizer: Any, texts: dict[str, list[str]], batch_size: int = 16
) -> dict[str, float]:
    """Held-out bits per byte per language (``bpb_<lang>``) and nats per token (``loss_<lang>``)."""
    handle = SimpleNamespace(model=model, tokenizer=tokenizer)
    out = {}
    for lang, items in texts.items():
        res = token_nll(handle, items, batch_size=batch_size)
        out[f"bpb_{lang}"] = res.bits_per_byte
        out[f"loss_{lang}"] = res.nats_per_token
    return out


def training_record(loop: LoopResult, config: TrainConfig, accelerator: Any) -> dict[str, Any]:
    """The ``training`` section of the provenance."""
    return {
        "steps": loop.steps,
        "tokens": loop.tokens,
        "seconds": round(loop.seconds, 2),
        "resumed_from": loop.resumed_from,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device.type),
        "mixed_precision": str(accelerator.mixed_precision),
        "effective_batch": config.batch_size * config.grad_accum * accelerator.num_processes,
    }


def parent_record(handle: Any) -> dict[str, str]:
    """``{"path", "fingerprint"}`` of a parent model (absolute path)."""
    spec = handle.spec
    path = str(Path(spec).resolve()) if not str(spec).startswith("<") else str(spec)
    return {"path": path, "fingerprint": handle.fingerprint}


def finish(
    out: Path,
    run_dir: Path,
    model: nn.Module,
    tokenizer: Any,
    provenance: dict,
    accelerator: Any,
    *,
    adapter: dict | None = None,
) -> None:
    """Write the checkpoint (main process), then drop the resumable state."""
    from ..models import save_checkpoint

    if accelerator.is_main_process:
        save_checkpoint(out, model, tokenizer, provenance, adapter=adapter, overwrite=True)
        state = run_dir / "state.pt"
        if state.exists():
            state.unlink()
        log.info("wrote %s", out)
    accelerator.wait_for_everyone()


def finish_finetune(
    method: str,
    out: Path,
    run_dir: Path,
    loop: LoopResult,
    tokenizer: Any,
    config: FinetuneConfig,
    accelerator: Any,
    *,
    parent: dict[str, str],
    lora_config: Any,
    preset: str | None,
    data: dict,
    metrics: dict[str, float],
    command: str | None,
    started: float,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """The end of a fine-tuning run (adapt, sft, dpo): provenance, the checkpoint (only the
    adapter for LoRA, with the parent's path relative to the checkpoint), the result.

    Args:
        extra: further provenance entries (``reference`` for DPO, ``vocab_extension``).
        started: ``time.perf_counter()`` at the start of the run.
    """
    from .lora import adapter_record

    provenance = {
        "method": method,
        "tuning": config.tuning,
        "parent": parent,
        "config": config.to_dict(),
        "preset": preset,
        "data": data,
        "seed": config.seed,
        "metrics": metrics,
        **(extra or {}),
        "training": training_record(loop, config, accelerator),
        "command": command,
    }
    adapter = None
    if lora_config is not None:
        adapter = adapter_record(loop.model, lora_config, relative_parent(parent, out))
    finish(out, run_dir, loop.model, tokenizer, provenance, accelerator, adapter=adapter)
    return TrainResult(
        path=out,
        metrics=metrics,
        run_dir=run_dir,
        steps=loop.steps,
        tokens=loop.tokens,
        seconds=time.perf_counter() - started,
        provenance=provenance,
    )


def fit_pair(
    prompt_ids: list[int], response_ids: list[int], seq_len: int
) -> tuple[list[int], list[int]] | None:
    """Cut a (prompt, response) pair to ``seq_len`` tokens by dropping prompt tokens after the
    first one (the start token) from the left; None when the response does not fit after the
    first prompt token and at least one more (a response with no prompt left is not a pair)."""
    if len(prompt_ids) + len(response_ids) <= seq_len:
        return prompt_ids, response_ids
    room = seq_len - len(response_ids) - 1
    if room < 1 or not prompt_ids:
        return None
    return prompt_ids[:1] + prompt_ids[-room:], response_ids


def held_out_split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, held-out) split of user data: ``fraction`` held out, at least one."""
    import random

    if len(items) < 2:
        raise ValueError(
            f"too little data: {len(items)} example(s); need at least 2 to hold "
            "one out (or pass eval data)"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = max(1, round(fraction * len(items)))
    held = set(order[:k])
    return (
        [x for i, x in enumerate(items) if i not in held],
        [x for i, x in enumerate(items) if i in held],
    )


def relative_parent(parent: dict[str, str], out: Path) -> dict[str, str]:
    """The parent's path relative to the checkpoint's folder (so the pair can move together)."""
    path = parent["path"]
    if Path(path).is_absolute():
        path = os.path.relpath(path, Path(out).resolve().parent)
    return {"path": path, "fingerprint": parent["fingerprint"]}
