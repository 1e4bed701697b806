"""Probing methodology: cross-validation by example, control tasks, MDL, baselines, transfer.

Every function returns an :class:`~transferlens.results.AnalysisResult` whose records carry a
percentile-bootstrap interval over *examples*: ``groups`` gives one example (paragraph,
sentence) id per row; tokens of one example are never split between training and test folds
and are resampled together. With several ``seeds`` (fold assignment, control labels, MDL
order, random splits) a record's value is the mean over seeds, ``seed_std`` their standard
deviation, and the interval is the bootstrap of the seed-averaged statistic.

References: Hewitt & Liang 2019 (control tasks, selectivity); Voita & Titov 2020 (MDL, online
code); Kunz & Kuhlmann 2020 (linear context), 2021 (extrapolation splits).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from transferlens.analysis.probing import PreparedLayers, _as_stack, encode_labels, fit_logistic
from transferlens.analysis.stats import Units, percentile_interval, seed_summary, unit_draws
from transferlens.results import AnalysisResult

logger = logging.getLogger(__name__)

__all__ = [
    "MDL_FRACTIONS",
    "MDLCode",
    "ProbeConfig",
    "base_to_adapted_transfer",
    "context_labels",
    "control_labels",
    "cross_lingual_transfer",
    "extrapolation_probe",
    "extrapolation_split",
    "group_folds",
    "linear_context_baseline",
    "mdl_codelength",
    "mdl_probe",
    "probe_accuracy",
    "selectivity",
]

#: Online-code block boundaries as fractions of the data (Voita & Titov 2020).
MDL_FRACTIONS: tuple[float, ...] = (
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0
)  # fmt: skip
_MEM = 512 * 2**20  # float64 bytes of activations held at once


@dataclass
class ProbeConfig:
    """Settings shared by the probing methods (saved in each result's ``config``).

    Attributes:
        n_folds: folds of the example-grouped cross-validation.
        seeds: seeds of the fold assignment, control labels, MDL order and random splits.
        C: inverse L2 strength of the linear probe (scikit-learn's convention).
        tol: L-BFGS stopping tolerance (max |gradient| of the mean-loss objective).
        max_iter: L-BFGS iterations.
        n_boot: bootstrap resamples over examples.
        level: interval coverage.
        boot_seed: seed of the bootstrap draws.
        missing_label: a label value meaning "no label" besides None/NaN (e.g. -1).
        drop_missing: leave rows without a label out instead of raising ``ValueError``.
    """

    n_folds: int = 5
    seeds: tuple[int, ...] = (0,)
    C: float = 1.0
    tol: float = 1e-6
    max_iter: int = 1000
    n_boot: int = 1000
    level: float = 0.95
    boot_seed: int = 0
    missing_label: Any = None
    drop_missing: bool = False

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("ProbeConfig.seeds needs at least one seed")
        if self.n_folds < 2:
            raise ValueError(f"ProbeConfig.n_folds must be at least 2, got {self.n_folds}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------- labels and splits


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


# --------------------------------------------------------------------------- bootstrap


def _boot(
    groups: np.ndarray, num: np.ndarray, den: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seed-averaged ratios ``mean_s Σnum/Σden`` and their bootstrap distributions.

    ``num``/``den``: ``(Q, S, n)``. Units (``groups``) are drawn as in
    :func:`transferlens.analysis.stats.bootstrap_ci` (same seed, same draws); a ratio of sums
    is linear in the unit multiplicities, so all ``Q`` statistics share one pass.

    Returns:
        ``values (Q,)`` and ``dists (n_boot, Q)``.
    """
    Q, S, n = num.shape
    units = Units(n, groups)
    un = np.stack([np.bincount(units.ids, v, units.count) for v in num.reshape(-1, n)])
    ud = np.stack([np.bincount(units.ids, v, units.count) for v in den.reshape(-1, n)])
    draws = unit_draws(units.count, n_boot, seed)
    dists = np.empty((n_boot, Q))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (un.sum(1) / ud.sum(1)).reshape(Q, S).mean(1)
        for start in range(0, n_boot, 100):
            cnt = np.stack(
                [
                    np.bincount(next(draws), minlength=units.count)
                    for _ in range(min(100, n_boot - start))
                ]
            ).astype(np.float64)
            dists[start : start + len(cnt)] = (
                ((cnt @ un.T) / (cnt @ ud.T)).reshape(-1, Q, S).mean(2)
            )
    return values, dists


def _interval(dist: np.ndarray, level: float) -> tuple[float, float]:
    ok = dist[np.isfinite(dist)]
    return percentile_interval(ok, level) if ok.size else (math.nan, math.nan)


@dataclass
class _Table:
    """Per-row scores ``(S, n)`` of each statistic, turned into records with intervals."""

    groups: np.ndarray
    cfg: ProbeConfig
    keys: list[dict[str, Any]] = field(default_factory=list)
    num: list[np.ndarray] = field(default_factory=list)
    den: list[np.ndarray] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    diffs: list[tuple[dict[str, Any], int, int]] = field(default_factory=list)

    def add(self, num: Any, den: Any, extra: dict[str, Any] | None = None, **coords: Any) -> int:
        self.keys.append(coords)
        self.num.append(np.asarray(num, np.float64))
        self.den.append(np.broadcast_to(np.asarray(den, np.float64), np.shape(num)))
        self.extra.append(extra or {})
        return len(self.keys) - 1

    def diff(self, a: int, b: int, **coords: Any) -> None:
        """A record for statistic ``a`` minus statistic ``b`` (paired interval)."""
        self.diffs.append((coords, a, b))

    def into(self, res: AnalysisResult) -> AnalysisResult:
        values, dists = _boot(
            self.groups, np.stack(self.num), np.stack(self.den), self.cfg.n_boot, self.cfg.boot_seed
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = [nu.sum(1) / de.sum(1) for nu, de in zip(self.num, self.den, strict=True)]
        ids = Units(len(self.groups), self.groups).ids

        def counts(q: int) -> dict[str, int]:
            rows = self.den[q][0] > 0
            return {"n": int(rows.sum()), "n_groups": int(np.unique(ids[rows]).size)}

        for q, coords in enumerate(self.keys):
            rec = res.add(
                values[q],
                ci=_interval(dists[:, q], self.cfg.level),
                **coords,
                seed_std=seed_summary(per_seed[q]).std,
                n_seeds=len(per_seed[q]),
            )
            rec.update(counts(q), **self.extra[q])
        for coords, a, b in self.diffs:
            rec = res.add(
                values[a] - values[b],
                ci=_interval(dists[:, a] - dists[:, b], self.cfg.level),
                **coords,
                seed_std=seed_summary(per_seed[a] - per_seed[b]).std,
                n_seeds=len(per_seed[a]),
            )
            rec.update(counts(a))
        return res


# --------------------------------------------------------------------------- fitting engine


def _stacks(acts: Any) -> dict[str, Any]:
    """``{"model": stack}`` or the given mapping, each a stack of ``L`` layers ``(n, d)``."""
    d = dict(acts) if isinstance(acts, Mapping) else {"model": acts}
    if not d:
        raise ValueError("no activations given")
    out = {str(k): _as_stack(v) for k, v in d.items()}
    shapes = {k: (len(v), int(v[0].shape[0])) for k, v in out.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all models need the same number of layers and rows; got {shapes}")
    return out


def _predict(
    train: Any,
    Y: np.ndarray,
    masks: np.ndarray,
    K: int,
    targets: Sequence[tuple[Any, np.ndarray]],
    cfg: ProbeConfig,
    probe: Any = None,
    name: str = "probe",
) -> list[np.ndarray]:
    """Fit a probe per (label row ``p``, training mask ``f``) on ``train``; predict each target
    row ``r`` with probe ``(p, assign[r])``.

    Args:
        train: stack of ``L`` layers ``(n, d)``. Y: ``(P, n)`` codes, -1 = no label.
        masks: ``(F, n)`` training rows. targets: ``(stack, assign)``, ``assign = -1``: skip.
        probe: a scikit-learn classifier to clone instead of the batched linear probe.

    Returns:
        per target, ``(L, P, n_t)`` predicted codes (-1 where not predicted).
    """
    (P, n), F, L = Y.shape, masks.shape[0], len(train)
    outs = [np.full((L, P, len(a)), -1, np.int64) for _, a in targets]
    step = max(1, min(L, _MEM // (n * int(train[0].shape[1]) * 8 * (1 + len(targets)))))
    for ch in (range(s, min(L, s + step)) for s in range(0, L, step)):
        if probe is not None:
            _predict_sklearn(train, Y, masks, targets, outs, ch, probe)
            continue
        prep = PreparedLayers([train[i] for i in ch], name=name, layers=ch)
        tm = np.stack([(Y[p] >= 0) & masks[f] for p in range(P) for f in range(F)])
        fit = fit_logistic(
            prep,
            np.repeat(Y, F, axis=0).clip(min=0),
            train_mask=tm,
            n_classes=K,
            C=cfg.C,
            tol=cfg.tol,
            max_iter=cfg.max_iter,
            name=name,
        )
        for t, (tstack, assign) in enumerate(targets):
            tp = (
                prep
                if tstack is train
                else PreparedLayers([tstack[i] for i in ch], name=name, layers=ch)
            )
            a = np.asarray(assign, np.int64)
            idx = torch.as_tensor(a.clip(min=0)).expand(P, 1, -1)
            for j, li in enumerate(ch):
                pred = fit.log_proba(tp.layer(j), layers=[j])[0].argmax(-1).view(P, F, -1)
                outs[t][li] = np.where(a[None] >= 0, pred.gather(1, idx)[:, 0].numpy(), -1)
    return outs


def _predict_sklearn(
    train: Any,
    Y: np.ndarray,
    masks: np.ndarray,
    targets: Sequence[tuple[Any, np.ndarray]],
    outs: list[np.ndarray],
    ch: range,
    probe: Any,
) -> None:
    from sklearn.base import clone

    for li in ch:
        X = np.asarray(train[li], np.float64)
        for p in range(Y.shape[0]):
            for f in range(masks.shape[0]):
                rows = masks[f] & (Y[p] >= 0)
                est = clone(probe).fit(X[rows], Y[p][rows])
                for t, (tstack, assign) in enumerate(targets):
                    sel = np.asarray(assign) == f
                    if sel.any():
                        outs[t][li, p, sel] = est.predict(np.asarray(tstack[li], np.float64)[sel])


def _cv(
    models: Mapping[str, Any],
    Y: np.ndarray,
    g: np.ndarray,
    K: int,
    cfg: ProbeConfig,
    seeds: Sequence[int],
    probe: Any = None,
    name: str = "probe",
) -> dict[str, np.ndarray]:
    """Out-of-fold correctness ``(L, P, S, n)`` per model; folds by example, one draw per seed."""
    L, n = len(next(iter(models.values()))), Y.shape[1]
    out = {m: np.zeros((L, Y.shape[0], len(seeds), n)) for m in models}
    for si, s in enumerate(seeds):
        folds = group_folds(g, cfg.n_folds, seed=s)
        masks = np.stack([folds != f for f in range(cfg.n_folds)])
        for m, st in models.items():
            pred = _predict(st, Y, masks, K, [(st, folds)], cfg, probe, name)[0]
            out[m][:, :, si] = (pred == Y[None]) & (Y[None] >= 0)
    return out


def _setup(acts: Any, labels: Any, groups: Any, cfg: ProbeConfig | None, layer_ids: Any, task: str):
    """Common input handling: stacks, label codes (-1 = missing), groups, layer ids."""
    cfg = cfg or ProbeConfig()
    models = _stacks(acts)
    codes, classes, keep = encode_labels(
        labels, missing_label=cfg.missing_label, drop_missing=cfg.drop_missing, name=task
    )
    y = np.full(keep.size, -1, np.int64)
    y[keep] = codes
    L, n = len(next(iter(models.values()))), y.size
    if int(next(iter(models.values()))[0].shape[0]) != n:
        raise ValueError(
            f"{task}: {n} labels for {int(next(iter(models.values()))[0].shape[0])} rows"
        )
    g = np.arange(n) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"{task}: groups need one example id per row ({n}); got shape {g.shape}")
    ids = list(range(L)) if layer_ids is None else list(layer_ids)
    if len(ids) != L:
        raise ValueError(f"layer_ids has {len(ids)} entries for {L} layers")
    return cfg, models, y, classes, g, ids


def _as_codes(values: Any, classes: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Label values (e.g. control labels) as the task's class codes; -1 where ``like`` is."""
    out = np.full(like.shape, -1, np.int64)
    ok = like >= 0
    out[ok] = np.searchsorted(classes, np.asarray(values)[ok].astype(classes.dtype))
    return out


def _result(
    name: str, cfg: ProbeConfig, extra_cfg: dict[str, Any], data: dict[str, Any]
) -> AnalysisResult:
    return AnalysisResult(
        "probe", name, "accuracy", config={**cfg.to_dict(), **extra_cfg}, data=data
    )


# --------------------------------------------------------------------------- accuracy


def probe_accuracy(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    config: ProbeConfig | None = None,
    probe: Any = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Cross-validated probe accuracy per layer, for one model or several on the same rows.

    Args:
        acts: ``(L, n, d)`` stack (array, tensor, memmap, list of ``(n, d)``), or a mapping
            ``{"base": stack, "adapted": stack}`` of stacks on the same rows.
        labels: ``(n,)`` labels.
        groups: ``(n,)`` example ids (default: each row is its own example).
        config: :class:`ProbeConfig`.
        probe: a scikit-learn classifier to clone per fold instead of the linear probe.
        layer_ids: layer numbers for the records (default ``0..L-1``).
        task: the task's name (result name ``{task}_accuracy``).

    Returns:
        metric ``accuracy``; records ``model, layer, quantity="accuracy"``, and for two models
        ``quantity="difference"`` (second − first, paired over the same rows and folds).
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    sc = _cv(models, y[None], g, len(classes), cfg, cfg.seeds, probe, task)
    tab = _Table(g, cfg)
    den = (y >= 0).astype(np.float64)
    q = {
        m: [
            tab.add(sc[m][li, 0], den, model=m, layer=i, quantity="accuracy")
            for li, i in enumerate(ids)
        ]
        for m in models
    }
    if len(models) == 2:
        a, b = list(models)
        for li, i in enumerate(ids):
            tab.diff(q[b][li], q[a][li], model=f"{b}-{a}", layer=i, quantity="difference")
    majority = float(np.bincount(y[y >= 0]).max() / (y >= 0).sum())
    data = {
        "n_rows": int((y >= 0).sum()),
        "classes": [str(c) for c in classes],
        "majority_accuracy": majority,
    }
    return tab.into(
        _result(
            f"{task}_accuracy", cfg, {"probe": repr(probe) if probe is not None else "linear"}, data
        )
    )


def selectivity(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    types: Any = None,
    config: ProbeConfig | None = None,
    probe: Any = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Task accuracy, control-task accuracy and selectivity per layer (Hewitt & Liang 2019).

    For each seed a control task is drawn by :func:`control_labels`, one label per word type
    (``types`` given: a word-level task) or per example (``groups``: an example-level task),
    and probed with the same probe, hyperparameters, rows and folds as the task.

    Args:
        types: ``(n,)`` word type of each row (word-level tasks).
        Others as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``model, layer, quantity`` with quantity
        ``task_accuracy``, ``control_accuracy`` or ``selectivity`` (their paired difference).
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    sc = {m: np.zeros((len(ids), 2, len(cfg.seeds), y.size)) for m in models}
    for si, s in enumerate(cfg.seeds):
        ctl = control_labels(
            labels,
            types=types,
            examples=None if types is not None else g,
            seed=s,
            missing_label=cfg.missing_label,
        )
        Y = np.stack([y, _as_codes(ctl, classes, y)])
        for m, v in _cv(models, Y, g, len(classes), cfg, [s], probe, task).items():
            sc[m][:, :, si] = v[:, :, 0]
    tab = _Table(g, cfg)
    den = (y >= 0).astype(np.float64)
    for m in models:
        for li, i in enumerate(ids):
            a = tab.add(sc[m][li, 0], den, model=m, layer=i, quantity="task_accuracy")
            b = tab.add(sc[m][li, 1], den, model=m, layer=i, quantity="control_accuracy")
            tab.diff(a, b, model=m, layer=i, quantity="selectivity")
    extra = {
        "control": "word type" if types is not None else "example",
        "probe": repr(probe) if probe is not None else "linear",
    }
    data = {"n_rows": int((y >= 0).sum()), "classes": [str(c) for c in classes]}
    return tab.into(_result(f"{task}_selectivity", cfg, extra, data))


# --------------------------------------------------------------------------- MDL


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
    L, (P, n) = len(stack), Y.shape
    bits = np.empty((L, P, n))
    bits[:, :, order[: ends[0]]] = math.log2(K)
    Yo = Y[:, order]
    blocks = list(zip(ends[:-1], ends[1:], strict=True))
    if factory is not None:
        for li in range(L):
            X = np.asarray(stack[li], np.float64)[order]
            for p in range(P):
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
    # the small prefixes share one batched fit (row masks over the largest of them)
    # the small prefixes share one batched fit (row masks over the largest of them)
    cut = 64
    groups = [[(a, b) for a, b in blocks if a <= cut]] + [[blk] for blk in blocks if blk[0] > cut]
    groups = [grp for grp in groups if grp]
    step = max(1, min(L, _MEM // (n * int(stack[0].shape[1]) * 16)))
    for start in range(0, L, step):
        ch = range(start, min(L, start + step))
        perm = PreparedLayers([stack[i] for i in ch], name=name, layers=ch).rows(order)
        for grp in groups:
            top = grp[-1][0]
            masks = np.stack([np.arange(top) < a for a, _ in grp for _ in range(P)])
            fit = fit_logistic(
                perm.rows(np.arange(top)),
                np.tile(Yo[:, :top], (len(grp), 1)),
                train_mask=masks,
                n_classes=K,
                C=cfg.C,
                tol=cfg.tol,
                max_iter=cfg.max_iter,
                penalize_intercept=True,
                all_classes=True,
                name=name,
            )
            for j, (a, b) in enumerate(grp):
                lp = fit.log_proba(perm.rows(np.arange(a, b)))[:, j * P : (j + 1) * P]
                idx = torch.as_tensor(Yo[:, a:b]).expand(len(ch), P, b - a)[..., None]
                bits[start : start + len(ch), :, order[a:b]] = (
                    -lp.gather(3, idx)[..., 0] / math.log(2)
                ).numpy()
    return bits


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
            ctl = control_labels(
                labels,
                types=types,
                examples=None if types is not None else g,
                seed=s,
                missing_label=cfg.missing_label,
            )
            Y.append(_as_codes(ctl, classes, y)[keep])
        order, ex_ends = _mdl_order(g[keep], s, True)
        ends = _block_ends(n, fractions, ex_ends)
        for m, st in models.items():
            sub = st if keep.all() else [np.asarray(st[i])[keep] for i in range(len(ids))]
            bits[m][:, :, si] = _mdl_bits(sub, np.stack(Y), order, ends, K, cfg, None, task)
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


# --------------------------------------------------------------------------- baselines, transfer


def linear_context_baseline(
    acts: Any,
    token_ids: Any,
    groups: Any,
    *,
    offsets: Sequence[int] = (-1, 1),
    top_k: int = 50,
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
) -> AnalysisResult:
    """Probe token vectors for their neighbours' identity (Kunz & Kuhlmann 2020).

    High accuracy means the vectors carry their linear context, so a task probe may succeed
    without structure. Labels: :func:`context_labels` (``top_k`` ids plus "other"); rows whose
    neighbour lies outside the example are left out.

    Args:
        acts: stack or ``{model: stack}`` of token rows, each example's rows contiguous, in order.
        token_ids: ``(n,)`` token id of each row.
        groups: ``(n,)`` example ids.
        offsets: neighbour positions (-1 previous, +1 next).
        top_k: classes kept besides "other".
        config, layer_ids: as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``model, layer, offset, quantity="accuracy"`` and per
        offset one ``quantity="majority"`` record (the most frequent class: chance level).
    """
    y0 = np.zeros(np.asarray(token_ids).size, np.int64)
    y0[0] = 1  # placeholder labels: only the shared input checks run on them
    cfg, models, _, _, g, ids = _setup(acts, y0, groups, config, layer_ids, "context")
    tab = _Table(g, cfg)
    for off in offsets:
        y = context_labels(token_ids, g, offset=off, top_k=top_k)
        den = (y >= 0).astype(np.float64)
        sc = _cv(models, y[None], g, int(y.max()) + 1, cfg, cfg.seeds, name="context")
        for m in models:
            for li, i in enumerate(ids):
                tab.add(sc[m][li, 0], den, model=m, layer=i, offset=off, quantity="accuracy")
        hit = (y == np.bincount(y[y >= 0]).argmax()).astype(np.float64)
        tab.add(
            np.broadcast_to(hit, (len(cfg.seeds), y.size)),
            den,
            model=None,
            layer=None,
            offset=off,
            quantity="majority",
        )
    return tab.into(
        _result(
            "linear_context",
            cfg,
            {"offsets": list(offsets), "top_k": top_k},
            {"n_rows": int(g.size)},
        )
    )


def extrapolation_probe(
    acts: Any,
    labels: Any,
    scores: Any,
    groups: Any = None,
    *,
    train_fraction: float = 0.5,
    easy: str = "low",
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Train on easy rows, test on hard rows, against random splits of the same sizes
    (Kunz & Kuhlmann 2021).

    Args:
        scores: ``(n,)`` difficulty of each row (length, distance, frequency); see
            :func:`extrapolation_split` for ``train_fraction`` and ``easy``.
        Others as :func:`probe_accuracy`; ``config.seeds`` seed the random splits.

    Returns:
        metric ``accuracy``; records ``model, layer, split`` with split ``extrapolation``,
        ``random`` (mean ± std over seeds) or ``gap`` (random − extrapolation), and ``n_train``.
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    lab = y >= 0
    ex = extrapolation_split(scores, train_fraction=train_fraction, easy=easy) & lab
    splits = {
        "extrapolation": [ex],
        "random": [_random_split_like(ex, g, s) & lab for s in cfg.seeds],
    }
    S = len(cfg.seeds)
    tab = _Table(g, cfg)
    for m, st in models.items():
        q = {}
        for sp, trains in splits.items():
            num, den = np.zeros((len(ids), S, y.size)), np.zeros((S, y.size))
            for si, tr in enumerate(trains):
                test = lab & ~tr
                pred = _predict(
                    st,
                    y[None],
                    tr[None],
                    len(classes),
                    [(st, np.where(test, 0, -1))],
                    cfg,
                    name=task,
                )[0][:, 0]
                num[:, si], den[si] = (pred == y) & test, test
            if sp == "extrapolation":  # deterministic: the same split for every seed
                num[:], den[:] = num[:, :1], den[:1]
            q[sp] = [
                tab.add(
                    num[li],
                    den,
                    model=m,
                    layer=i,
                    split=sp,
                    extra={"n_train": int(trains[0].sum())},
                )
                for li, i in enumerate(ids)
            ]
        for li, i in enumerate(ids):
            tab.diff(q["random"][li], q["extrapolation"][li], model=m, layer=i, split="gap")
    extra = {"train_fraction": train_fraction, "easy": easy}
    return tab.into(_result(f"{task}_extrapolation", cfg, extra, {"n_rows": int(lab.sum())}))


def cross_lingual_transfer(
    acts: Mapping[str, Any],
    labels: Mapping[str, Any],
    groups: Mapping[str, Any] | None = None,
    *,
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    model: str = "model",
    task: str = "task",
) -> AnalysisResult:
    """Train on language A, test on language B: the full A×B matrix per layer.

    Folds are drawn over the parallel example ids shared by all languages, so every cell, the
    diagonal included, tests on examples whose translations were not trained on.

    Args:
        acts: ``{language: stack}``; stacks with the same layers (row counts may differ).
        labels: ``{language: (n_lang,) labels}`` from one label set.
        groups: ``{language: (n_lang,) parallel example ids}``; default: row ``i`` of every
            language is example ``i``.
        model: the ``model`` coordinate of the records.
        config, layer_ids, task: as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``model, layer, train_language, test_language``.
    """
    langs = list(acts)
    if set(labels) != set(langs) or (groups is not None and set(groups) != set(langs)):
        raise ValueError(
            f"acts, labels and groups need the same languages; got {langs}, {list(labels)}"
        )
    setups = {
        lg: _setup(
            acts[lg],
            labels[lg],
            None if groups is None else groups[lg],
            config,
            layer_ids,
            f"{task} {lg}",
        )
        for lg in langs
    }
    cfg, ids = setups[langs[0]][0], setups[langs[0]][5]
    classes = np.unique(np.concatenate([s[3] for s in setups.values()]))
    stacks, ys, gs = {}, {}, {}
    for lg, (_, mods, y, cl, g, lids) in setups.items():
        if len(lids) != len(ids):
            raise ValueError("every language needs the same number of layers")
        stacks[lg], gs[lg] = mods["model"], g
        ys[lg] = np.where(y >= 0, np.searchsorted(classes, cl[y.clip(min=0)]), -1)
    bounds = np.cumsum([0] + [ys[lg].size for lg in langs])
    sc = {(a, b): np.zeros((len(ids), len(cfg.seeds), ys[b].size)) for a in langs for b in langs}
    for si, s in enumerate(cfg.seeds):
        f_all = group_folds(np.concatenate([gs[lg] for lg in langs]), cfg.n_folds, seed=s)
        folds = {lg: f_all[bounds[k] : bounds[k + 1]] for k, lg in enumerate(langs)}
        for a in langs:
            masks = np.stack([folds[a] != f for f in range(cfg.n_folds)])
            targets = [(stacks[b], np.where(ys[b] >= 0, folds[b], -1)) for b in langs]
            for b, pred in zip(
                langs,
                _predict(stacks[a], ys[a][None], masks, len(classes), targets, cfg, name=task),
                strict=True,
            ):
                sc[(a, b)][:, si] = (pred[:, 0] == ys[b]) & (ys[b] >= 0)
    data = {
        "languages": langs,
        "classes": [str(c) for c in classes],
        "n_rows": {lg: int((ys[lg] >= 0).sum()) for lg in langs},
    }
    res = _result(f"{task}_cross_lingual", cfg, {}, data)
    for b in langs:
        tab = _Table(gs[b], cfg)
        for li, i in enumerate(ids):
            for a in langs:
                tab.add(
                    sc[(a, b)][li],
                    (ys[b] >= 0).astype(np.float64),
                    model=model,
                    layer=i,
                    train_language=a,
                    test_language=b,
                )
        tab.into(res)
    return res


def base_to_adapted_transfer(
    base: Any,
    adapted: Any,
    labels: Any,
    groups: Any = None,
    *,
    names: tuple[str, str] = ("base", "adapted"),
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Representation drift: train on one model's activations, test on the other's (same rows).

    Each probe is tested on the held-out fold of its own model and of the other model; the
    ``drop`` (own − other, paired over the same test rows) is exactly 0 where the layers are
    identical.

    Args:
        base, adapted: stacks with the same layers and rows.
        names: the two models' names in the records.
        Others as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``train_model, test_model, layer, quantity`` with quantity
        ``accuracy`` or ``drop``.
    """
    cfg, models, y, classes, g, ids = _setup(
        {names[0]: base, names[1]: adapted}, labels, groups, config, layer_ids, task
    )
    sc = {(a, b): np.zeros((len(ids), len(cfg.seeds), y.size)) for a in names for b in names}
    for si, s in enumerate(cfg.seeds):
        folds = group_folds(g, cfg.n_folds, seed=s)
        masks = np.stack([folds != f for f in range(cfg.n_folds)])
        for a in names:
            preds = _predict(
                models[a],
                y[None],
                masks,
                len(classes),
                [(models[b], folds) for b in names],
                cfg,
                name=task,
            )
            for b, pred in zip(names, preds, strict=True):
                sc[(a, b)][:, si] = (pred[:, 0] == y) & (y >= 0)
    tab = _Table(g, cfg)
    den = (y >= 0).astype(np.float64)
    for li, i in enumerate(ids):
        for a, o in (names, names[::-1]):
            own = tab.add(
                sc[(a, a)][li], den, train_model=a, test_model=a, layer=i, quantity="accuracy"
            )
            other = tab.add(
                sc[(a, o)][li], den, train_model=a, test_model=o, layer=i, quantity="accuracy"
            )
            tab.diff(own, other, train_model=a, test_model=o, layer=i, quantity="drop")
    return tab.into(
        _result(
            f"{task}_base_to_adapted", cfg, {"names": list(names)}, {"n_rows": int((y >= 0).sum())}
        )
    )
