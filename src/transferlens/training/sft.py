"""Supervised instruction tuning (SFT) on prompt/response pairs, loss on the response only.

Each pair is encoded by :func:`~transferlens.analysis.behaviour.encode_prompt_response`
(the tokenizer's chat template when it has one), so training and scoring see the same
tokens. Held-out evaluation: the response loss (nats per response token) and, for
classification-like tasks (the built-in topic task, or a user file with few distinct
responses), the accuracy of choosing the gold response by log-likelihood among all candidate
responses, next to the majority-class baseline.
"""

from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis.behaviour import (
    encode_prompt_response,
    label_loglik_accuracy,
    majority_baseline,
    pad_examples,
    summed_logprobs,
)
from .common import (
    TrainResult,
    finish_finetune,
    fit_pair,
    held_out_split,
    load_parent,
    parent_record,
    prepare_output,
    tokenizer_sha,
)
from .config import SFTConfig
from .datasets import load_jsonl, topic_task, translation_task
from .loop import make_accelerator, run_loop
from .lora import apply_lora, check_target_modules

__all__ = ["encode_pairs", "sft", "sft_data"]

log = logging.getLogger(__name__)


def sft_data(config: SFTConfig) -> tuple[list[dict], list[dict], str]:
    """(train, held-out, source) examples for ``config.task``.

    Raises:
        ValueError: unknown task; FileNotFoundError: a JSONL path that does not exist.
    """
    cap, seed = config.max_examples, config.seed
    if config.task == "topic":
        kw = dict(language=config.source, topics=config.topics, seed=seed)
        return (
            topic_task("train", max_examples=cap, **kw),
            topic_task("test", max_examples=config.eval_texts, **kw),
            "corpus:topic",
        )
    if config.task == "translation":
        kw = dict(source=config.source, target=config.target, seed=seed)
        return (
            translation_task("train", max_examples=cap, **kw),
            translation_task("test", max_examples=config.eval_texts, **kw),
            "corpus:translation",
        )
    if not (
        config.task.endswith(".jsonl") or os.path.sep in config.task or os.path.exists(config.task)
    ):
        raise ValueError(
            f"unknown SFT task {config.task!r}; use topic, translation, or a path to a JSONL "
            'file of {"prompt", "response"} lines'
        )
    train = load_jsonl(config.task, ["prompt", "response"])
    if config.eval_data:
        held = load_jsonl(config.eval_data, ["prompt", "response"])
    else:
        train, held = held_out_split(train, config.eval_fraction, seed)
    if cap is not None:
        train = train[:cap]
    return train, held[: config.eval_texts], f"jsonl:{config.task}"


def encode_pairs(
    tokenizer: Any, examples: list[dict], seq_len: int, response_key: str = "response"
) -> tuple[list[tuple[list[int], list[int]]], int, int]:
    """Encode examples as (prompt ids, response ids) cut to ``seq_len``.

    Returns:
        (pairs, n_truncated, n_dropped): prompts cut from the left count as truncated;
        examples whose response alone is too long are dropped.
    """
    pairs, cut, dropped = [], 0, 0
    for ex in examples:
        p, r = encode_prompt_response(tokenizer, ex["prompt"], ex[response_key])
        fitted = fit_pair(p, r, seq_len)
        if fitted is None:
            dropped += 1
            continue
        cut += len(fitted[0]) < len(p)
        pairs.append(fitted)
    return pairs, cut, dropped


def _response_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens ``_sft_loss`` averages over: predicted positions whose label is a response
    token (labels shifted by one; prompt and padding are ``-100``)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def _sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    )
    return out.loss, {"tokens": int(batch["attention_mask"].sum())}


def _evaluate(model, tok, held_pairs, held, labels, pad_id, batch_size=16) -> dict[str, float]:
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for s in range(0, len(held_pairs), batch_size):
        batch = pad_examples(held_pairs[s : s + batch_size], pad_id)
        logp, n = summed_logprobs(model, **{k: v.to(device) for k, v in batch.items()})
        total -= float(logp.sum())
        count += int(n.sum())
    out = {"response_loss": total / max(1, count)}
    if labels:
        handle = SimpleNamespace(model=model, tokenizer=tok)
        scores = label_loglik_accuracy(
            handle,
            [e["prompt"] for e in held],
            labels,
            [e["response"] for e in held],
            batch_size=batch_size,
        )
        out["accuracy"] = scores.accuracy
    return out


