"""``transferlens info MODEL``: load a model and describe it (family, sites, fingerprint)."""

from __future__ import annotations

import json

import typer

from .app import app, console


@app.command()
def info(
    model: str = typer.Argument(..., help="checkpoint .pt, HF folder, GGUF file or PEFT folder"),
    sites: bool = typer.Option(False, "--sites", help="list every site"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Load MODEL and print its family, size, fingerprint and sites."""
    from ..models import load_model

    handle = load_model(model)
    desc = handle.describe()
    desc["components"] = handle.sitemap.components()
    if sites:
        desc["sites"] = [str(s) for s in handle.sitemap.sites()]
    if json_out:
        console.print_json(json.dumps(desc))
        return
    for key in (
        "spec",
        "source",
        "family",
        "model_type",
        "n_layers",
        "n_heads",
        "d_model",
        "n_params",
        "dtype",
        "fingerprint",
    ):
        console.print(f"{key:12s} {desc[key]}", markup=False, highlight=False)
    console.print(f"{'components':12s} {', '.join(desc['components'])}", markup=False)
    if sites:
        console.print(" ".join(desc["sites"]), markup=False)
