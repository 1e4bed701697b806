"""Centred kernel alignment (CKA) between two representations of the same examples.

Pure functions on arrays. ``X`` is ``n × p1`` and ``Y`` is ``n × p2``; rows are examples (the
same examples, in the same order, in both), columns are features. Inputs may be numpy arrays or
torch tensors of any floating dtype (fp16/bf16/fp32/fp64); the computation runs in float64 by
default (``dtype=``) on the device of the input tensor. Scalars come back as Python floats,
matrices as arrays of the input's kind.

Conventions (Kornblith et al., ICML 2019; Song et al., 2012; Nguyen, Raghu & Kornblith, 2021):

* linear CKA, feature form (columns centred): ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``;
* Gram form: ``HSIC(K, L) = tr(KHLH) / (n-1)²``, ``CKA = HSIC(K,L) / √(HSIC(K,K) HSIC(L,L))``;
* RBF kernel ``K_ij = exp(-‖x_i - x_j‖² / (2σ²))`` with ``σ² = threshold² · median`` of the
  full ``n × n`` squared-distance matrix (zero diagonal included);
* debiased CKA uses the unbiased HSIC estimator (needs ``n >= 4``; may be negative).

Layer × layer matrices live in :mod:`transferlens.analysis.cka_matrix`, streaming CKA in
:mod:`transferlens.analysis.minibatch_cka`, bootstrap/permutation for CKA in
:mod:`transferlens.analysis.cka_stats`; Procrustes, RSA and retrieval in
:mod:`transferlens.analysis.alignment`; the validation of the inputs in
:mod:`transferlens.analysis.validate`.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from transferlens.analysis.validate import ArrayLike, _where, as_features, check_pair

logger = logging.getLogger(__name__)

Kind = Literal["linear", "rbf"]

__all__ = [
    "ArrayLike",
    "as_features",
    "center_gram",
    "check_pair",
    "cka",
    "cka_from_grams",
    "gram_linear",
    "gram_rbf",
    "hsic_biased",
    "hsic_unbiased",
    "linear_cka",
    "rbf_cka",
]


def _center(t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(dim=0, keepdim=True)


def _float(t: torch.Tensor) -> float:
    return float(t.item())


def _debiased_dot(xy: torch.Tensor, rr: torch.Tensor, ff: torch.Tensor, n: int) -> torch.Tensor:
    """n(n-3)·HSIC₁ from linear-kernel terms of column-centred features.

    With ``K = XXᵀ`` (X centred), ``r = diag K`` and ``f = ‖X‖²_F``: ``tr(K̃L̃) = ⟨K,L⟩ - r·s``,
    ``1ᵀK̃1 = -f``, ``1ᵀK̃L̃1 = r·s``, so Song et al.'s estimator times ``n(n-3)`` is
    ``⟨K,L⟩ - n/(n-2)·r·s + f_x f_y / ((n-1)(n-2))``. ``xy`` is ``⟨K,L⟩ = ‖XᵀY‖²_F``,
    ``rr`` is ``r·s``, ``ff`` is ``f_x f_y``.
    """
    return xy - (n / (n - 2.0)) * rr + ff / ((n - 1.0) * (n - 2.0))


def linear_cka(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    debiased: bool = False,
    form: Literal["auto", "features", "gram"] = "auto",
    name: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Linear CKA between two representations of the same ``n`` examples.

    Feature form (Kornblith et al. 2019, eq. 5): with columns centred,
    ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``. ``debiased=True`` replaces each HSIC by the unbiased
    estimator of Song et al. (2012), written in feature space (no ``n × n`` matrix).

    Args:
        X: ``n × p1`` activations.
        Y: ``n × p2`` activations of the same examples.
        debiased: use the unbiased HSIC (needs ``n >= 4``; can be negative).
        form: ``"features"`` (``p × p`` products), ``"gram"`` (``n × n`` products) or
            ``"auto"`` (whichever costs fewer operations). All give the same number.
        name: label of the data for error messages.
        dtype: compute dtype (float64 by default).

    Returns:
        CKA in ``[0, 1]`` (biased) or ``[-1, 1]`` (debiased).
    """
    Xt, Yt = check_pair(
        X,
        Y,
        name=name,
        min_n=4 if debiased else 2,
        why="debiased CKA (unbiased HSIC)",
        dtype=dtype,
    )
    n, p1 = Xt.shape
    p2 = Yt.shape[1]
    Xc, Yc = _center(Xt), _center(Yt)
    if form == "auto":
        form = "gram" if n * (p1 + p2 + 3) < p1 * p2 + p1 * p1 + p2 * p2 else "features"
    if form == "features":
        xy = (Xc.T @ Yc).square().sum()
        xx = (Xc.T @ Xc).square().sum()
        yy = (Yc.T @ Yc).square().sum()
    elif form == "gram":
        K, L = Xc @ Xc.T, Yc @ Yc.T
        xy, xx, yy = (K * L).sum(), K.square().sum(), L.square().sum()
    else:
        raise ValueError(f"form must be 'auto', 'features' or 'gram'; got {form!r}")
    if debiased:
        r, s = Xc.square().sum(1), Yc.square().sum(1)
        fx, fy = r.sum(), s.sum()
        xy = _debiased_dot(xy, r @ s, fx * fy, n)
        xx = _debiased_dot(xx, r @ r, fx * fx, n)
        yy = _debiased_dot(yy, s @ s, fy * fy, n)
    return _ratio(xy, xx, yy, name)


