"""``transferlens capture MODEL``: capture activations on the bundled corpus or a JSONL file
into an activation store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from ..jsonl import json_lines
from .app import app, console, console_err


def _read_jsonl(path: Path, languages: list[str] | None, split: str | None) -> list[Any]:
    """Examples of a JSONL file: one JSON string or object (with a text or words field)
    per line; ``languages``/``split`` filter on the ``language``/``split`` fields."""
    rows: list[Any] = []
    for n, row in json_lines(path, "file (--data)"):
        if isinstance(row, dict):
            if languages and row.get("language") not in languages:
                continue
            if split and row.get("split") not in (None, split):
                continue
        elif languages or split:
            raise ValueError(
                f"--data {path}, line {n}: --languages/--split need objects "
                "with 'language'/'split' fields, not bare strings"
            )
        rows.append(row)
    return rows


def _corpus(languages: list[str] | None, split: str | None) -> Any:
    from ..data import load_corpus_long

    return load_corpus_long(languages=languages, split=split)


@app.command()
def capture(
    model: str = typer.Argument(..., help="checkpoint .pt, HF folder, GGUF file or PEFT folder"),
    sites: str = typer.Option(
        "resid_post", "--sites", help="comma-separated sites; a bare component means every layer"
    ),
    out: Path = typer.Option(..., "--out", help="folder for the activation store"),
    languages: str | None = typer.Option(
        None, "--languages", help="comma-separated language codes"
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="train, test or all; the bundled corpus defaults to test (text the adapted model "
        "never saw), a --data file to all of its lines",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="JSONL file instead of the bundled corpus (one text or "
        "object with 'text' and optional id/language/labels a line)",
    ),
    select: str = typer.Option("mean", "--select", help="all | last | mean | first_subtoken"),
    max_examples: int | None = typer.Option(
        None, "--max-examples", help="use the first N examples"
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16"),
    batch_size: int = typer.Option(8, "--batch-size"),
    padding_side: str = typer.Option("right", "--padding-side", help="right | left"),
    max_length: int | None = typer.Option(None, "--max-length", help="most tokens per example"),
    on_overflow: str = typer.Option("truncate", "--on-overflow", help="truncate | error"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
) -> None:
    """Capture MODEL's activations at --sites into an activation store at --out."""
    from ..capture import capture as run_capture
    from ..models import load_model

    langs = [x.strip() for x in languages.split(",") if x.strip()] if languages else None
    if split not in (None, "train", "test", "all"):
        raise ValueError(f"--split must be train, test or all, not {split!r}")
    if split is None and data is None:
        split = "test"
    split = None if split == "all" else split
    if data is not None:
        examples: Any = _read_jsonl(data, langs, split)
        name = str(data)
    else:
        examples = _corpus(langs, split)
        name = f"corpus(languages={languages or 'all'}, split={split or 'all'})"
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"--max-examples must be at least 1, not {max_examples}")
        examples = (
            examples.select(range(min(max_examples, len(examples))))
            if hasattr(examples, "select")
            else examples[:max_examples]
        )
    handle = load_model(model)
    log = logging.getLogger("transferlens.capture")
    handler = _ConsoleHandler()
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        store = run_capture(
            handle,
            examples,
            sites,
            select=select,
            out=out,
            batch_size=batch_size,
            padding_side=padding_side,
            max_length=max_length,
            on_overflow=on_overflow,
            dtype=dtype,
            overwrite=overwrite,
            data_name=name,
        )
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    console.print(
        f"{store.n_rows} rows x {len(store.sites)} sites ({store.dtype}) -> {out}",
        markup=False,
        highlight=False,
    )


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console_err.print(record.getMessage(), markup=False, highlight=False)
