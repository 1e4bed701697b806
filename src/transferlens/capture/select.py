"""Token selection: which activations become rows of the store.

A *selection* has a mode and a unit:

- ``all``: every real token is a row (unit: token).
- ``last``: the last token of each unit.
- ``mean``: the mean over the tokens of each unit (computed in float32).
- ``first_subtoken``: the first token of each word (unit: word).

The unit is ``example`` (one row per example) or ``word`` (one row per covered word, see
:mod:`~transferlens.capture.tokens`). Padding never enters a row. With
``exclude_special=True`` (the default) special tokens such as BOS are not rows and do not
enter means or "last"; special tokens never belong to a word.

Rows are ordered by example, then by position (``all``) or word. Each row carries
``example`` (index), ``position`` (token position in the unpadded example, -1 for means),
``token_id`` (-1 for means) and ``word`` (-1 when the row is not a word's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .tokens import Encoded

__all__ = ["ROW_DTYPE", "SELECTS", "BatchRows", "Selection", "plan_rows", "resolve_selection"]

SELECTS = ("all", "last", "mean", "first_subtoken")
UNITS = ("example", "word")
ROW_DTYPE = np.dtype(
    [("example", "<i8"), ("position", "<i4"), ("token_id", "<i4"), ("word", "<i4")]
)


@dataclass(frozen=True)
class Selection:
    """How tokens become rows (see module docstring)."""

    select: str
    unit: str
    exclude_special: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def needs_words(self) -> bool:
        return self.unit == "word"


def resolve_selection(
    select: str, unit: str | None = None, exclude_special: bool = True
) -> Selection:
    """Check ``select``/``unit`` and fill in the default unit.

    Raises:
        ValueError: unknown mode or unit, or a combination without meaning.
    """
    if select not in SELECTS:
        raise ValueError(f"unknown select {select!r}; use one of {', '.join(SELECTS)}")
    if select == "all":
        if unit not in (None, "token"):
            raise ValueError("select='all' makes one row per token; it takes no unit")
        return Selection("all", "token", exclude_special)
    if select == "first_subtoken":
        if unit not in (None, "word"):
            raise ValueError("select='first_subtoken' is per word; it takes unit='word' only")
        return Selection(select, "word", exclude_special)
    unit = unit or "example"
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; use one of {', '.join(UNITS)}")
    return Selection(select, unit, exclude_special)


def members(enc: Encoded, sel: Selection) -> np.ndarray:
    """Boolean mask of the tokens a selection may use."""
    if sel.exclude_special:
        return ~enc.special
    return np.ones(len(enc.ids), dtype=bool)


def units(enc: Encoded, sel: Selection) -> np.ndarray:
    """The units of one example that give rows: word indices, or ``[0]`` for the example."""
    if sel.unit == "word":
        return np.flatnonzero(enc.covered).astype(np.int64)
    if sel.unit == "example":
        return np.zeros(1 if members(enc, sel).any() else 0, dtype=np.int64)
    return np.flatnonzero(members(enc, sel)).astype(np.int64)


def count_rows(enc: Encoded, sel: Selection, keep: np.ndarray | None = None) -> int:
    """Rows one example gives (``keep``: the units kept, for paired capture)."""
    return len(units(enc, sel) if keep is None else keep)


@dataclass
class BatchRows:
    """Where a batch's rows come from in the padded ``(B*T, ...)`` activation.

    Attributes:
        index: flat token index of each row (``all``/``last``/``first_subtoken``), or of
            each member token (``mean``).
        group: for ``mean``, the row of each member token; None otherwise.
        counts: for ``mean``, member tokens per row (float32, shape (rows, 1)).
        meta: row metadata (:data:`ROW_DTYPE`).
    """

    index: torch.Tensor
    group: torch.Tensor | None
    counts: torch.Tensor | None
    meta: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.meta)

    def take(self, act: torch.Tensor) -> torch.Tensor:
        """The rows of one site's activation ``(B, T, ...)`` -> ``(rows, ...)``."""
        flat = act.reshape(act.shape[0] * act.shape[1], *act.shape[2:])
        if self.group is None:
            return flat.index_select(0, self.index)
        picked = flat.index_select(0, self.index).float()
        out = torch.zeros(
            (self.n_rows, *picked.shape[1:]), dtype=torch.float32, device=picked.device
        )
        out.index_add_(0, self.group, picked)
        return out / self.counts.reshape(-1, *([1] * (out.ndim - 1)))


def plan_rows(
    encoded: Sequence[Encoded],
    example_index: Sequence[int],
    sel: Selection,
    offsets: np.ndarray,
    T: int,
    device: torch.device,
    keep: Sequence[np.ndarray] | None = None,
) -> BatchRows:
    """Row plan for one padded batch.

    Args:
        encoded: the batch's tokens.
        example_index: global index of each example.
        sel: the selection.
        offsets: padded start of each example (from :func:`~.tokens.collate`).
        T: padded length.
        device: where the index tensors go (the model's device).
        keep: per example, the units to keep (paired capture); default: all units.
    """
    idx_parts, grp_parts, meta_parts = [], [], []
    n_rows = 0
    for i, enc in enumerate(encoded):
        base = i * T + int(offsets[i])
        mem = members(enc, sel)
        kept = units(enc, sel) if keep is None else np.asarray(keep[i], dtype=np.int64)
        if sel.unit == "token":
            pos = kept
            word = enc.words[pos]
        elif sel.unit == "example":
            pos_all = np.flatnonzero(mem)
            if len(kept) == 0:
                continue
            if sel.select == "mean":
                idx_parts.append(base + pos_all)
                grp_parts.append(np.full(len(pos_all), n_rows, dtype=np.int64))
                pos = np.array([-1])
            else:  # last
                pos = pos_all[-1:]
            word = np.array([-1])
        else:  # word
            tok = np.flatnonzero(mem & np.isin(enc.words, kept))
            tw = enc.words[tok].astype(np.int64)
            if sel.select == "mean":
                idx_parts.append(base + tok)
                grp_parts.append(n_rows + np.searchsorted(kept, tw))
                pos = np.full(len(kept), -1)
            elif sel.select == "last":
                _, last = np.unique(tw[::-1], return_index=True)
                pos = tok[len(tok) - 1 - last]
            else:  # first_subtoken
                _, first = np.unique(tw, return_index=True)
                pos = tok[first]
            word = kept
        m = np.zeros(len(pos), dtype=ROW_DTYPE)
        m["example"] = example_index[i]
        m["position"] = pos
        m["token_id"] = np.where(pos >= 0, enc.ids[np.clip(pos, 0, None)], -1)
        m["word"] = word
        meta_parts.append(m)
        if sel.select != "mean":
            idx_parts.append(base + pos)
        n_rows += len(pos)
    meta = np.concatenate(meta_parts) if meta_parts else np.zeros(0, dtype=ROW_DTYPE)
    index = torch.from_numpy(
        np.concatenate(idx_parts).astype(np.int64) if idx_parts else np.zeros(0, dtype=np.int64)
    ).to(device)
    if sel.select != "mean":
        return BatchRows(index=index, group=None, counts=None, meta=meta)
    group = torch.from_numpy(np.concatenate(grp_parts).astype(np.int64)).to(device)
    counts = torch.bincount(group, minlength=n_rows).to(torch.float32).reshape(-1, 1)
    return BatchRows(index=index, group=group, counts=counts, meta=meta)
