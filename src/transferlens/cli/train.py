"""``transferlens train pretrain|adapt|sft|dpo``: make base and adapted models.

Each command builds its config from a preset (``--preset``), the options given, and any
``--set field=value`` pairs, trains, writes the checkpoint and prints its path and held-out
metrics. An interrupted run resumes when the same command is run again.
"""

from __future__ import annotations

import shlex
from typing import Any

import typer

from .app import app, console

train_app = typer.Typer(
    help="Train models: pretrain a base model, adapt it to a language, SFT, DPO.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

_PRESET = typer.Option("default", "--preset", help="settings preset: default or tiny")
_STEPS = typer.Option(None, "--steps", help="optimiser steps")
_LR = typer.Option(None, "--lr", help="peak learning rate")
_BATCH = typer.Option(None, "--batch-size", help="sequences per micro-batch per process")
_ACCUM = typer.Option(None, "--grad-accum", help="micro-batches per optimiser step")
_SEED = typer.Option(None, "--seed", help="random seed")
_SET = typer.Option(None, "--set", help="any config field: --set field=value (repeatable)")
_OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing output; start over")
_NO_RESUME = typer.Option(False, "--no-resume", help="refuse to continue an interrupted run")
_TUNING = typer.Option(None, "--tuning", help="full or lora")
_TARGETS = typer.Option(None, "--target-modules", help="LoRA targets, comma-separated")
_LORA_R = typer.Option(None, "--lora-r", help="LoRA rank")


def _config(method: str, preset: str, options: dict[str, Any], sets: list[str] | None):
    from ..training.presets import preset_config

    overrides = {k: v for k, v in options.items() if v is not None}
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: use --set field=value")
        key, value = item.split("=", 1)
        overrides[key.strip().replace("-", "_")] = value.strip()
    return preset_config(method, preset, **overrides)


def _report(result: Any) -> None:
    console.print(f"wrote {result.path}", markup=False, highlight=False)
    for key, value in result.metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        console.print(f"  {key:28s} {text}", markup=False, highlight=False)
    console.print(f"  {'steps':28s} {result.steps}", markup=False, highlight=False)
    console.print(f"  {'seconds':28s} {result.seconds:.1f}", markup=False, highlight=False)
    console.print(f"  log: {result.log_path}", markup=False, highlight=False)


def _command(ctx: typer.Context) -> str:
    """The command as parsed: ``transferlens train adapt PARENT OUT --steps=10 ...``."""
    parts = [ctx.command_path]
    for name, value in ctx.params.items():
        if value in (None, False, []) or (name == "preset" and value == "default"):
            continue
        if name in ("out", "parent"):
            parts.append(shlex.quote(str(value)))
        elif value is True:
            parts.append(f"--{name.rstrip('_').replace('_', '-')}")
        else:
            vals = value if isinstance(value, list) else [value]
            parts += [f"--{name.rstrip('_').replace('_', '-')}={shlex.quote(str(v))}" for v in vals]
    return " ".join(parts)


def _train(
    ctx: typer.Context,
    method: str,
    args: tuple[str, ...],
    preset: str,
    opts: dict[str, Any],
    sets: list[str] | None,
    overwrite: bool,
    no_resume: bool,
) -> None:
    """Build the config, run ``transferlens.training.<method>(*args, config, ...)``, report."""
    from .. import training

    cfg = _config(method, preset, opts, sets)
    fn = getattr(training, method)
    _report(
        fn(
            *args,
            cfg,
            overwrite=overwrite,
            resume=not no_resume,
            preset=preset,
            command=_command(ctx),
        )
    )


@train_app.command("pretrain")
def pretrain_cmd(
    ctx: typer.Context,
    out: str = typer.Argument(..., help="output checkpoint (.pt)"),
    preset: str = _PRESET,
    languages: str = typer.Option(None, "--languages", help="corpus languages, e.g. en,de"),
    arch: str = typer.Option(None, "--arch", help="llama or gpt2"),
    steps: int = _STEPS,
    lr: float = _LR,
    batch_size: int = _BATCH,
    grad_accum: int = _ACCUM,
    seed: int = _SEED,
    set_: list[str] = _SET,
    overwrite: bool = _OVERWRITE,
    no_resume: bool = _NO_RESUME,
) -> None:
    """Train a BPE tokenizer and a small causal LM from scratch (default: English + German)."""
    opts = dict(
        languages=languages,
        arch=arch,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
    )
    _train(ctx, "pretrain", (out,), preset, opts, set_, overwrite, no_resume)


@train_app.command("adapt")
def adapt_cmd(
    ctx: typer.Context,
    parent: str = typer.Argument(..., help="parent model (.pt, HF folder, GGUF, ...)"),
    out: str = typer.Argument(..., help="output checkpoint (.pt)"),
    preset: str = _PRESET,
    language: str = typer.Option(None, "--language", help="target language (default sv)"),
    tuning: str = _TUNING,
    target_modules: str = _TARGETS,
    lora_r: int = _LORA_R,
    extend_vocab: int = typer.Option(None, "--extend-vocab", help="new target-language tokens"),
    steps: int = _STEPS,
    lr: float = _LR,
    batch_size: int = _BATCH,
    grad_accum: int = _ACCUM,
    seed: int = _SEED,
    set_: list[str] = _SET,
    overwrite: bool = _OVERWRITE,
    no_resume: bool = _NO_RESUME,
) -> None:
    """Continue pretraining PARENT on a new language (full or LoRA)."""
    opts = dict(
        language=language,
        tuning=tuning,
        target_modules=target_modules,
        lora_r=lora_r,
        extend_vocab=extend_vocab,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
    )
    _train(ctx, "adapt", (parent, out), preset, opts, set_, overwrite, no_resume)


@train_app.command("sft")
def sft_cmd(
    ctx: typer.Context,
    parent: str = typer.Argument(..., help="parent model"),
    out: str = typer.Argument(..., help="output checkpoint (.pt)"),
    preset: str = _PRESET,
    task: str = typer.Option(None, "--task", help="topic, translation, or a JSONL file"),
    eval_data: str = typer.Option(None, "--eval-data", help="held-out JSONL for a user task"),
    tuning: str = _TUNING,
    target_modules: str = _TARGETS,
    lora_r: int = _LORA_R,
    steps: int = _STEPS,
    lr: float = _LR,
    batch_size: int = _BATCH,
    grad_accum: int = _ACCUM,
    seed: int = _SEED,
    set_: list[str] = _SET,
    overwrite: bool = _OVERWRITE,
    no_resume: bool = _NO_RESUME,
) -> None:
    """Instruction-tune PARENT on prompt/response pairs (loss on the response only)."""
    opts = dict(
        task=task,
        eval_data=eval_data,
        tuning=tuning,
        target_modules=target_modules,
        lora_r=lora_r,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
    )
    _train(ctx, "sft", (parent, out), preset, opts, set_, overwrite, no_resume)


@train_app.command("dpo")
def dpo_cmd(
    ctx: typer.Context,
    parent: str = typer.Argument(..., help="parent model (also the frozen reference)"),
    out: str = typer.Argument(..., help="output checkpoint (.pt)"),
    preset: str = _PRESET,
    pairs: str = typer.Option(None, "--pairs", help="builtin, or a JSONL file"),
    eval_data: str = typer.Option(None, "--eval-data", help="held-out JSONL for user pairs"),
    beta: float = typer.Option(None, "--beta", help="DPO beta"),
    swap: bool = typer.Option(False, "--swap", help="swap chosen/rejected (negative control)"),
    tuning: str = _TUNING,
    target_modules: str = _TARGETS,
    lora_r: int = _LORA_R,
    steps: int = _STEPS,
    lr: float = _LR,
    batch_size: int = _BATCH,
    grad_accum: int = _ACCUM,
    seed: int = _SEED,
    set_: list[str] = _SET,
    overwrite: bool = _OVERWRITE,
    no_resume: bool = _NO_RESUME,
) -> None:
    """Preference-tune PARENT with DPO on (prompt, chosen, rejected) triples."""
    opts = dict(
        pairs=pairs,
        eval_data=eval_data,
        beta=beta,
        swap=swap or None,
        tuning=tuning,
        target_modules=target_modules,
        lora_r=lora_r,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
    )
    _train(ctx, "dpo", (parent, out), preset, opts, set_, overwrite, no_resume)
