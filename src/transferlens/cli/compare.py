"""``transferlens compare BASE ADAPTED``: the report on what adaptation changed."""

from __future__ import annotations

import shlex
import sys

import typer

from .app import app, console


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


@app.command()
def compare(
    base: str = typer.Argument(..., help="the base model (.pt, HF folder, GGUF, PEFT folder)"),
    adapted: str = typer.Argument(..., help="the adapted model"),
    languages: str | None = typer.Option(
        None, "--languages", help="e.g. en,sv,de (default: all five)"
    ),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="probe tasks, comma-separated: names in probes/ (language_id, topic, "
        "word_initial, position_bucket) or paths of task files (.yaml) "
        "(default: language_id,topic)",
    ),
    analyses: str | None = typer.Option(
        None,
        "--analyses",
        help="behaviour,probe,similarity,patch,lens,weights (default: all that apply)",
    ),
    out: str | None = typer.Option(
        None, "--out", help="report folder (default reports/<base>-vs-<adapted>/)"
    ),
    device: str = typer.Option("cpu", "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16"),
    max_examples: int = typer.Option(200, "--max-examples", help="paragraphs per language"),
    seed: int = typer.Option(0, "--seed"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples per interval"),
    name_base: str = typer.Option("base", "--name-base", help="display name in figures"),
    name_adapted: str = typer.Option("adapted", "--name-adapted", help="display name in figures"),
) -> None:
    """Compare BASE and ADAPTED: behaviour, probes, CKA, patching, lenses, weights -> a report."""
    from ..compare import CompareConfig
    from ..compare import compare as run_compare
    from ..data import LANGUAGES

    langs = _split(languages) or list(LANGUAGES)
    bad = [lang for lang in langs if lang not in LANGUAGES]
    if bad:
        raise ValueError(f"unknown language {bad[0]!r}; valid: {', '.join(LANGUAGES)}")
    cfg = CompareConfig(
        languages=langs,
        tasks=_split(tasks) or ["language_id", "topic"],
        analyses=_split(analyses),
        device=device,
        dtype=dtype,
        max_examples=max_examples,
        seed=seed,
        n_boot=n_boot,
        name_base=name_base,
        name_adapted=name_adapted,
    )
    command = "transferlens " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    html = run_compare(base, adapted, out, cfg, command=command)
    console.print(str(html), markup=False, highlight=False)
