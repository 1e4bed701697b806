"""Direct preference optimisation (DPO; Rafailov et al. 2023) against a frozen reference.

The reference is the parent model. Its log-probabilities of every chosen and rejected
response are computed once, before training, so the policy trains without a second model in
memory (for LoRA, before the adapter is added). The loss per triple is

    -log sigmoid(beta * ((log pi(c|x) - log ref(c|x)) - (log pi(r|x) - log ref(r|x))))

with log-probabilities summed over the response tokens. Logged per step (as in TRL):
``reward_chosen`` = beta * (log pi(c|x) - log ref(c|x)), ``reward_rejected``, their
difference ``reward_margin`` and ``reward_accuracy`` (share of triples with a positive
margin).

Held-out evaluation (always with the true chosen/rejected, also when training on swapped
pairs, the negative control): ``preference_accuracy`` = share of triples where the model
gives the chosen response a higher log-probability than the rejected one (defined for the
reference too: ``parent_preference_accuracy``), ``reward_margin`` and ``reward_accuracy``
(zero and undefined at the reference, by construction).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.behaviour import encode_prompt_response, pad_examples, summed_logprobs
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
from .config import DPOConfig
from .datasets import load_jsonl, preference_pairs
from .loop import make_accelerator, run_loop
from .lora import apply_lora, check_target_modules

__all__ = ["dpo", "dpo_data", "dpo_loss"]

log = logging.getLogger(__name__)

_FIELDS = ["prompt", "chosen", "rejected"]


def dpo_loss(
    pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss and the TRL-style reward statistics.

    Args:
        pc, pr: (n,) policy log-probabilities of the chosen / rejected responses.
        rc, rr: (n,) reference log-probabilities of the same.
        beta: DPO temperature.
    """
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "reward_chosen": chosen.mean().detach(),
        "reward_rejected": rejected.mean().detach(),
        "reward_margin": margin.mean().detach(),
        "reward_accuracy": (margin > 0).float().mean().detach(),
    }
    return loss, stats


def dpo_data(config: DPOConfig) -> tuple[list[dict], list[dict], str]:
    """(train, held-out, source) triples for ``config.pairs``."""
    if config.pairs == "builtin":
        kw = dict(source=config.source, target=config.target, seed=config.seed)
        return (
            preference_pairs("train", max_examples=config.max_examples, **kw),
            preference_pairs("test", max_examples=config.eval_texts, **kw),
            "corpus:preference",
        )
    if not (
        config.pairs.endswith(".jsonl")
        or os.path.sep in config.pairs
        or os.path.exists(config.pairs)
    ):
        raise ValueError(
            f"unknown preference data {config.pairs!r}; use builtin or a path to a JSONL file "
            'of {"prompt", "chosen", "rejected"} lines'
        )
    train = load_jsonl(config.pairs, _FIELDS)
    if config.eval_data:
        held = load_jsonl(config.eval_data, _FIELDS)
    else:
        train, held = held_out_split(train, config.eval_fraction, config.seed)
    if config.max_examples is not None:
        train = train[: config.max_examples]
    return train, held[: config.eval_texts], f"jsonl:{config.pairs}"


def _encode(tok, triples: list[dict], seq_len: int) -> tuple[list[tuple], int, int]:
    """Encode triples as ((prompt, chosen), (prompt, rejected)) with ONE prompt for both:
    cut from the left (if at all) to fit the longer response, as DPO compares the two
    responses after the same prompt. Returns (items, n_truncated, n_dropped)."""
    out, cut, dropped = [], 0, 0
    for t in triples:
        p, c = encode_prompt_response(tok, t["prompt"], t["chosen"])
        _, r = encode_prompt_response(tok, t["prompt"], t["rejected"])
        fitted = fit_pair(p, max(c, r, key=len), seq_len)
        if fitted is None:
            dropped += 1
            continue
        prompt = fitted[0]
        cut += len(prompt) < len(p)
        out.append(((prompt, c), (prompt, r)))
    return out, cut, dropped


