"""MDL probing: the online (prequential) codelength of labels given representations
(Voita & Titov 2020), per layer, for a task and its control task, with example-bootstrap
intervals. Conventions as in :mod:`~transferlens.analysis.probe_methods`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from transferlens.analysis.probe_common import (
    _MEM,
    MDL_FRACTIONS,
    ProbeConfig,
    _control_codes,
    _result,
    _setup,
    _Table,
)
from transferlens.analysis.probe_fits import note_fits, tallied
from transferlens.analysis.probing import PreparedLayers, encode_labels, fit_logistic
from transferlens.analysis.workers import layer_groups, run_jobs, workers
from transferlens.results import AnalysisResult

__all__ = ["MDLCode", "mdl_codelength", "mdl_probe"]


@dataclass
class MDLCode:
    """Online codelength of labels given representations (Voita & Titov 2020).

    Attributes:
        codelength: ``L`` in bits.
        uniform_codelength: ``N·log₂K`` bits.
        compression: ``N·log₂K / L``.
        n: ``N``, the coded units (rows).
        n_classes: ``K``.
        block_ends: prefix sizes ``t₁ < t₂ < … < N``.
        row_bits: ``(N,)`` bits of each row, in the input's row order.
    """

    codelength: float
    uniform_codelength: float
    compression: float
    n: int
    n_classes: int
    block_ends: list[int]
    row_bits: np.ndarray


def _mdl_order(g: np.ndarray, seed: int, shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows in coding order (examples shuffled, or by first appearance; each example's rows
    together, in input order) and the positions where examples end in that order."""
    uniq, inv = np.unique(g, return_inverse=True)
    inv = inv.reshape(-1)
    if shuffle:
        rank = np.random.default_rng(seed).permutation(uniq.size)
    else:
        first = np.full(uniq.size, g.size)
        np.minimum.at(first, inv, np.arange(g.size))
        rank = np.argsort(np.argsort(first))
    order = np.lexsort((np.arange(g.size), rank[inv]))
    r = rank[inv][order]
    return order, np.flatnonzero(np.r_[r[1:] != r[:-1], True]) + 1


class _KeptRows:
    """The layers of a stack restricted to some rows, each read when it is used."""

    def __init__(self, stack: Any, keep: np.ndarray) -> None:
        self.stack, self.keep = stack, keep

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.stack[i])[self.keep]


def _block_ends(n: int, fractions: Sequence[float], example_ends: np.ndarray) -> list[int]:
    """Prefix sizes ``max(1, ⌊f·N⌋)``, moved up to the next example boundary, deduplicated."""
    f = np.asarray(fractions, np.float64)
    if abs(f[-1] - 1.0) > 1e-12 or np.any(np.diff(f) <= 0) or f[0] <= 0:
        raise ValueError("fractions must be positive, increasing and end at 1.0")
    out: list[int] = []
    for t in np.maximum(1, np.floor(f * n + 1e-9).astype(np.int64)):
        t = int(example_ends[np.searchsorted(example_ends, t)])
        if not out or t > out[-1]:
            out.append(t)
    return out


def _uniform_start(L: int, Y: np.ndarray, order: np.ndarray, ends: list[int], K: int):
    """Bits ``(L, P, n)`` with the first block sent uniformly, labels in MDL order, blocks."""
    bits = np.empty((L, *Y.shape))
    bits[:, :, order[: ends[0]]] = math.log2(K)
    return bits, Y[:, order], list(zip(ends[:-1], ends[1:], strict=True))


