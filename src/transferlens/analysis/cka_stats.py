"""Bootstrap intervals and permutation baselines for CKA, without recomputing from scratch.

:func:`cka_permutation_test`, and :func:`cka_bootstrap` with ``ties="keep"``, give the same
numbers as :func:`~transferlens.analysis.stats.permutation_test` /
:func:`~transferlens.analysis.stats.bootstrap_ci` wrapped around
:func:`~transferlens.analysis.similarity.cka` with the same seed (same draws, same statistic,
equal to rounding), but much faster for linear CKA. For debiased linear CKA with one row per
unit, :func:`cka_bootstrap` by default (``ties="exclude"``) scores each resample without
pairing a unit with its own copy (the bootstrap of a U-statistic without ties), which removes
the upward shift duplicated units cause.

Bootstrap (linear). A resample of units is a multiplicity ``w_i`` per row (``N = Σ w_i``);
centring *within the resample* is exact through the weighted formulas, with ``K = XXᵀ``::

    ‖C_xy‖² = wᵀ(K∘L)w − (2/N) Σ_i w_i (Kw)_i (Lw)_i + (wᵀKw)(wᵀLw)/N²

(``C_xy`` the cross-covariance of the resampled, re-centred rows) and likewise for the unbiased
HSIC with the diagonal terms removed (``ties="keep"``). Without ties, the unbiased HSIC is
averaged over 4-tuples of distinct original rows weighted by their multiplicities; expanding
the sums gives the same ingredients with ``w``, ``w²``, ``w³`` in place of ``w`` (see
:func:`_hsic_ties_excluded`). ``Kw = X(Xᵀw)`` costs ``O(n·p)`` per resample. The
quadratic form ``wᵀ(K∘L)w`` is either aggregated once over units into a ``G × G`` matrix
(``method="units"``, cost ``O(n²p)`` once, then ``O(G²)`` per resample) or computed as
``‖Xᵀ diag(w) Y‖²_F`` per resample (``method="features"``, ``O(n·p²)`` per resample).

Permutation. Permuting the rows of ``Y`` leaves both self terms unchanged; only the cross term
is recomputed (``‖Xᵀ Y_π‖²`` or ``⟨K, L_ππ⟩``). For RBF CKA, the bandwidth does not change under
a permutation and centring commutes with it, so the permuted kernel is exact too.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import torch

from transferlens.analysis.similarity import (
    Kind,
    _center,
    _center_gram,
    _debiased_dot,
    _ratio,
    cka,
    gram_rbf,
)
from transferlens.analysis.stats import (
    BootstrapResult,
    PermutationResult,
    Units,
    bootstrap_ci,
    finish_bootstrap,
    permutation_draws,
    summarize_null,
    unit_draws,
)
from transferlens.analysis.validate import ArrayLike, check_pair

logger = logging.getLogger(__name__)

__all__ = ["cka_bootstrap", "cka_permutation_test"]

_CHUNK = 64  # resamples per vectorised chunk
_MAX_UNITS = 2048


def _unit_quadratics(Xc: torch.Tensor, Yc: torch.Tensor, ids: torch.Tensor, G: int):
    """``Q_ab[g,h] = Σ_{i∈g, j∈h} A_ij B_ij`` for (K∘L, K∘K, L∘L), streamed by row blocks."""
    n = Xc.shape[0]
    Q = torch.zeros(3, G, G, dtype=torch.float64, device=Xc.device)
    bsz = max(1, min(n, (64 * 2**20) // (8 * n)))
    for r0 in range(0, n, bsz):
        r1 = min(n, r0 + bsz)
        K, L = Xc[r0:r1] @ Xc.T, Yc[r0:r1] @ Yc.T
        for q, Z in enumerate((K * L, K * K, L * L)):
            cols = torch.zeros(r1 - r0, G, dtype=torch.float64, device=Xc.device)
            cols.index_add_(1, ids, Z)
            Q[q].index_add_(0, ids[r0:r1], cols)
    return Q


def _cka_weighted(A, W, Xc, Yc, debiased: bool) -> torch.Tensor:
    """CKA of resamples given quadratic forms ``A = (wᵀ(K∘L)w, wᵀ(K∘K)w, wᵀ(L∘L)w)`` and row
    weights ``W`` (``c × n``), re-centred within each resample."""
    a_xy, a_xx, a_yy = A
    N = W.sum(1)
    U, V = W @ Xc, W @ Yc  # Xᵀw, Yᵀw per resample
    kw, lw = U @ Xc.T, V @ Yc.T  # (Kw)_i, (Lw)_i
    wkw, wlw = U.square().sum(1), V.square().sum(1)
    if not debiased:
        xy = a_xy - 2.0 / N * (W * kw * lw).sum(1) + wkw * wlw / N**2
        xx = a_xx - 2.0 / N * (W * kw * kw).sum(1) + wkw**2 / N**2
        yy = a_yy - 2.0 / N * (W * lw * lw).sum(1) + wlw**2 / N**2
    else:
        dk, dl = Xc.square().sum(1), Yc.square().sum(1)
        sk, sl = wkw - W @ dk, wlw - W @ dl
        ek, el = kw - dk, lw - dl
        c1, c2 = 1.0 / ((N - 1.0) * (N - 2.0)), 2.0 / (N - 2.0)
        xy = a_xy - W @ (dk * dl) + sk * sl * c1 - c2 * (W * ek * el).sum(1)
        xx = a_xx - W @ (dk * dk) + sk * sk * c1 - c2 * (W * ek * ek).sum(1)
        yy = a_yy - W @ (dl * dl) + sl * sl * c1 - c2 * (W * el * el).sum(1)
    return xy / torch.sqrt(xx * yy)


def _distinct_weight(W: torch.Tensor) -> torch.Tensor:
    """``Σ w_i w_j w_q w_r`` over ordered 4-tuples of distinct rows, per resample."""
    p1, p2, p3, p4 = ((W**k).sum(1) for k in (1, 2, 3, 4))
    return p1**4 - 6.0 * p1**2 * p2 + 3.0 * p2**2 + 8.0 * p1 * p3 - 6.0 * p4


def _hsic_ties_excluded(S, W, kw, lw, kw2, lw2, dk, dl, c4) -> torch.Tensor:
    """Unbiased HSIC of resamples whose copies of a unit are never paired with each other.

    Song et al.'s estimator is the U-statistic ``(1/(n)_4) Σ h(i, j, q, r)`` over ordered
    4-tuples of distinct rows with ``h = k_ij l_ij + k_ij l_qr − 2 k_ij l_iq``. For a resample
    with multiplicities ``w``, the average runs over 4-tuples of distinct *original* rows, each
    weighted by ``w_i w_j w_q w_r`` (equal to the estimator itself when ``w`` is all ones, and
    invariant to translating the features like it). ``S = (s_11, s_12, s_13, s_22)`` with
    ``s_ab = (wᵃ)ᵀ(K∘L)(wᵇ)`` of the full kernels; ``kw, lw, kw2, lw2 = Kw, Lw, Kw², Lw²``;
    ``dk, dl`` the kernels' diagonals; ``c4`` from :func:`_distinct_weight`.
    """
    W2 = W * W
    W3 = W2 * W
    d = dk * dl
    s11, s12, s13, s22 = S[0] - W2 @ d, S[1] - W3 @ d, S[2] - (W3 * W) @ d, S[3] - (W3 * W) @ d
    ktw, ltw = kw - W * dk, lw - W * dl  # K̃w, L̃w (K̃: K with a zero diagonal)
    ktw2, ltw2 = kw2 - W2 * dk, lw2 - W2 * dl
    p1, p2 = W.sum(1), W2.sum(1)
    t_w2ww = (W2 * ktw * ltw).sum(1) - s22  # Σ w_i² w_j w_q k_ij l_iq over distinct i, j, q
    pairs = (p1**2 - p2) * s11 - 4.0 * p1 * s12 + 4.0 * s13 + 2.0 * s22
    quads = (W * ktw).sum(1) * (W * ltw).sum(1) - 4.0 * t_w2ww - 2.0 * s22
    triples = (
        p1 * ((W * ktw * ltw).sum(1) - s12)
        - t_w2ww
        - ((W * ktw2 * ltw).sum(1) - s13)
        - ((W * ktw * ltw2).sum(1) - s13)
    )
    return (pairs + quads - 2.0 * triples) / c4


def _cka_ties_excluded(S, W, Xc, Yc) -> torch.Tensor:
    """Debiased CKA of resamples (one row per unit) without pairs of copies (see
    :func:`_hsic_ties_excluded`); ``S[q]`` holds the four quadratic forms of (K∘L, K∘K, L∘L)."""
    W2 = W * W
    kw, lw = (W @ Xc) @ Xc.T, (W @ Yc) @ Yc.T
    kw2, lw2 = (W2 @ Xc) @ Xc.T, (W2 @ Yc) @ Yc.T
    dk, dl = Xc.square().sum(1), Yc.square().sum(1)
    c4 = _distinct_weight(W)
    xy = _hsic_ties_excluded(S[0], W, kw, lw, kw2, lw2, dk, dl, c4)
    xx = _hsic_ties_excluded(S[1], W, kw, kw, kw2, kw2, dk, dk, c4)
    yy = _hsic_ties_excluded(S[2], W, lw, lw, lw2, lw2, dl, dl, c4)
    return xy / torch.sqrt(xx * yy)


def cka_bootstrap(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    kind: Kind = "linear",
    debiased: bool = False,
    threshold: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    keep_distribution: bool = False,
    method: Literal["auto", "units", "features"] = "auto",
    ties: Literal["auto", "exclude", "keep"] = "auto",
    name: str | None = None,
) -> BootstrapResult:
    """CKA with a percentile bootstrap interval over units (rows or groups of rows).

    A resample draws units with replacement, so it holds copies of some units. A copy paired
    with itself looks perfectly aligned, and the resampled CKA sits above the full-data value
    (by ≈ 0.1 with 60 units of 64 dimensions). With ``ties="exclude"`` (debiased linear CKA,
    one row per unit: the default there) each resample's unbiased HSIC averages over tuples of
    distinct units only, weighted by their multiplicities (the bootstrap of a U-statistic
    without ties), which removes that shift. With ``ties="keep"`` the resample is scored like
    any data set: the same draws and statistic as ``bootstrap_ci(lambda x, y: cka(x, y, ...),
    X, Y, groups=groups, seed=seed)``, every resample re-centred; biased CKA, RBF CKA and
    units of several rows always resample this way (a warning is logged when the full-data
    value falls outside its interval). Linear CKA uses the fast exact formulas in the module
    docs; RBF CKA recomputes each resample (its bandwidth depends on the resample's median
    distance).

    Args:
        X: ``n × p1`` activations.
        Y: ``n × p2`` activations of the same examples.
        groups: one unit id per row (paragraph, sentence); ``None``: rows are the units.
        kind: ``"linear"`` or ``"rbf"``.
        debiased: unbiased HSIC.
        threshold: RBF bandwidth factor.
        n_boot: number of resamples.
        level: interval coverage.
        seed: seed of the numpy Generator.
        keep_distribution: keep the resampled values.
        method: linear only: ``"units"`` (``G × G`` aggregation; needs ``G <= 2048``),
            ``"features"`` or ``"auto"`` (cheaper of the two).
        ties: ``"exclude"`` (debiased linear CKA with one row per unit only), ``"keep"``,
            or ``"auto"`` (``"exclude"`` where it applies, else ``"keep"``).
        name: label of the data for error messages.

    Returns:
        :class:`~transferlens.analysis.stats.BootstrapResult`.
    """
    Xt, Yt = check_pair(
        X, Y, name=name, min_n=4 if debiased else 2, why="debiased CKA (unbiased HSIC)"
    )
    if kind == "rbf":
        _exclude_ties(ties, False, 0, 1)  # checks the value: RBF keeps ties
        return bootstrap_ci(
            lambda x, y: cka(x, y, kind="rbf", threshold=threshold, debiased=debiased, name=name),
            Xt,
            Yt,
            groups=groups,
            n_boot=n_boot,
            level=level,
            seed=seed,
            keep_distribution=keep_distribution,
        )
    if kind != "linear":
        raise ValueError(f"kind must be 'linear' or 'rbf'; got {kind!r}")
    value = cka(Xt, Yt, debiased=debiased, name=name)
    units = Units(Xt.shape[0], groups)
    n, p1, p2, G = Xt.shape[0], Xt.shape[1], Yt.shape[1], units.count
    exclude = _exclude_ties(ties, debiased, n, G)
    Xc, Yc = _center(Xt), _center(Yt)
    Xc, Yc = Xc / torch.linalg.matrix_norm(Xc), Yc / torch.linalg.matrix_norm(Yc)
    if method == "auto":
        units_cost = 2.0 * n * n * (p1 + p2 + 3 * G / n + 3) + 3.0 * n_boot * G * G
        feat_cost = 2.0 * n_boot * 0.64 * n * (p1 * p2 + p1 * p1 + p2 * p2)
        method = "units" if G <= _MAX_UNITS and units_cost < feat_cost else "features"
    if method not in ("units", "features"):
        raise ValueError(f"method must be 'auto', 'units' or 'features'; got {method!r}")
    if method == "units" and G > _MAX_UNITS:
        raise ValueError(f"method='units' needs at most {_MAX_UNITS} units; got {G}")
    logger.debug("cka_bootstrap: n=%d, %d units, method=%s", n, G, method)
    ids = torch.from_numpy(units.ids).to(Xc.device)
    Q = _unit_quadratics(Xc, Yc, ids, G) if method == "units" else None
    dist = np.empty(n_boot)
    draws = unit_draws(G, n_boot, seed)
    for c0 in range(0, n_boot, _CHUNK):
        chosen = [next(draws) for _ in range(min(_CHUNK, n_boot - c0))]
        m = torch.from_numpy(
            np.stack([np.bincount(ch, minlength=G) for ch in chosen]).astype(np.float64)
        ).to(Xc.device)
        W = m[:, ids]
        S = _quadratic_forms(m, W, Q, Xc, Yc, exclude)
        if exclude:
            got = _cka_ties_excluded(S, W, Xc, Yc)
        else:
            got = _cka_weighted([f[0] for f in S], W, Xc, Yc, debiased)
        dist[c0 : c0 + len(chosen)] = got.cpu().numpy()
    return finish_bootstrap(
        value, dist, level=level, n_units=G, keep_distribution=keep_distribution
    )


def _exclude_ties(ties: str, debiased: bool, n: int, G: int) -> bool:
    if ties not in ("auto", "exclude", "keep"):
        raise ValueError(f"ties must be 'auto', 'exclude' or 'keep'; got {ties!r}")
    applies = debiased and G == n
    if ties == "exclude" and not applies:
        raise ValueError(
            "ties='exclude' needs debiased=True and one row per unit (groups=None or every "
            "group one row); use ties='keep' (or 'auto')"
        )
    return applies and ties != "keep"


def _quadratic_forms(m, W, Q, Xc, Yc, powers: bool) -> list[torch.Tensor]:
    """Per kernel product (K∘L, K∘K, L∘L), per resample: ``wᵀ(·)w`` and, if ``powers``, also
    ``wᵀ(·)w²``, ``wᵀ(·)w³`` and ``(w²)ᵀ(·)(w²)`` (rows of the returned ``k × c`` tensors),
    from the unit aggregates ``Q`` or the features."""
    c, dev = W.shape[0], Xc.device
    k = 4 if powers else 1
    if Q is not None:
        out = []
        for q in range(3):
            MQ = m @ Q[q]
            rows = [(MQ * m).sum(1)]
            if powers:
                m2 = m * m
                M2Q = m2 @ Q[q]
                rows += [(MQ * m2).sum(1), (MQ * (m2 * m)).sum(1), (M2Q * m2).sum(1)]
            out.append(torch.stack(rows))
        return out
    out = [torch.empty(k, c, dtype=torch.float64, device=dev) for _ in range(3)]
    for r in range(c):
        rows = torch.nonzero(W[r]).flatten()
        w = W[r, rows, None]
        x, y = Xc[rows], Yc[rows]
        for q, (left, right) in enumerate(((x, y), (x, x), (y, y))):
            M1 = (left * w).T @ right
            out[q][0, r] = M1.square().sum()
            if powers:
                M2 = (left * (w * w)).T @ right
                M3 = (left * (w * w * w)).T @ right
                out[q][1, r] = (M1 * M2).sum()
                out[q][2, r] = (M1 * M3).sum()
                out[q][3, r] = M2.square().sum()
    return out


def cka_permutation_test(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    kind: Kind = "linear",
    debiased: bool = False,
    threshold: float = 1.0,
    n_perm: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    keep_null: bool = False,
    name: str | None = None,
) -> PermutationResult:
    """Permutation baseline for CKA: the rows of ``Y`` are permuted ``n_perm`` times.

    Same draws and numbers as ``permutation_test(lambda x, y: cka(x, y, ...), X, Y,
    seed=seed)``, but only the cross term is recomputed per permutation.

    Args:
        X: ``n × p1`` activations.
        Y: ``n × p2`` activations of the same examples.
        kind: ``"linear"`` or ``"rbf"``.
        debiased: unbiased HSIC.
        threshold: RBF bandwidth factor.
        n_perm: number of permutations.
        seed: seed of the numpy Generator.
        level: quantile of the null reported as ``null_quantile``.
        keep_null: keep the null distribution.
        name: label of the data for error messages.

    Returns:
        :class:`~transferlens.analysis.stats.PermutationResult` (one-sided, "greater").
    """
    Xt, Yt = check_pair(
        X, Y, name=name, min_n=4 if debiased else 2, why="debiased CKA (unbiased HSIC)"
    )
    n, p1, p2 = Xt.shape[0], Xt.shape[1], Yt.shape[1]
    value = cka(Xt, Yt, kind=kind, debiased=debiased, threshold=threshold, name=name)
    null = np.empty(n_perm)
    perms = permutation_draws(n, n_perm, seed)
    if kind == "rbf" or (2 * n < p1 * p2 and n * n * 8 * 2 <= 2**30):
        if kind == "rbf":
            K, L = gram_rbf(Xt, threshold, name=name), gram_rbf(Yt, threshold, name=name)
        elif kind == "linear":
            Xc, Yc = _center(Xt), _center(Yt)
            K, L = Xc @ Xc.T, Yc @ Yc.T
        else:
            raise ValueError(f"kind must be 'linear' or 'rbf'; got {kind!r}")
        Kc, Lc = _center_gram(K, debiased), _center_gram(L, debiased)
        norm = torch.sqrt(Kc.square().sum() * Lc.square().sum())
        for k, perm in enumerate(perms):
            pt = torch.from_numpy(perm).to(Lc.device)
            null[k] = float((Kc * Lc[pt][:, pt]).sum() / norm)
    else:
        Xc, Yc = _center(Xt), _center(Yt)
        r, s = Xc.square().sum(1), Yc.square().sum(1)
        fx, fy = r.sum(), s.sum()
        xx, yy = (Xc.T @ Xc).square().sum(), (Yc.T @ Yc).square().sum()
        if debiased:
            xx = _debiased_dot(xx, r @ r, fx * fx, n)
            yy = _debiased_dot(yy, s @ s, fy * fy, n)
        for k, perm in enumerate(perms):
            pt = torch.from_numpy(perm).to(Yc.device)
            xy = (Xc.T @ Yc[pt]).square().sum()
            if debiased:
                xy = _debiased_dot(xy, r @ s[pt], fx * fy, n)
            null[k] = _ratio(xy, xx, yy, name)
    return summarize_null(value, null, level=level, alternative="greater", keep_null=keep_null)
