"""Shared machinery of the probing methods: settings, the example bootstrap, and the batched
fitting engine (labels and splits are in :mod:`~transferlens.analysis.probe_labels`).

The public methods live in :mod:`~transferlens.analysis.probe_methods` (accuracy, selectivity,
and the re-exported MDL and transfer methods); see its docstring for the conventions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

from transferlens.analysis.probe_fits import note_fits
from transferlens.analysis.probe_labels import control_labels, group_folds
from transferlens.analysis.probing import PreparedLayers, _as_stack, encode_labels, fit_logistic
from transferlens.analysis.stats import Units, percentile_interval, seed_summary, unit_draws
from transferlens.analysis.workers import layer_groups, run_jobs, workers
from transferlens.results import AnalysisResult

logger = logging.getLogger(__name__)

__all__ = ["MDL_FRACTIONS", "ProbeConfig"]

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
    if probe is not None:
        (P, n), L = Y.shape, len(train)
        outs = [np.full((L, P, len(a)), -1, np.int64) for _, a in targets]
        per = _MEM // (n * int(train[0].shape[1]) * 8 * (1 + len(targets)))
        for ch in layer_groups(L, max(1, per)):
            _predict_sklearn(train, Y, masks, targets, outs, ch, probe)
        return outs
    outs, jobs = _predict_jobs(train, Y, masks, K, targets, cfg, name)
    run_jobs(jobs)
    return outs


def _predict_jobs(
    train: Any,
    Y: np.ndarray,
    masks: np.ndarray,
    K: int,
    targets: Sequence[tuple[Any, np.ndarray]],
    cfg: ProbeConfig,
    name: str,
) -> tuple[list[np.ndarray], list[Callable[[], None]]]:
    """:func:`_predict` with the linear probe, as jobs (one per layer group) that fill the
    returned arrays when run, so that the jobs of several models share the worker threads."""
    (P, n), F, L = Y.shape, masks.shape[0], len(train)
    outs = [np.full((L, P, len(a)), -1, np.int64) for _, a in targets]
    per = _MEM // (n * int(train[0].shape[1]) * 8 * (1 + len(targets)))

    def one(ch: range) -> None:
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
        note_fits(fit.converged)
        for t, (tstack, assign) in enumerate(targets):
            tp = (
                prep
                if tstack is train
                else PreparedLayers([tstack[i] for i in ch], name=name, layers=ch)
            )
            a = np.asarray(assign, np.int64)
            for f in range(F):  # each row by the fits of its own fold only
                rows = np.flatnonzero(a == f)
                if rows.size == 0:
                    continue
                sub = fit.select(slice(f, P * F, F))  # problems (p, f) for every label row p
                for j, li in enumerate(ch):
                    lp = sub.log_proba(tp.layer(j).rows(rows), layers=[j])[0]
                    outs[t][li][:, rows] = lp.argmax(-1).numpy()

    # layer groups run side by side; the memory bound holds for all groups in flight together
    return outs, [partial(one, ch) for ch in layer_groups(L, max(1, per // workers()))]


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
        if probe is not None:
            preds = {
                m: _predict(st, Y, masks, K, [(st, folds)], cfg, probe, name)[0]
                for m, st in models.items()
            }
        else:  # every model's layer groups in one pool: no core waits at a model's end
            planned = {
                m: _predict_jobs(st, Y, masks, K, [(st, folds)], cfg, name)
                for m, st in models.items()
            }
            run_jobs(job for _, jobs in planned.values() for job in jobs)
            preds = {m: outs[0] for m, (outs, _) in planned.items()}
        for m, pred in preds.items():
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


def _control_codes(
    labels: Any, types: Any, groups: np.ndarray, seed: int, cfg: ProbeConfig, classes, y
) -> np.ndarray:
    """The control task for ``seed`` (one label per word type, else per example) as the
    task's class codes (-1 where ``y`` is)."""
    ctl = control_labels(
        labels,
        types=types,
        examples=None if types is not None else groups,
        seed=seed,
        missing_label=cfg.missing_label,
    )
    return _as_codes(ctl, classes, y)


def _result(
    name: str, cfg: ProbeConfig, extra_cfg: dict[str, Any], data: dict[str, Any]
) -> AnalysisResult:
    return AnalysisResult(
        "probe", name, "accuracy", config={**cfg.to_dict(), **extra_cfg}, data=data
    )