def _mdl_bits(
    stack: Any,
    Y: np.ndarray,
    order: np.ndarray,
    ends: list[int],
    K: int,
    cfg: ProbeConfig,
    factory: Callable[[], Any] | None,
    name: str,
) -> np.ndarray:
    """Bits per row ``(L, P, n)`` (input row order) of the online code of each label row."""
    if factory is None:
        bits, jobs = _mdl_jobs(stack, Y, order, ends, K, cfg, name)
        run_jobs(jobs)
        return bits
    bits, Yo, blocks = _uniform_start(len(stack), Y, order, ends, K)
    for li in range(len(stack)):
        X = np.asarray(stack[li], np.float64)[order]
        for p in range(Y.shape[0]):
            for a, b in blocks:
                m = factory()
                m.fit(X[:a], Yo[p, :a])
                full = np.zeros((b - a, K))
                cols = np.asarray(getattr(m, "classes_", np.arange(K)), np.int64)
                full[:, cols] = np.asarray(m.predict_proba(X[a:b]), np.float64)
                pt = full[np.arange(b - a), Yo[p, a:b]]
                if (pt <= 0).any():
                    raise ValueError(
                        "the MDL predictor gave probability 0 to a true label "
                        "(infinite codelength); it must cover all K classes"
                    )
                bits[li, p, order[a:b]] = -np.log2(pt)
    return bits


def _mdl_jobs(
    stack: Any,
    Y: np.ndarray,
    order: np.ndarray,
    ends: list[int],
    K: int,
    cfg: ProbeConfig,
    name: str,
) -> tuple[np.ndarray, list[Callable[[], None]]]:
    """:func:`_mdl_bits` with the linear probe, as jobs (one per layer group) that fill the
    returned bits when run, so that the jobs of several models share the worker threads."""
    L, (P, n) = len(stack), Y.shape
    bits, Yo, blocks = _uniform_start(L, Y, order, ends, K)
    if not blocks:  # everything is sent with the uniform code
        return bits, []
    # all prefixes share one batched fit (row masks over the largest; each problem reads
    # only its prefix's rows); layer groups run side by side within the memory bound
    top = blocks[-1][0]
    masks = np.stack([np.arange(top) < a for a, _ in blocks for _ in range(P)])
    labels = np.tile(Yo[:, :top], (len(blocks), 1))

    def one(ch: range) -> None:
        perm = PreparedLayers([stack[i] for i in ch], name=name, layers=ch).rows(order)
        fit = fit_logistic(
            perm.rows(np.arange(top)),
            labels,
            train_mask=masks,
            n_classes=K,
            C=cfg.C,
            tol=cfg.tol,
            max_iter=cfg.max_iter,
            penalize_intercept=True,
            all_classes=True,
            name=name,
        )
        note_fits(fit.converged)
        for j, (a, b) in enumerate(blocks):
            lp = fit.select(slice(j * P, (j + 1) * P)).log_proba(perm.rows(np.arange(a, b)))
            idx = torch.as_tensor(Yo[:, a:b]).expand(len(ch), P, b - a)[..., None]
            bits[ch.start : ch.stop, :, order[a:b]] = (
                -lp.gather(3, idx)[..., 0] / math.log(2)
            ).numpy()

    per = _MEM // (n * int(stack[0].shape[1]) * 16) // workers()
    return bits, [partial(one, ch) for ch in layer_groups(L, max(1, per))]