def _ratio(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor, name: str | None) -> float:
    for arg, v in (("X", xx), ("Y", yy)):
        if not _float(v) > 0:
            raise ValueError(
                f"{_where(name)}HSIC of {arg} with itself is {_float(v):.3g} (not positive); "
                f"{arg} has too little variation among the examples for CKA"
            )
    return _float(xy / torch.sqrt(xx * yy))


# --------------------------------------------------------------------------- Gram matrices


def _gram_in(K: ArrayLike, arg: str, name: str | None, dtype: torch.dtype) -> torch.Tensor:
    t = as_features(K, arg=arg, name=name, dtype=dtype)
    if t.shape[0] != t.shape[1]:
        raise ValueError(
            f"{_where(name)}{arg} must be a square n × n Gram matrix; got shape {tuple(t.shape)}"
        )
    scale = max(float(t.abs().max()), 1e-300)
    if float((t - t.T).abs().max()) > 1e-8 * scale:
        raise ValueError(f"{_where(name)}{arg} is not symmetric; pass a Gram (kernel) matrix")
    return t


def _like(t: torch.Tensor, ref: ArrayLike) -> ArrayLike:
    return t if isinstance(ref, torch.Tensor) else t.cpu().numpy()


def gram_linear(
    X: ArrayLike, *, name: str | None = None, dtype: torch.dtype = torch.float64
) -> ArrayLike:
    """Linear kernel ``K = XXᵀ`` (``n × n``) of an ``n × p`` matrix (not centred)."""
    Xt = as_features(X, name=name, dtype=dtype)
    return _like(Xt @ Xt.T, X)