def _logps(
    model: nn.Module, items: list[tuple], pad_id: int, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probabilities of every chosen and rejected response (no gradients)."""
    device = next(model.parameters()).device
    pc, pr = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(items), batch_size):
                chunk = items[s : s + batch_size]
                batch = pad_examples([c for c, _ in chunk] + [r for _, r in chunk], pad_id)
                lp, _ = summed_logprobs(model, **{k: v.to(device) for k, v in batch.items()})
                pc.append(lp[: len(chunk)].double().cpu())
                pr.append(lp[len(chunk) :].double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(pc).numpy(), torch.cat(pr).numpy()


def _held_out_metrics(pc, pr, rc, rr, beta: float) -> dict[str, float]:
    margin = beta * ((pc - rc) - (pr - rr))
    return {
        "preference_accuracy": float(np.mean(pc > pr)),
        "reward_margin": float(np.mean(margin)),
        "reward_accuracy": float(np.mean(margin > 0)),
    }


def dpo(
    parent: str | os.PathLike,
    out: str | os.PathLike,
    config: DPOConfig | None = None,
    *,
    pairs: list[dict] | None = None,
    eval_pairs: list[dict] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    preset: str | None = None,
    command: str | None = None,
) -> TrainResult:
    """Preference-tune ``parent`` with DPO; write the checkpoint ``out``.

    Args:
        parent: the parent model (also the frozen reference).
        out: checkpoint path (``.pt``).
        config: settings (default: the ``default`` preset); ``config.pairs`` picks the data.
        pairs: training ``{"prompt", "chosen", "rejected"}`` dicts (instead of
            ``config.pairs``).
        eval_pairs: held-out triples (with ``pairs``; default: hold out ``eval_fraction``).
        overwrite: replace an existing checkpoint and start over.
        resume: continue an interrupted run from its saved state.
        preset: preset name (provenance).
        command: the command line (provenance).

    Returns:
        The checkpoint path and held-out metrics ``preference_accuracy``, ``reward_margin``,
        ``reward_accuracy`` and the reference's ``parent_preference_accuracy``.
    """
    t0 = time.perf_counter()
    if config is None:
        from .presets import preset_config

        config, preset = preset_config("dpo", preset or "default"), preset or "default"
    config.validate()
    if pairs is not None:
        for i, ex in enumerate(pairs):
            if not isinstance(ex, dict) or not all(
                isinstance(ex.get(k), str) and ex[k].strip() for k in _FIELDS
            ):
                raise ValueError(f"pair {i} needs non-empty string {', '.join(_FIELDS)}")
        if eval_pairs is None:
            pairs, eval_pairs = held_out_split(list(pairs), config.eval_fraction, config.seed)
        train, held, source = list(pairs), list(eval_pairs), "user"
    else:
        train, held, source = dpo_data(config)
    acc = make_accelerator(config)
    out, run_dir = prepare_output(out, overwrite, resume, acc)
    handle = load_parent(parent)
    parent_rec = parent_record(handle)
    model, tok = handle.model, handle.tokenizer
    if config.tuning == "lora":
        check_target_modules(model, config.target_modules)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    items, truncated, dropped = _encode(tok, train, config.seq_len)
    held_items, _, _ = _encode(tok, held, config.seq_len)
    if not items or not held_items:
        raise ValueError(
            "no preference pairs fit seq_len (or no held-out pairs); raise "
            "seq_len or shorten the responses"
        )
    if config.swap:
        items = [(r, c) for c, r in items]
    model.to(acc.device)
    with acc.autocast():
        ref_c, ref_r = _logps(model, items, pad_id)
        held_rc, held_rr = _logps(model, held_items, pad_id)
    metrics = {"parent_preference_accuracy": float(np.mean(held_rc > held_rr))}
    examples = [
        (c, r, float(a), float(b)) for (c, r), a, b in zip(items, ref_c, ref_r, strict=True)
    ]
    lcfg = None
    if config.tuning == "lora":
        model, lcfg = apply_lora(model, config)
    beta = config.beta

    def collate(batch: list[tuple]) -> dict[str, torch.Tensor]:
        enc = pad_examples([b[0] for b in batch] + [b[1] for b in batch], pad_id)
        enc["ref"] = torch.tensor(
            [[b[2] for b in batch], [b[3] for b in batch]], dtype=torch.float64
        )
        return enc

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]):
        lp, _ = summed_logprobs(m, batch["input_ids"], batch["attention_mask"], batch["labels"])
        n = lp.shape[0] // 2
        ref = batch["ref"].to(lp.dtype)
        loss, stats = dpo_loss(lp[:n], lp[n:], ref[0], ref[1], beta)
        stats["tokens"] = int(batch["attention_mask"].sum())
        return loss, stats

    def eval_fn(m: nn.Module) -> dict[str, float]:
        pc, pr = _logps(m, held_items, pad_id)
        return _held_out_metrics(pc, pr, held_rc, held_rr, beta)

    data = {
        "source": source,
        "split": "train",
        "n_pairs": len(items),
        "n_truncated": truncated,
        "n_dropped": dropped,
        "swapped": config.swap,
        "eval": {"split": "test", "n_pairs": len(held_items)},
        "kinds": _kinds(train),
    }
    run_key = {
        "method": "dpo",
        "config": config.to_dict(),
        "data": data,
        "parent": parent_rec["fingerprint"],
        "tokenizer": tokenizer_sha(tok),
    }
    loop = run_loop(
        model,
        examples,
        collate,
        loss_fn,
        config,
        run_dir,
        eval_fn=eval_fn,
        run_key=run_key,
        accelerator=acc,
        label="dpo",
    )
    metrics.update(loop.eval)
    return finish_finetune(
        "dpo",
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
        extra={"reference": parent_rec},
    )


def _kinds(triples: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in triples:
        k = str(t.get("kind", "user"))
        out[k] = out.get(k, 0) + 1
    return out
