"""``transferlens demo``: the main job on the embedded default (a tiny base model, a
Swedish-adapted one, and the comparison report)."""

from __future__ import annotations

import importlib.util

import typer

from .app import app, console


@app.command()
def demo(
    out: str = typer.Option("runs/demo", "--out", help="folder for models and the report"),
) -> None:
    """Train a tiny base model and a Swedish-adapted one, compare them, print the report path."""
    missing = [
        m
        for m in ("transferlens.training", "transferlens.report")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        console.print(
            "the demo needs the training module and the report, which are not built yet "
            f"(missing: {', '.join(missing)}); what exists: `transferlens info MODEL`",
            markup=False,
        )
        raise typer.Exit(1)
    from ..demo import run_demo

    report = run_demo(out)
    console.print(str(report), markup=False)
