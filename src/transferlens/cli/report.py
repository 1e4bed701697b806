"""``transferlens report DIR``: re-render a report's figures from its results.json."""

from __future__ import annotations

import typer

from .app import app, console


@app.command()
def report(
    report_dir: str = typer.Argument(..., help="a report folder written by `transferlens compare`"),
    style: str = typer.Option("paper", "--style", help="paper (column widths) or slides"),
    formats: str = typer.Option("pdf,png", "--format", help="comma-separated: pdf,png,svg"),
) -> None:
    """Re-render every figure, table and report page from results.json (no model needed)."""
    from ..report import render_report

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    html = render_report(report_dir, style=style, formats=fmts)
    console.print(str(html), markup=False, highlight=False)
