"""Uncertainty for every number that goes into a figure.

* :func:`bootstrap_ci` — percentile bootstrap interval of any statistic, resampling *units*:
  rows by default, or whole groups (paragraphs, sentences, documents) when ``groups`` gives one
  id per row. Tokens of one paragraph are not independent, so resample paragraphs, never
  tokens individually.
* :func:`paired_bootstrap` — the difference of a statistic between two models measured on the
  same units, with the same resample indices for both.
* :func:`permutation_test` — a null distribution for a similarity of ``X`` and ``Y`` by
  permuting the rows of ``Y`` (p-value with the +1 correction).
* :func:`seed_summary` — mean/std/min/max over a handful of probe seeds.

Everything is deterministic given ``seed`` (a :class:`numpy.random.Generator`). The resampling
scheme (:func:`unit_draws`, :func:`permutation_draws`) is shared with
:mod:`transferlens.analysis.cka_stats`, whose fast CKA versions give the same numbers as these
generic functions for the same seed (for debiased CKA with one row per unit, the bootstrap
there by default excludes pairs of copies instead: see its docs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "BootstrapResult",
    "PairedBootstrapResult",
    "PermutationResult",
    "SeedSummary",
    "Units",
    "bootstrap_ci",
    "finish_bootstrap",
    "paired_bootstrap",
    "percentile_interval",
    "permutation_draws",
    "permutation_test",
    "seed_summary",
    "summarize_null",
    "unit_draws",
]


@dataclass
class BootstrapResult:
    """A statistic on the full data with its percentile bootstrap interval.

    Attributes:
        value: the statistic on the full (not resampled) data.
        ci_low: lower end of the interval.
        ci_high: upper end of the interval.
        level: coverage of the interval (0.95).
        n_units: number of resampled units (groups, or rows without groups).
        n_boot: number of bootstrap resamples.
        bias: mean of the resampled statistics minus ``value`` (the bootstrap estimate of
            the statistic's bias; large values mean the interval is shifted, see the docs).
        distribution: the ``n_boot`` resampled statistics, if kept.
    """

    value: float
    ci_low: float
    ci_high: float
    level: float
    n_units: int
    n_boot: int
    bias: float = math.nan
    distribution: np.ndarray | None = field(default=None, repr=False)

    @property
    def ci(self) -> tuple[float, float]:
        """``(ci_low, ci_high)``."""
        return (self.ci_low, self.ci_high)

    def record(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`transferlens.results.AnalysisResult.add`."""
        return {"value": self.value, "ci": self.ci, "n": self.n_units}


@dataclass
class PairedBootstrapResult(BootstrapResult):
    """Bootstrap of ``stat(a) - stat(b)``; ``value_a``/``value_b`` are the two full-data values."""

    value_a: float = math.nan
    value_b: float = math.nan


@dataclass
class PermutationResult:
    """Observed statistic against its permutation null distribution.

    Attributes:
        value: the statistic on the data as paired.
        p_value: ``(1 + #{null >= value}) / (1 + n_perm)`` (``<=`` for ``alternative="less"``).
        null_mean: mean of the null distribution (the chance level of the statistic).
        null_std: standard deviation of the null distribution.
        null_quantile: the ``level`` quantile of the null (``1 - level`` for "less").
        level: quantile level.
        n_perm: number of permutations.
        null: the null distribution, if kept.
    """

    value: float
    p_value: float
    null_mean: float
    null_std: float
    null_quantile: float
    level: float
    n_perm: int
    null: np.ndarray | None = field(default=None, repr=False)


@dataclass
class SeedSummary:
    """Spread of one number over several seeds (``std`` uses ``ddof=1``; NaN for one seed)."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def record(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`~transferlens.results.AnalysisResult.add` (min–max)."""
        return {"value": self.mean, "ci": (self.min, self.max), "n": self.n}


class Units:
    """Which rows belong to which resampling unit.

    Units are numbered ``0..G-1`` in sorted order of the group labels (rows themselves when
    ``groups`` is ``None``).

    Args:
        n: number of rows.
        groups: one hashable label per row, or ``None`` (each row is its own unit).
    """

    def __init__(self, n: int, groups: Sequence[Hashable] | np.ndarray | None = None) -> None:
        self.n = int(n)
        if groups is None:
            self.ids = np.arange(self.n)
            self.count = self.n
            self._order = self.ids
            self._starts = np.arange(self.n + 1)
        else:
            g = np.asarray(groups)
            if g.ndim != 1 or g.shape[0] != self.n:
                raise ValueError(
                    f"groups must hold one label per row: {self.n} labels; got shape {g.shape}"
                )
            _, self.ids = np.unique(g, return_inverse=True)
            self.ids = self.ids.reshape(-1)
            self.count = int(self.ids.max()) + 1 if self.n else 0
            self._order = np.argsort(self.ids, kind="stable")
            sizes = np.bincount(self.ids, minlength=self.count)
            self._starts = np.concatenate([[0], np.cumsum(sizes)])
        if self.count < 2:
            raise ValueError(
                f"the bootstrap needs at least 2 units to resample; got {self.count} "
                "(pass groups with several distinct ids, or more rows)"
            )
        if self.count < 20:
            logger.warning(
                "bootstrap over only %d units: percentile intervals will be too "
                "narrow; use more units if you can",
                self.count,
            )

    def rows(self, chosen: np.ndarray) -> np.ndarray:
        """Row indices of the chosen units, concatenated in the order drawn."""
        if self._order is self.ids:
            return chosen
        s, e = self._starts[chosen], self._starts[chosen + 1]
        lengths = e - s
        offsets = np.repeat(s - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return self._order[np.arange(int(lengths.sum())) + offsets]

    def weights(self, chosen: np.ndarray) -> np.ndarray:
        """Per-row multiplicity (float64, length ``n``) of a resample of units."""
        return np.bincount(chosen, minlength=self.count).astype(np.float64)[self.ids]


def unit_draws(n_units: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap draws: ``n_boot`` arrays of ``n_units`` unit ids drawn with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n_units, size=n_units)


def permutation_draws(n: int, n_perm: int, seed: int) -> Iterator[np.ndarray]:
    """The permutations used by :func:`permutation_test`: ``n_perm`` row orders."""
    rng = np.random.default_rng(seed)
    for _ in range(n_perm):
        yield rng.permutation(n)


def percentile_interval(distribution: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Equal-tailed percentile interval ``(q_{(1-level)/2}, q_{(1+level)/2})``."""
    _check_level(level)
    d = np.asarray(distribution, dtype=np.float64)
    bad = int((~np.isfinite(d)).sum())
    if bad:
        raise ValueError(
            f"{bad} of {d.size} resampled statistics are NaN/inf (the statistic is undefined on "
            "some resamples, e.g. all rows from one unit); use more units or a statistic that "
            "is defined on every resample"
        )
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def finish_bootstrap(
    value: float, dist: np.ndarray, *, level: float, n_units: int, keep_distribution: bool
) -> BootstrapResult:
    """Percentile interval and bias of a bootstrap distribution, as a :class:`BootstrapResult`.

    Logs a warning when the full-data value falls outside its own interval: the resampled
    statistic is then biased (for CKA: duplicated units act like fewer examples, which raises
    CKA), and the interval should be read with that in mind.
    """
    lo, hi = percentile_interval(dist, level)
    bias = float(np.mean(dist) - value)
    if not lo <= value <= hi:
        logger.warning(
            "the full-data value %.4g lies outside its %.0f%% bootstrap interval [%.4g, %.4g] "
            "(bootstrap bias %+.3g, %d units): the resampled statistic is biased; use more "
            "units or a less biased statistic (e.g. debiased CKA)",
            value,
            100 * level,
            lo,
            hi,
            bias,
            n_units,
        )
    return BootstrapResult(
        float(value),
        lo,
        hi,
        level,
        n_units,
        int(dist.size),
        bias,
        dist if keep_distribution else None,
    )


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level}")


def _check_count(what: str, k: int) -> None:
    if int(k) < 1:
        raise ValueError(f"{what} must be at least 1; got {k}")


def _n_rows(arrays: Sequence[Any]) -> int:
    if not arrays:
        raise ValueError("pass at least one array to resample")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(
                f"array {i} has {len(a)} rows but array 0 has {n}; every array is resampled by "
                "the same row indices, so all need the same number of rows"
            )
    return n


def _take(a: Any, rows: np.ndarray) -> Any:
    if isinstance(a, torch.Tensor):
        return a[torch.from_numpy(rows).to(a.device)]
    if isinstance(a, np.ndarray):
        return a[rows]
    return np.asarray(a)[rows]


def bootstrap_ci(
    stat_fn: Callable[..., float],
    *arrays: Any,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    keep_distribution: bool = False,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``stat_fn(*arrays)``, resampling units.

    Each resample draws ``G`` units with replacement (``G`` = number of groups, or of rows
    without ``groups``) and passes the rows of the drawn units, whole, to ``stat_fn``.

    Args:
        stat_fn: statistic of the arrays (first axis = rows), returning a number.
        *arrays: arrays/tensors with the same number of rows, resampled together.
        groups: one unit id per row (e.g. paragraph ids); ``None``: rows are the units.
        n_boot: number of resamples.
        level: interval coverage.
        seed: seed of the numpy Generator (same seed, same interval).
        keep_distribution: keep the resampled statistics in the result.

    Returns:
        :class:`BootstrapResult` (``value`` is ``stat_fn`` on the full data).

    Example:
        >>> bootstrap_ci(lambda x, y: linear_cka(x, y), X, Y, groups=paragraph_ids)
    """
    _check_level(level)
    _check_count("n_boot", n_boot)
    units = Units(_n_rows(arrays), groups)
    value = float(stat_fn(*arrays))
    dist = np.empty(n_boot)
    for b, chosen in enumerate(unit_draws(units.count, n_boot, seed)):
        rows = units.rows(chosen)
        dist[b] = float(stat_fn(*(_take(a, rows) for a in arrays)))
    return finish_bootstrap(
        value, dist, level=level, n_units=units.count, keep_distribution=keep_distribution
    )


def paired_bootstrap(
    stat_fn: Callable[..., float],
    a: Sequence[Any],
    b: Sequence[Any],
    *,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    keep_distribution: bool = False,
) -> PairedBootstrapResult:
    """Bootstrap interval of ``stat_fn(*a) - stat_fn(*b)`` with shared resample indices.

    ``a`` and ``b`` hold the same units in the same row order (e.g. per-example correctness of
    the base and the adapted model on the same test set); each resample takes the same rows
    from both, so unit-level noise common to both models cancels. Identical inputs give a
    difference interval of exactly ``[0, 0]``.

    Args:
        stat_fn: statistic, called as ``stat_fn(*a_rows)`` and ``stat_fn(*b_rows)``.
        a: arrays for model A (a tuple, even for one array).
        b: arrays for model B, same number of rows as ``a``.
        groups: one unit id per row, or ``None``.
        n_boot: number of resamples.
        level: interval coverage.
        seed: seed of the numpy Generator.
        keep_distribution: keep the resampled differences.

    Returns:
        :class:`PairedBootstrapResult`; ``value`` is the full-data difference.
    """
    _check_level(level)
    _check_count("n_boot", n_boot)
    a, b = tuple(a), tuple(b)
    n = _n_rows(a + b)
    units = Units(n, groups)
    va, vb = float(stat_fn(*a)), float(stat_fn(*b))
    dist = np.empty(n_boot)
    for k, chosen in enumerate(unit_draws(units.count, n_boot, seed)):
        rows = units.rows(chosen)
        dist[k] = float(stat_fn(*(_take(x, rows) for x in a))) - float(
            stat_fn(*(_take(x, rows) for x in b))
        )
    lo, hi = percentile_interval(dist, level)
    return PairedBootstrapResult(
        value=va - vb,
        ci_low=lo,
        ci_high=hi,
        level=level,
        n_units=units.count,
        n_boot=n_boot,
        bias=float(dist.mean() - (va - vb)),
        distribution=dist if keep_distribution else None,
        value_a=va,
        value_b=vb,
    )


def summarize_null(
    value: float,
    null: np.ndarray,
    *,
    level: float,
    alternative: Literal["greater", "less"],
    keep_null: bool,
) -> PermutationResult:
    """Build a :class:`PermutationResult` from an observed value and its null distribution."""
    null = np.asarray(null, dtype=np.float64)
    bad = int((~np.isfinite(null)).sum())
    if bad:
        raise ValueError(f"{bad} of {null.size} permuted statistics are NaN/inf")
    if alternative == "greater":
        extreme, q = int((null >= value).sum()), level
    elif alternative == "less":
        extreme, q = int((null <= value).sum()), 1.0 - level
    else:
        raise ValueError(f"alternative must be 'greater' or 'less'; got {alternative!r}")
    return PermutationResult(
        value=float(value),
        p_value=(1.0 + extreme) / (1.0 + null.size),
        null_mean=float(null.mean()),
        null_std=float(null.std(ddof=1)) if null.size > 1 else math.nan,
        null_quantile=float(np.quantile(null, q)),
        level=level,
        n_perm=int(null.size),
        null=null if keep_null else None,
    )


def permutation_test(
    stat_fn: Callable[[Any, Any], float],
    X: Any,
    Y: Any,
    *,
    n_perm: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    alternative: Literal["greater", "less"] = "greater",
    keep_null: bool = False,
) -> PermutationResult:
    """Permutation baseline for a similarity ``stat_fn(X, Y)``: permute the rows of ``Y``.

    Breaking the row pairing gives the distribution of the statistic when X and Y are
    unrelated: ``null_mean`` is the statistic's chance level (biased CKA is far from 0 there
    when ``p`` is large relative to ``n``), and ``p_value = (1 + #{null >= value}) / (1 +
    n_perm)`` never reaches 0.

    Args:
        stat_fn: similarity of two row-aligned arrays.
        X: ``n × p1`` array.
        Y: ``n × p2`` array (rows permuted).
        n_perm: number of permutations.
        seed: seed of the numpy Generator.
        level: quantile of the null to report (0.95: what chance rarely exceeds).
        alternative: ``"greater"`` (similarity above chance) or ``"less"``.
        keep_null: keep the null distribution in the result.

    Returns:
        :class:`PermutationResult`.
    """
    _check_level(level)
    _check_count("n_perm", n_perm)
    n = _n_rows((X, Y))
    value = float(stat_fn(X, Y))
    null = np.array(
        [float(stat_fn(X, _take(Y, perm))) for perm in permutation_draws(n, n_perm, seed)]
    )
    return summarize_null(value, null, level=level, alternative=alternative, keep_null=keep_null)


def seed_summary(values: Sequence[float] | np.ndarray) -> SeedSummary:
    """Mean, standard deviation (``ddof=1``), min, max and count over seeds.

    Args:
        values: one number per seed (e.g. probe accuracy for seeds 0..4).

    Returns:
        :class:`SeedSummary`.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("seed_summary needs at least one value")
    bad = int((~np.isfinite(v)).sum())
    if bad:
        raise ValueError(f"{bad} of {v.size} values are NaN/inf; fix the failed runs first")
    return SeedSummary(
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if v.size > 1 else math.nan,
        min=float(v.min()),
        max=float(v.max()),
        n=int(v.size),
    )
