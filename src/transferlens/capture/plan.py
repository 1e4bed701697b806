"""The pass before a capture: tokenise everything once, count rows, fix the shards.

The plan is a pure function of the data, the tokenizers and the options, so a resumed
capture finds the same batches and shards as the capture it resumes. It keeps only a few
numbers per batch in memory; example records stream to a sink (the store's
``examples.jsonl`` or a list).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models import ModelHandle
from ..models.sites import Site
from .align import aligned_units
from .inputs import Example, ExampleSource, example_digest
from .select import Selection
from .tokens import Encoded, encode

__all__ = ["Plan", "Side", "make_plan", "prepare_batch"]

log = logging.getLogger(__name__)

SHARD_BYTES = 256 * 2**20


@dataclass
class Side:
    """One model of a capture (two in a paired capture)."""

    handle: ModelHandle
    sites: list[Site]
    tok_hash: str
    max_len: int | None
    context: int | None
    row_shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.handle.tokenizer

    def row_bytes(self, itemsize: int) -> int:
        return int(sum(np.prod(s) for s in self.row_shapes.values()) * itemsize)


@dataclass
class Plan:
    """Batches, shards and counts of a capture."""

    batches: list[tuple[int, int]]
    batch_rows: list[int]
    shards: list[dict[str, Any]]
    n_tokens: list[int]
    truncated_ids: list[list[Any]]
    n_truncated: list[int]
    data_sha: str
    languages: dict[str, int]
    dropped: dict[str, int]

    @property
    def rows(self) -> int:
        return int(sum(self.batch_rows))


def prepare_batch(
    source: ExampleSource,
    start: int,
    stop: int,
    sides: Sequence[Side],
    sel: Selection,
    truncate: bool,
    same_tokenizer: bool,
) -> tuple[list[Example], list[list[Encoded]], list[list[np.ndarray]], dict[str, int]]:
    """Examples, their encoding per model, and the units each model keeps."""
    examples = source.batch(start, stop)
    encoded: list[list[Encoded]] = []
    cache: dict[tuple[str, int | None], list[Encoded]] = {}
    for side in sides:
        key = (side.tok_hash, side.max_len)
        if key not in cache:
            cache[key] = encode(
                side.tokenizer,
                examples,
                max_len=side.max_len,
                truncate=truncate,
                need_words=sel.needs_words,
            )
        encoded.append(cache[key])
    keep, dropped = aligned_units(encoded, sel, same_tokenizer)
    return examples, encoded, keep, dropped


def _shards(
    batches: list[tuple[int, int]], batch_rows: list[int], shard_rows: int
) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    b0, rows = 0, 0
    for b, n in enumerate(batch_rows):
        rows += n
        if rows >= shard_rows or b == len(batch_rows) - 1:
            shards.append(
                {
                    "index": len(shards),
                    "batches": [b0, b + 1],
                    "examples": [batches[b0][0], batches[b][1]],
                    "rows": rows,
                }
            )
            b0, rows = b + 1, 0
    return shards


def make_plan(
    source: ExampleSource,
    sides: Sequence[Side],
    sel: Selection,
    *,
    batch_size: int,
    on_overflow: str,
    shard_rows: int | None,
    itemsize: int,
    same_tokenizer: bool,
    sink: Callable[[int, dict[str, Any]], None],
) -> Plan:
    """Tokenise all examples once (batch by batch), check lengths, and plan the shards.

    Args:
        sink: called with (model index, example record) for every example and model.

    Raises:
        ValueError: an example longer than a model's context with ``on_overflow='error'``.
    """
    n = len(source)
    batches = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    batch_rows: list[int] = []
    n_tokens = [0] * len(sides)
    truncated: list[list[Any]] = [[] for _ in sides]
    n_trunc = [0] * len(sides)
    languages: Counter[str] = Counter()
    dropped_total = {"words": 0, "examples": 0}
    h = hashlib.sha256()
    truncate = on_overflow == "truncate"
    for a, b in batches:
        examples, encoded, keep, dropped = prepare_batch(
            source, a, b, sides, sel, truncate, same_tokenizer
        )
        for k, v in dropped.items():
            dropped_total[k] += v
        for i, ex in enumerate(examples):
            example_digest(h, ex)
            if ex.language is not None:
                languages[ex.language] += 1
            for m, side in enumerate(sides):
                enc = encoded[m][i]
                if not truncate and side.max_len is not None and enc.n_full > side.max_len:
                    raise ValueError(
                        f"example {ex.id!r} has {enc.n_full} tokens, more than the "
                        f"{side.max_len}-token limit of {side.handle.name} (max_length or the "
                        "model's context); shorten it or pass on_overflow='truncate'"
                    )
                if enc.truncated:
                    n_trunc[m] += 1
                    if len(truncated[m]) < 100:
                        truncated[m].append(ex.id)
                n_tokens[m] += len(enc.ids)
                rec = ex.record()
                rec["n_tokens"] = int(len(enc.ids))
                rec["truncated"] = bool(enc.truncated)
                sink(m, rec)
        batch_rows.append(int(sum(len(u) for u in keep[0])))
    if shard_rows is None:
        row_bytes = max(1, max(s.row_bytes(itemsize) for s in sides))
        shard_rows = max(1, SHARD_BYTES // row_bytes)
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    return Plan(
        batches=batches,
        batch_rows=batch_rows,
        shards=_shards(batches, batch_rows, shard_rows),
        n_tokens=n_tokens,
        truncated_ids=truncated,
        n_truncated=n_trunc,
        data_sha=h.hexdigest(),
        languages=dict(sorted(languages.items())),
        dropped=dropped_total,
    )
