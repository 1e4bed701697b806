"""The one training loop every method uses.

It runs on torch + :class:`accelerate.Accelerator`, so the same code trains on one CPU, one
GPU, or several processes started with ``accelerate launch`` / ``torchrun`` (data parallel).

Per optimiser step: ``grad_accum`` micro-batches (gradients synchronised only on the last),
global gradient-norm clipping, AdamW, a warm-up + cosine/linear schedule. Every
``eval_every`` steps the main process evaluates on held-out data; every ``save_every`` steps
the resumable state (trainable weights, optimiser, scheduler, each process's RNG state and
the data position) is written atomically to ``<run_dir>/state.pt``. A run that finds that
file resumes from it and ends with the same weights as an uninterrupted run.

Data order is a pure function of (seed, micro-batch counter): epoch ``e`` is a permutation
drawn from a generator seeded with ``(seed, e)``; each global batch holds
``batch_size * processes`` examples and process ``r`` takes the ``r``-th slice, so processes
see disjoint data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TransferlensError
from ..results import atomic_write_text, to_jsonable
from .config import TrainConfig
from .progress import Progress
from .state import key_json, save_state, set_rng_state, truncate_log

__all__ = [
    "DivergenceError",
    "LoopResult",
    "batch_indices",
    "lr_factor",
    "make_accelerator",
    "run_loop",
]

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module], dict[str, float]]


class DivergenceError(TransferlensError):
    """The loss (or gradient norm) became NaN or infinite; training stopped."""


@dataclass
class LoopResult:
    """What :func:`run_loop` returns.

    Attributes:
        model: the trained model, unwrapped from any distributed wrapper.
        steps: optimiser steps done in total (including those before a resume).
        tokens: training tokens seen by all processes in total.
        seconds: wall-clock seconds of this invocation's training (excluding a resumed
            run's earlier part).
        resumed_from: the step the run resumed from (0 for a fresh run).
        eval: the last evaluation's metrics (main process; empty elsewhere).
        log_path: the JSONL log.
        is_main: whether this is the main process (the one that writes files).
    """

    model: nn.Module
    steps: int
    tokens: int
    seconds: float
    resumed_from: int
    eval: dict[str, float] = field(default_factory=dict)
    log_path: Path | None = None
    is_main: bool = True


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    ``cosine`` or ``linear`` decay from 1 to ``min_lr_ratio`` at the last step, or ``constant``.
    """
    warm = config.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - 1 - warm)
    p = min(1.0, (step - warm) / span)
    lo = config.min_lr_ratio
    if config.schedule == "linear":
        return 1.0 - (1.0 - lo) * p
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


def make_accelerator(config: TrainConfig) -> Any:
    """An :class:`accelerate.Accelerator` for ``config`` (bf16 on a GPU that has it)."""
    from accelerate import Accelerator

    precision = config.mixed_precision
    use_gpu = torch.cuda.is_available() and not config.cpu
    if precision == "auto":
        precision = "bf16" if use_gpu and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not use_gpu:
        raise ValueError("mixed_precision=fp16 needs a GPU; use no (or bf16) on the CPU")
    return Accelerator(cpu=not use_gpu, mixed_precision=precision)


def batch_indices(
    micro: int,
    n: int,
    batch_size: int,
    world: int,
    rank: int,
    seed: int,
    _cache: dict | None = None,
) -> list[int]:
    """Example indices of micro-batch ``micro`` on process ``rank`` of ``world``.

    Raises:
        ValueError: fewer examples than one global batch.
    """
    per_batch = batch_size * world
    per_epoch = n // per_batch
    if per_epoch == 0:
        raise ValueError(
            f"too little data: {n} training examples for a global batch of {per_batch} "
            f"({batch_size} x {world} processes); add data or lower batch_size"
        )
    epoch, j = divmod(micro, per_epoch)
    if _cache is not None and _cache.get("epoch") == epoch:
        perm = _cache["perm"]
    else:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        perm = torch.randperm(n, generator=gen)
        if _cache is not None:
            _cache.update(epoch=epoch, perm=perm)
    start = j * per_batch + rank * batch_size
    return perm[start : start + batch_size].tolist()


