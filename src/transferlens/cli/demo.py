"""``transferlens demo``: the main job on the embedded default (a tiny base model, a
Swedish-adapted one, and the comparison report)."""

from __future__ import annotations

import time

import typer

from .app import app, console


@app.command()
def demo(
    out: str = typer.Option("runs/demo", "--out", help="folder for models and the report"),
) -> None:
    """Train a tiny base model and a Swedish-adapted one, compare them, print the report path."""
    from ..demo import run_demo

    start = time.perf_counter()
    report = run_demo(out)
    console.print(
        f"demo finished in {time.perf_counter() - start:.0f} s; open the report:", markup=False
    )
    console.print(str(report.resolve()), markup=False, highlight=False)
