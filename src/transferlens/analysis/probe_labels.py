"""Labels and splits of the probing methods: example-grouped folds, control labels (Hewitt &
Liang), linear-context labels (Kunz & Kuhlmann), and extrapolation splits.

Rows are probed units (tokens or examples); ``groups`` gives each row's example, so that folds
and splits never put one example on both sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlens.analysis.probing import encode_labels

__all__ = ["context_labels", "control_labels", "extrapolation_split", "group_folds"]


def group_folds(groups: Any, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id per row; all rows of a group share a fold (GroupKFold-style, shuffled).

    Groups are shuffled by ``seed`` and assigned, largest first, to the fold with the fewest
    rows so far.

    Args:
        groups: ``(n,)`` example ids.
        n_folds: number of folds (at most the number of groups).
        seed: shuffling seed.

    Returns:
        ``(n,)`` fold ids in ``[0, n_folds)``.
    """
    _, inv, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if not 2 <= n_folds <= sizes.size:
        raise ValueError(
            f"n_folds={n_folds} must lie between 2 and the number of groups ({sizes.size})"
        )
    order = np.lexsort((np.random.default_rng(seed).permutation(sizes.size), -sizes))
    load, fold_of = np.zeros(n_folds, np.int64), np.empty(sizes.size, np.int64)
    for gi in order:
        fold_of[gi] = f = int(np.argmin(load))
        load[f] += sizes[gi]
    return fold_of[inv.reshape(-1)]


def control_labels(
    labels: Any,
    *,
    types: Any = None,
    examples: Any = None,
    seed: int = 0,
    missing_label: Any = None,
) -> np.ndarray:
    """Control-task labels (Hewitt & Liang 2019).

    Word-level tasks (``types``: the word type of each row) give every type one label drawn
    once from the empirical label distribution of the rows; example-level tasks (``examples``:
    the example id of each row) give every example one label drawn from the distribution of
    the examples' labels. Types are visited in sorted order, so the draw depends only on
    ``seed`` and the data. Rows with a missing label stay missing.

    Args:
        labels: ``(n,)`` task labels.
        types: ``(n,)`` word types (strings or ids); exclusive with ``examples``.
        examples: ``(n,)`` example ids.
        seed: the draw (same seed, same control task).
        missing_label: a label value meaning "no label" besides None/NaN.

    Returns:
        ``(n,)`` control labels, taking values among the task's classes.
    """
    if (types is None) == (examples is None):
        raise ValueError(
            "give exactly one of types= (word-level task) or examples= (example-level task)"
        )
    y = np.asarray(labels)
    codes, classes, keep = encode_labels(y, missing_label=missing_label, drop_missing=True)
    unit = np.asarray(types if types is not None else examples)
    if unit.shape != y.shape:
        raise ValueError(f"types/examples need one entry per label: {unit.shape} vs {y.shape}")
    uniq, uinv = np.unique(unit[keep], return_inverse=True)
    uinv = uinv.reshape(-1)
    if types is not None:
        freq = np.bincount(codes, minlength=classes.size)
    else:
        freq = np.bincount(codes[np.unique(uinv, return_index=True)[1]], minlength=classes.size)
    drawn = np.random.default_rng(seed).choice(classes.size, size=uniq.size, p=freq / freq.sum())
    out = y.astype(object) if y.dtype.kind == "O" else y.copy()
    out[keep] = classes[drawn[uinv]]
    return out


def context_labels(token_ids: Any, groups: Any, *, offset: int = -1, top_k: int = 50) -> np.ndarray:
    """Neighbouring-token identity as a class label (Kunz & Kuhlmann 2020).

    Rows of one example must be contiguous and in token order. The label of a row is the id of
    the token ``offset`` positions away in the same example, as ``0..top_k-1`` for the
    ``top_k`` most frequent neighbour ids (ties: smaller id first) and ``top_k`` ("other") for
    the rest; ``-1`` where the neighbour lies outside the example.
    """
    ids, g = np.asarray(token_ids).astype(np.int64), np.asarray(groups)
    if g.shape != ids.shape:
        raise ValueError("token_ids and groups need one entry per row")
    src = np.arange(ids.size) + offset
    ok = (src >= 0) & (src < ids.size)
    ok[ok] &= g[src[ok]] == g[ok]
    neigh = ids[src[ok]]
    vals, counts = np.unique(neigh, return_counts=True)
    top = vals[np.lexsort((vals, -counts))[:top_k]]  # by rank
    sorter = np.argsort(top)
    pos = sorter[np.minimum(np.searchsorted(top, neigh, sorter=sorter), top.size - 1)]
    out = np.full(ids.size, -1, np.int64)
    out[ok] = np.where(top[pos] == neigh, pos, top.size)
    return out


def extrapolation_split(
    scores: Any, *, train_fraction: float = 0.5, easy: str = "low"
) -> np.ndarray:
    """Training mask of an extrapolation split (Kunz & Kuhlmann 2021).

    Rows whose score lies at or below the ``train_fraction`` quantile train (``easy="low"``:
    short or near; ``"high"`` when high scores are easy, e.g. frequency); the rest test. Ties
    stay on one side, so a score constant within an example keeps the example whole.
    """
    if easy not in ("low", "high"):
        raise ValueError(f"easy must be 'low' or 'high', got {easy!r}")
    s = np.asarray(scores, dtype=np.float64) * (1.0 if easy == "low" else -1.0)
    train = s <= np.quantile(s, train_fraction, method="lower")
    if train.all() or not train.any():
        raise ValueError("the scores put every row on one side of the split; use another score")
    return train


def _random_split_like(train: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """A random training mask of the same size; whole groups when ``train`` keeps them whole
    (sizes then match up to one group)."""
    rng = np.random.default_rng(seed)
    _, inv = np.unique(groups, return_inverse=True)
    inv = inv.reshape(-1)
    sizes, n_tr = np.bincount(inv), np.bincount(inv, weights=train)
    if not np.all((n_tr == 0) | (n_tr == sizes)):
        out = np.zeros(train.size, bool)
        out[rng.permutation(train.size)[: int(train.sum())]] = True
        return out
    chosen, total = np.zeros(sizes.size, bool), 0
    for u in rng.permutation(sizes.size):
        if total >= train.sum():
            break
        chosen[u], total = True, total + sizes[u]
    return chosen[inv]