def _param_groups(named: Sequence[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def run_loop(
    model: nn.Module,
    examples: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    loss_fn: LossFn,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    eval_fn: EvalFn | None = None,
    run_key: Any = None,
    accelerator: Any = None,
    label: str = "train",
    weight_fn: Callable[[dict[str, torch.Tensor]], int] | None = None,
) -> LoopResult:
    """Train ``model`` on ``examples`` and return the trained model and its last evaluation.

    Args:
        model: the model; its parameters with ``requires_grad`` are trained.
        examples: training examples (any objects ``collate`` understands).
        collate: list of examples -> dict of CPU tensors (one micro-batch).
        loss_fn: ``(model, batch) -> (loss, stats)``; ``stats["tokens"]`` counts the batch's
            tokens (for tokens/s); other numeric stats are averaged and logged.
        config: loop settings.
        run_dir: folder for ``state.pt`` (resumable state), ``log.jsonl`` and ``run.json``.
        eval_fn: ``model -> {metric: value}`` on held-out data, run by the main process
            every ``eval_every`` steps and at the end, in eval mode without gradients.
        run_key: plain-JSON identity of the run (config, data, parent); a saved state with a
            different key is refused rather than resumed.
        accelerator: an existing Accelerator (default: :func:`make_accelerator`).
        label: name shown on the progress bar.
        weight_fn: ``batch -> count`` of the items ``loss_fn``'s mean runs over (e.g. the
            response tokens of an SFT batch), when micro-batches hold different numbers of
            them. An optimiser step's loss is then the mean over all items of its
            micro-batches and processes, as one large batch would give; without it, each
            micro-batch's loss counts equally (right for equal-size micro-batches).

    Raises:
        DivergenceError: the loss or gradient norm became NaN/inf (the last saved state in
            ``run_dir`` is kept).
        ValueError: too little data, or a run folder holding another run's state.
    """
    acc = accelerator if accelerator is not None else make_accelerator(config)
    run_dir = Path(run_dir)
    state_path, log_path = run_dir / "state.pt", run_dir / "log.jsonl"
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    n = len(examples)
    batch_indices(0, n, config.batch_size, world, rank, config.seed)  # fail early on tiny data
    key = key_json(run_key)

    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        _param_groups(named, config.weight_decay),
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    model, optimizer = acc.prepare(model, optimizer)
    params = [p for _, p in named]
    device = acc.device
    devices = [device.index or 0] if device.type == "cuda" else []

    run = _Run(acc, model, optimizer, scheduler, params, state_path, log_path, key)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed + 7919 * rank)
        if state_path.exists():
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            if state.get("run_key") != key:
                raise ValueError(
                    f"{run_dir} holds the saved state of a different run (config, data or "
                    "parent differ); pass overwrite=True (--overwrite) to start over"
                )
            if len(state["rng"]) != world:
                raise ValueError(
                    f"{state_path} was saved by {len(state['rng'])} processes; resume it with "
                    f"the same number (got {world})"
                )
            own = dict(acc.unwrap_model(model).named_parameters())
            with torch.no_grad():
                for k, v in state["model"].items():
                    own[k].copy_(v.to(own[k].device))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"][rank], device)
            run.step, run.micro, run.tokens = state["step"], state["micro"], state["tokens"]
            run.window = state.get("window")
            if main:
                truncate_log(log_path, run.step)
                log.info("resuming %s from step %d (%s)", label, run.step, state_path)
        elif main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if log_path.exists():
                log_path.unlink()
        if main:
            atomic_write_text(run_dir / "run.json", json.dumps(json.loads(key), indent=1))
        resumed_from = run.step
        result = _train(run, examples, collate, loss_fn, config, eval_fn, label, weight_fn)
    result.resumed_from = resumed_from
    return result


@dataclass
class _Run:
    """One run's prepared model, optimiser and schedule, where its state and log go, and its
    position (optimiser steps, micro-batches drawn, tokens seen)."""

    acc: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[nn.Parameter]
    state_path: Path
    log_path: Path
    key: str
    step: int = 0
    micro: int = 0
    tokens: int = 0
    window: dict[str, Any] | None = None  # the open logging window: loss sum, steps, stats

    def save(self) -> None:
        save_state(
            self.acc,
            self.model,
            self.optimizer,
            self.scheduler,
            self.state_path,
            self.key,
            self.step,
            self.micro,
            self.tokens,
            self.window,
        )


def _step_weights(batches, weight_fn, acc, world: int, grad_accum: int) -> list[float]:
    """Each micro-batch's weight in its optimiser step: ``1/grad_accum``, or with ``weight_fn``
    its share of the step's items over all processes (times ``world``: the processes'
    gradients are averaged), so that the step's loss is the mean over all items."""
    if weight_fn is None:
        return [1.0 / grad_accum] * len(batches)
    counts = [int(weight_fn(b)) for b in batches]
    total = torch.tensor(sum(counts), dtype=torch.long, device=acc.device)  # exact, any device
    if world > 1:
        total = acc.reduce(total, "sum")
    total = float(total)
    if not total > 0:
        raise ValueError("an optimiser step holds no items to train on (weight_fn counted 0)")
    return [c * world / total for c in counts]


def _train(
    run: _Run, examples, collate, loss_fn, config, eval_fn, label, weight_fn=None
) -> LoopResult:
    acc, model, optimizer, scheduler = run.acc, run.model, run.optimizer, run.scheduler
    params, state_path, log_path = run.params, run.state_path, run.log_path
    step, micro, tokens_total = run.step, run.micro, run.tokens
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    cache: dict = {}
    start = time.perf_counter()
    progress = Progress(main, config.steps, step, label)
    window = {"loss": 0.0, "n": 0, "tokens": 0, "t": time.perf_counter(), "stats": {}}
    if run.window:  # resumed between two log lines: the window goes on where it was saved
        window.update(loss=run.window["loss"], n=run.window["n"], stats=dict(run.window["stats"]))
    last_eval: dict[str, float] = {}
    check_grads = acc.mixed_precision != "fp16"  # the fp16 scaler skips inf steps itself
    model.train()
    try:
        while step < config.steps:
            lr = optimizer.param_groups[0]["lr"]
            step_loss = torch.zeros((), device=acc.device)
            step_tokens = 0
            batches = []
            for _ in range(config.grad_accum):
                idx = batch_indices(
                    micro, len(examples), config.batch_size, world, rank, config.seed, cache
                )
                micro += 1
                batches.append(
                    {b: v.to(acc.device) for b, v in collate([examples[i] for i in idx]).items()}
                )
            weights = _step_weights(batches, weight_fn, acc, world, config.grad_accum)
            for k, batch in enumerate(batches):
                sync = k == config.grad_accum - 1
                with nullcontext() if sync else acc.no_sync(model):
                    with acc.autocast():
                        loss, stats = loss_fn(model, batch)
                    acc.backward(loss * weights[k])
                step_loss += loss.detach().float() * weights[k]
                step_tokens += int(stats.get("tokens", 0))
                for s, v in stats.items():
                    if s != "tokens":
                        window["stats"][s] = (
                            window["stats"].get(s, 0.0) + float(v) / config.grad_accum
                        )
            loss_value = float(acc.reduce(step_loss, "mean") if world > 1 else step_loss)
            if not math.isfinite(loss_value):
                raise DivergenceError(_diverged("loss", loss_value, step + 1, state_path))
            grad_norm = float("nan")
            if config.max_grad_norm > 0:
                grad_norm = float(acc.clip_grad_norm_(params, config.max_grad_norm))
                if check_grads and not math.isfinite(grad_norm):
                    raise DivergenceError(
                        _diverged("gradient norm", grad_norm, step + 1, state_path)
                    )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_total += step_tokens * world
            window["loss"] += loss_value
            window["n"] += 1
            window["tokens"] += step_tokens * world
            is_last = step == config.steps
            evaluate = eval_fn is not None and (
                is_last or (config.eval_every and step % config.eval_every == 0)
            )
            if step % config.log_every == 0 or is_last or evaluate:
                now = time.perf_counter()
                tps = window["tokens"] / max(now - window["t"], 1e-9)
                rec = {
                    "step": step,
                    "loss": window["loss"] / window["n"],
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "tokens": tokens_total,
                    "elapsed_s": now - start,
                }
                rec.update({s: v / window["n"] for s, v in window["stats"].items()})
                if evaluate:
                    last_eval = _evaluate(acc, model, eval_fn) if main else {}
                    rec.update({f"eval/{m}": v for m, v in last_eval.items()})
                    acc.wait_for_everyone()
                if main:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(to_jsonable(rec)) + "\n")
                progress.update(step, rec["loss"], tps)
                window = {"loss": 0.0, "n": 0, "tokens": 0, "t": time.perf_counter(), "stats": {}}
            if config.save_every and step % config.save_every == 0 and not is_last:
                run.step, run.micro, run.tokens = step, micro, tokens_total
                run.window = {k: window[k] for k in ("loss", "n", "stats")}
                run.save()
    finally:
        progress.close()
    model = acc.unwrap_model(model, keep_fp32_wrapper=False)
    model.eval()
    return LoopResult(
        model=model,
        steps=step,
        tokens=tokens_total,
        seconds=time.perf_counter() - start,
        resumed_from=0,
        eval=last_eval,
        log_path=log_path,
        is_main=main,
    )


def _evaluate(acc, model, eval_fn) -> dict[str, float]:
    inner = acc.unwrap_model(model)
    devices = [acc.device.index or 0] if acc.device.type == "cuda" else []
    inner.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            out = {k: float(v) for k, v in eval_fn(inner).items()}
    finally:
        inner.train()
    log.info("eval: %s", ", ".join(f"{k}={v:.4g}" for k, v in out.items()))
    return out


def _diverged(what: str, value: float, step: int, state_path: Path) -> str:
    kept = (
        f"the last good state is kept in {state_path}"
        if state_path.exists()
        else "no state was saved yet"
    )
    return (
        f"training stopped: the {what} became {value} at step {step}; {kept}; lower the "
        "learning rate (--lr) or raise warmup_steps and start over with --overwrite"
    )
