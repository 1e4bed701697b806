"""The store manifest: what was captured, how, and from which model.

Schema (``format: transferlens.activations``, ``version: 1``)::

    complete        bool: every shard is written
    model           the model's description (name, spec, family, sizes, dtype, fingerprint)
    sites           captured sites, in order; row_shapes: site -> shape of one row
    dtype           storage dtype: float32 | float16 | bfloat16 (bf16 stored as raw bits)
    selection       {select, unit, exclude_special}
    tokenization    {tokenizer_hash, tokenizer_class, padding_side, max_length,
                     context_length, on_overflow, n_tokens, truncated: {count, example_ids}}
    data            {kind, n_examples, columns, sha256, languages, name}
    batch_size      examples per forward pass
    rows            total rows; bytes: activation bytes on disk (estimate before capture)
    shards          [{index, batches: [b0, b1], examples: [e0, e1], rows}]
    finished        indices of shards written
    alignment       paired capture only (see transferlens.capture.align)
    versions        package versions (python, transferlens, torch, transformers, numpy, ...)
    warnings        one line per thing a reader should know (truncations, ...)

The manifest holds no timestamps, so a resumed capture writes the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from typing import TYPE_CHECKING, Any

import numpy as np

from .select import ROW_DTYPE

if TYPE_CHECKING:
    from .config import CaptureConfig
    from .inputs import ExampleSource
    from .plan import Plan, Side

__all__ = [
    "FORMAT",
    "StoreMismatch",
    "build_manifest",
    "check_compatible",
    "human_bytes",
    "versions",
]


class StoreMismatch(ValueError):
    """An existing store at ``out`` holds another capture (model, data, settings)."""


FORMAT = "transferlens.activations"
VERSION = 1

_PACKAGES = ("torch", "transformers", "tokenizers", "numpy")


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    from .. import __version__

    out = {"python": platform.python_version(), "transferlens": __version__}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out[name] = "missing"
    return tuple(out.items())


def versions() -> dict[str, str]:
    """Versions of Python, transferlens and the packages that shape the activations."""
    return dict(_versions())


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _short(x: Any) -> str:
    s = str(x)
    return s[:12] + "…" if len(s) > 16 else s


def check_compatible(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """Raise if a store's manifest ``old`` cannot be resumed (or reused) by a capture that
    would write ``new``.

    Raises:
        ValueError: one line naming what differs and what to do.
    """
    fix = f"use another out folder, or pass overwrite=True to replace {where}"
    if old.get("format") != FORMAT:
        raise ValueError(f"{where} is not a transferlens activation store; {fix}")
    checks = [
        (
            "model",
            old["model"].get("fingerprint"),
            new["model"].get("fingerprint"),
            "was captured from model {a}, this model is {b}",
        ),
        ("sites", old["sites"], new["sites"], "holds sites {a}, this capture asks for {b}"),
        (
            "selection",
            old["selection"],
            new["selection"],
            "has selection {a}, this capture asks for {b}",
        ),
        ("dtype", old["dtype"], new["dtype"], "stores {a}, this capture asks for {b}"),
        (
            "data",
            old["data"].get("sha256"),
            new["data"].get("sha256"),
            "holds other data (sha256 {a}, this data {b}); a store is never appended to",
        ),
        (
            "tokenizer",
            old["tokenization"].get("tokenizer_hash"),
            new["tokenization"].get("tokenizer_hash"),
            "was tokenised by tokenizer {a}, not {b}",
        ),
    ]
    for key in ("padding_side", "max_length", "on_overflow"):
        checks.append(
            (
                key,
                old["tokenization"].get(key),
                new["tokenization"].get(key),
                f"has {key}={{a}}, this capture asks for {{b}}",
            )
        )
    checks.append(
        (
            "batch_size",
            old.get("batch_size"),
            new.get("batch_size"),
            "was captured with batch_size={a}, this capture uses {b}",
        )
    )
    checks.append(
        (
            "shards",
            old.get("shards"),
            new.get("shards"),
            "was planned with other shards ({a} shards, now {b})",
        )
    )
    for key, a, b, msg in checks:
        if a != b:
            if key in ("model", "data", "tokenizer"):
                a, b = _short(a), _short(b)
            if key == "shards":
                a, b = len(a or []), len(b or [])
            if key == "sites":
                a, b = ",".join(a), ",".join(b)
            raise StoreMismatch(
                f"refusing to write to {where}: the store " + msg.format(a=a, b=b) + f"; {fix}"
            )


def build_manifest(
    side: Side,
    cfg: CaptureConfig,
    sel: Any,
    source: ExampleSource,
    plan: Plan,
    m: int,
    data_name: str | None,
    padding_side: str,
) -> dict[str, Any]:
    tok = side.tokenizer
    itemsize = np.dtype({"float32": "f4", "float16": "f2", "bfloat16": "u2"}[cfg.dtype]).itemsize
    warnings = []
    if plan.n_truncated[m]:
        warnings.append(
            f"{plan.n_truncated[m]} of {len(source)} examples were longer than "
            f"{side.max_len} tokens and were truncated (on_overflow='truncate')"
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        "model": side.handle.describe(),
        "sites": [str(s) for s in side.sites],
        "row_shapes": side.row_shapes,
        "dtype": cfg.dtype,
        "selection": sel.to_dict(),
        "tokenization": {
            "tokenizer_hash": side.tok_hash,
            "tokenizer_class": type(tok).__name__,
            "padding_side": padding_side,
            "max_length": cfg.max_length,
            "effective_max_length": side.max_len,
            "context_length": side.context,
            "on_overflow": cfg.on_overflow,
            "n_tokens": plan.n_tokens[m],
            "truncated": {"count": plan.n_truncated[m], "example_ids": plan.truncated_ids[m]},
        },
        "data": {
            **source.describe(),
            "sha256": plan.data_sha,
            "languages": plan.languages,
            "name": data_name,
        },
        "batch_size": cfg.batch_size,
        "config": cfg.to_dict(),
        "rows": plan.rows,
        "bytes": plan.rows * (side.row_bytes(itemsize) + ROW_DTYPE.itemsize),
        "shards": plan.shards,
        "finished": [],
        "alignment": None,
        "versions": versions(),
        "warnings": warnings,
    }