def sft(
    parent: str | os.PathLike,
    out: str | os.PathLike,
    config: SFTConfig | None = None,
    *,
    examples: list[dict] | None = None,
    eval_examples: list[dict] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    preset: str | None = None,
    command: str | None = None,
) -> TrainResult:
    """Instruction-tune ``parent`` on prompt/response pairs; write the checkpoint ``out``.

    Args:
        parent: the parent model.
        out: checkpoint path (``.pt``).
        config: settings (default: the ``default`` preset); ``config.task`` picks the data.
        examples: training ``{"prompt", "response"}`` dicts (instead of ``config.task``).
        eval_examples: held-out dicts (with ``examples``; default: hold out
            ``eval_fraction``).
        overwrite: replace an existing checkpoint and start over.
        resume: continue an interrupted run from its saved state.
        preset: preset name (provenance).
        command: the command line (provenance).

    Returns:
        The checkpoint path and held-out metrics: ``response_loss`` and, for
        classification-like tasks, ``accuracy``, ``majority_accuracy`` and
        ``accuracy_margin`` (accuracy - majority), each also for the parent
        (``parent_*``).
    """
    t0 = time.perf_counter()
    if config is None:
        from .presets import preset_config

        config, preset = preset_config("sft", preset or "default"), preset or "default"
    config.validate()
    if examples is not None:
        for i, ex in enumerate(examples):
            if not isinstance(ex, dict) or not all(
                isinstance(ex.get(k), str) and ex[k].strip() for k in ("prompt", "response")
            ):
                raise ValueError(f"example {i} needs non-empty string 'prompt' and 'response'")
        if eval_examples is None:
            examples, eval_examples = held_out_split(
                list(examples), config.eval_fraction, config.seed
            )
        train, held, source = list(examples), list(eval_examples), "user"
    else:
        train, held, source = sft_data(config)
    acc = make_accelerator(config)
    out, run_dir = prepare_output(out, overwrite, resume, acc)
    handle = load_parent(parent)
    parent_rec = parent_record(handle)
    model, tok = handle.model, handle.tokenizer
    if config.tuning == "lora":
        check_target_modules(model, config.target_modules)
    pairs, cut, dropped = encode_pairs(tok, train, config.seq_len)
    held_pairs, _, _ = encode_pairs(tok, held, config.seq_len)
    if not pairs:
        raise ValueError("no training examples fit seq_len; raise seq_len or shorten responses")
    distinct = sorted({e["response"] for e in train} | {e["response"] for e in held})
    labels = (
        distinct if config.task == "topic" or len(distinct) <= config.max_label_candidates else []
    )
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    metrics: dict[str, float] = {}
    if labels:
        _, correct = majority_baseline(
            [e["response"] for e in train], [e["response"] for e in held]
        )
        metrics["majority_accuracy"] = float(np.mean(correct))
    if acc.is_main_process:
        with torch.no_grad():
            before = _evaluate(model, tok, held_pairs, held, labels, pad_id)
        metrics.update({f"parent_{k}": v for k, v in before.items()})
    lcfg = None
    if config.tuning == "lora":
        model, lcfg = apply_lora(model, config)
    data = {
        "source": source,
        "split": "train",
        "n_examples": len(pairs),
        "n_truncated": cut,
        "n_dropped": dropped,
        "labels": labels,
        "chat_template": bool(getattr(tok, "chat_template", None)),
        "eval": {"split": "test", "n_examples": len(held)},
    }
    run_key = {
        "method": "sft",
        "config": config.to_dict(),
        "data": data,
        "parent": parent_rec["fingerprint"],
        "tokenizer": tokenizer_sha(tok),
    }
    loop = run_loop(
        model,
        pairs,
        lambda b: pad_examples(b, pad_id),
        _sft_loss,
        config,
        run_dir,
        eval_fn=lambda m: _evaluate(m, tok, held_pairs, held, labels, pad_id),
        run_key=run_key,
        accelerator=acc,
        label="sft",
        weight_fn=_response_tokens,
    )
    metrics.update(loop.eval)
    if labels and "accuracy" in metrics:
        metrics["accuracy_margin"] = metrics["accuracy"] - metrics["majority_accuracy"]
    return finish_finetune(
        "sft",
        out,
        run_dir,
        loop,
        tok,
        config,
        acc,
        parent=parent_rec,
        lora_config=lcfg,
        preset=preset,
        data=data,
        metrics=metrics,
        command=command,
        started=t0,
    )