def _median_all(D: torch.Tensor) -> torch.Tensor:
    """Median of all entries, averaging the two middle ones for an even count (numpy's rule)."""
    flat = D.reshape(-1)
    m = flat.numel()
    if m % 2:
        return flat.kthvalue((m + 1) // 2).values
    return 0.5 * (flat.kthvalue(m // 2).values + flat.kthvalue(m // 2 + 1).values)


def _sq_distances(Xt: torch.Tensor) -> torch.Tensor:
    Xc = _center(Xt)  # distances do not change; less cancellation
    G = Xc @ Xc.T
    r = torch.diagonal(G)
    D = r[:, None] + r[None, :] - 2.0 * G
    D.fill_diagonal_(0.0)
    return D.clamp_(min=0.0)


def gram_rbf(
    X: ArrayLike,
    threshold: float = 1.0,
    *,
    name: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> ArrayLike:
    """RBF kernel with the median-distance bandwidth of Kornblith et al.'s reference code.

    ``K_ij = exp(-‖x_i - x_j‖² / (2σ²))`` with ``σ² = threshold² · m``, where ``m`` is the
    median of the full ``n × n`` matrix of squared distances, zero diagonal included.

    Args:
        X: ``n × p`` activations.
        threshold: bandwidth as a fraction of the median distance (Kornblith's ``threshold``).
        name: label for error messages.
        dtype: compute dtype.

    Returns:
        ``n × n`` kernel matrix (numpy in -> numpy out).

    Raises:
        ValueError: non-positive threshold, or a median squared distance of 0 (more than half
            of all ordered pairs of rows identical).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive; got {threshold}")
    Xt = as_features(X, name=name, dtype=dtype)
    D = _sq_distances(Xt)
    med = _median_all(D)
    if not float(med) > 0:
        raise ValueError(
            f"{_where(name)}the median squared distance between examples is 0 (most rows are "
            "identical), so the RBF bandwidth is undefined; remove duplicate rows"
        )
    return _like(torch.exp(D / (-2.0 * threshold**2 * med)), X)


def center_gram(K: ArrayLike, *, unbiased: bool = False, name: str | None = None) -> ArrayLike:
    """Centre a Gram matrix: ``HKH`` or, with ``unbiased=True``, U-centring.

    U-centring (Székely & Rizzo 2014) zeroes the diagonal and removes row/column means so that
    ``⟨Ũ(K), Ũ(L)⟩ / (n(n-3))`` is the unbiased HSIC of Song et al. (2012); it needs ``n >= 4``.
    """
    t = _gram_in(K, "K", name, torch.float64)
    if unbiased and t.shape[0] < 4:
        raise ValueError(
            f"{_where(name)}U-centring (the unbiased HSIC) needs at least 4 examples; "
            f"got n={t.shape[0]}"
        )
    return _like(_center_gram(t, unbiased), K)


def _center_gram(t: torch.Tensor, unbiased: bool) -> torch.Tensor:
    n = t.shape[0]
    t = t.clone()
    if unbiased:
        t.fill_diagonal_(0.0)
        means = t.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        t -= means[:, None]
        t -= means[None, :]
        t.fill_diagonal_(0.0)
    else:
        means = t.mean(0)
        means = means - means.mean() / 2
        t -= means[:, None]
        t -= means[None, :]
    return t


def _gram_pair(K: ArrayLike, L: ArrayLike, name: str | None, min_n: int):
    Kt = _gram_in(K, "K", name, torch.float64)
    Lt = _gram_in(L, "L", name, torch.float64).to(Kt.device)
    if Kt.shape != Lt.shape:
        raise ValueError(
            f"{_where(name)}K is {Kt.shape[0]} × {Kt.shape[0]} but L is "
            f"{Lt.shape[0]} × {Lt.shape[0]}; both must be over the same examples"
        )
    if Kt.shape[0] < min_n:
        raise ValueError(
            f"{_where(name)}the unbiased HSIC needs at least {min_n} examples; got n={Kt.shape[0]}"
        )
    return Kt, Lt


def hsic_biased(K: ArrayLike, L: ArrayLike, *, name: str | None = None) -> float:
    """Biased HSIC of two ``n × n`` Gram matrices: ``tr(KHLH) / (n-1)²``."""
    Kt, Lt = _gram_pair(K, L, name, 2)
    n = Kt.shape[0]
    return _float((_center_gram(Kt, False) * Lt).sum() / (n - 1) ** 2)


def hsic_unbiased(K: ArrayLike, L: ArrayLike, *, name: str | None = None) -> float:
    """Unbiased HSIC (Song et al. 2012) of two ``n × n`` Gram matrices, ``n >= 4``.

    With ``K̃``, ``L̃`` the matrices with zeroed diagonals::

        [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))
    """
    Kt, Lt = _gram_pair(K, L, name, 4)
    n = Kt.shape[0]
    Kz, Lz = Kt.clone().fill_diagonal_(0.0), Lt.clone().fill_diagonal_(0.0)
    t1 = (Kz * Lz.T).sum()
    t2 = Kz.sum() * Lz.sum() / ((n - 1) * (n - 2))
    t3 = Kz.sum(0) @ Lz.sum(1) * (2.0 / (n - 2))
    return _float((t1 + t2 - t3) / (n * (n - 3)))


def cka_from_grams(
    K: ArrayLike, L: ArrayLike, *, debiased: bool = False, name: str | None = None
) -> float:
    """CKA from two ``n × n`` Gram matrices (any kernel).

    ``HSIC(K,L) / √(HSIC(K,K) HSIC(L,L))`` with the biased HSIC, or with the unbiased one
    (U-centred Gram matrices) when ``debiased=True``.
    """
    Kt, Lt = _gram_pair(K, L, name, 4 if debiased else 2)
    return _cka_grams(Kt, Lt, debiased, name)


def _cka_grams(Kt: torch.Tensor, Lt: torch.Tensor, debiased: bool, name: str | None) -> float:
    Kc, Lc = _center_gram(Kt, debiased), _center_gram(Lt, debiased)
    return _ratio((Kc * Lc).sum(), Kc.square().sum(), Lc.square().sum(), name)


def rbf_cka(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    threshold: float = 1.0,
    debiased: bool = False,
    name: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """RBF-kernel CKA (bandwidth: ``threshold`` × median distance, see :func:`gram_rbf`).

    Builds two ``n × n`` kernels, so it is meant for ``n`` up to a few thousand; for more
    examples stream batches through :class:`~transferlens.analysis.minibatch_cka.MinibatchCKA`.
    """
    Xt, Yt = check_pair(
        X,
        Y,
        name=name,
        min_n=4 if debiased else 2,
        why="debiased CKA (unbiased HSIC)",
        dtype=dtype,
    )
    K = gram_rbf(Xt, threshold, name=name, dtype=dtype)
    L = gram_rbf(Yt, threshold, name=name, dtype=dtype)
    return _cka_grams(K, L, debiased, name)


def cka(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    kind: Kind = "linear",
    debiased: bool = False,
    threshold: float = 1.0,
    name: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """CKA of either kind: ``kind="linear"`` (:func:`linear_cka`) or ``"rbf"`` (:func:`rbf_cka`).

    Args:
        X: ``n × p1`` activations.
        Y: ``n × p2`` activations of the same examples.
        kind: ``"linear"`` or ``"rbf"``.
        debiased: use the unbiased HSIC estimator (``n >= 4``).
        threshold: RBF bandwidth factor (ignored for linear).
        name: label of the data for error messages.
        dtype: compute dtype.

    Returns:
        The CKA value.
    """
    if kind == "linear":
        return linear_cka(X, Y, debiased=debiased, name=name, dtype=dtype)
    if kind == "rbf":
        return rbf_cka(X, Y, threshold=threshold, debiased=debiased, name=name, dtype=dtype)
    raise ValueError(f"kind must be 'linear' or 'rbf'; got {kind!r}")