@tallied
def mdl_codelength(
    X: Any,
    y: Any,
    *,
    groups: Any = None,
    predictor_factory: Callable[[], Any] | None = None,
    n_classes: int | None = None,
    fractions: Sequence[float] = MDL_FRACTIONS,
    shuffle: bool = True,
    seed: int = 0,
    config: ProbeConfig | None = None,
) -> MDLCode:
    """Online (prequential) codelength of labels ``y`` given one layer ``X`` (Voita & Titov 2020).

    Examples are put in random order (``seed``; the rows of an example stay together). The
    first ``t₁`` rows are sent with the uniform code (``log₂K`` bits each); then, block by block,
    a probe trained on the first ``tᵢ`` rows codes rows ``tᵢ+1..tᵢ₊₁`` with ``−log₂ p(y|x)``:
    ``L = t₁·log₂K + Σᵢ −log₂ p_θᵢ(y_block i+1 | x)``. Block ends are ``max(1, ⌊f·N⌋)`` for
    ``f`` in ``fractions``, moved up to the next example boundary.

    Args:
        X: ``(n, d)`` activations. y: ``(n,)`` labels. groups: ``(n,)`` example ids.
        predictor_factory: ``() -> model`` with ``fit(X, codes)`` and ``predict_proba(X)``
            (columns: ``classes_`` if it has them, else codes ``0..K-1``). Default: the linear
            probe over all ``K`` classes with the intercept penalised too, so that a class not
            yet seen in a prefix keeps a finite codelength.
        n_classes: ``K`` (default: the number of distinct labels).
        fractions: block boundaries (:data:`MDL_FRACTIONS`).
        shuffle: order examples randomly; False keeps the input order.
        seed: order seed.
        config: probe settings (C, tol, missing labels).

    Returns:
        :class:`MDLCode`.
    """
    cfg = config or ProbeConfig()
    codes, classes, keep = encode_labels(
        y, missing_label=cfg.missing_label, drop_missing=cfg.drop_missing
    )
    K = int(n_classes) if n_classes is not None else classes.size
    g = np.arange(codes.size) if groups is None else np.asarray(groups)[keep]
    order, ex_ends = _mdl_order(g, seed, shuffle)
    ends = _block_ends(codes.size, fractions, ex_ends)
    bits = _mdl_bits(
        [np.asarray(X)[keep]], codes[None], order, ends, K, cfg, predictor_factory, "mdl"
    )[0, 0]
    total, uniform = float(bits.sum()), codes.size * math.log2(K)
    return MDLCode(total, uniform, uniform / total, int(codes.size), K, ends, bits)


@tallied
def mdl_probe(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    types: Any = None,
    control: bool = True,
    fractions: Sequence[float] = MDL_FRACTIONS,
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """MDL probing (online code) per layer for the task and, by default, its control task.

    Args:
        control: also code control labels (:func:`control_labels`, per ``types`` or example).
        fractions: block boundaries (:data:`MDL_FRACTIONS`).
        Others as :func:`selectivity`.

    Returns:
        metric ``compression`` (``N·log₂K / L``); records ``model, layer, labels`` (``task`` or
        ``control``) with ``codelength_bits`` and ``uniform_bits``; the interval resamples
        examples of the per-row codelengths.
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    keep = y >= 0
    n, K = int(keep.sum()), len(classes)
    names = ["task", "control"] if control else ["task"]
    bits = {m: np.zeros((len(ids), len(names), len(cfg.seeds), n)) for m in models}
    for si, s in enumerate(cfg.seeds):
        Y = [y[keep]]
        if control:
            Y.append(_control_codes(labels, types, g, s, cfg, classes, y)[keep])
        order, ex_ends = _mdl_order(g[keep], s, True)
        ends = _block_ends(n, fractions, ex_ends)
        planned = {}
        for m, st in models.items():
            sub = st if keep.all() else _KeptRows(st, keep)
            planned[m] = _mdl_jobs(sub, np.stack(Y), order, ends, K, cfg, task)
        # every model's layer groups in one pool: no core waits at a model's end
        run_jobs(job for _, jobs in planned.values() for job in jobs)
        for m, (b, _) in planned.items():
            bits[m][:, :, si] = b
    tab = _Table(g[keep], cfg)
    for m in models:
        for li, i in enumerate(ids):
            for p, nm in enumerate(names):
                b = bits[m][li, p]
                tab.add(
                    np.full(b.shape, math.log2(K)),
                    b,
                    model=m,
                    layer=i,
                    labels=nm,
                    extra={
                        "codelength_bits": float(b.sum(1).mean()),
                        "uniform_bits": n * math.log2(K),
                    },
                )
    extra = {
        "fractions": list(fractions),
        "probe": "linear, intercept penalised",
        "control": ("word type" if types is not None else "example") if control else None,
    }
    res = _result(f"{task}_mdl", cfg, extra, {"n_rows": n, "classes": [str(c) for c in classes]})
    res.metric = "compression"
    return tab.into(res)
