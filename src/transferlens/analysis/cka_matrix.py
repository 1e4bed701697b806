"""Layer × layer CKA matrices and per-group matrices.

Both reduce (as does :mod:`transferlens.analysis.minibatch_cka`) to one quantity per pair of
layers ``(i, j)``: the inner product of the two centred linear kernels,
``⟨K_i, L_j⟩ = ‖A_iᵀB_j‖²_F`` (or, for RBF, of the centred RBF kernels), plus a few per-layer
vectors for the unbiased estimator. It is computed once per
pair, with every layer centred and scaled once, in one of two exact ways (see
:mod:`transferlens.analysis.cka_linear`): ``"features"`` (``O(n·p²)`` per pair, no
``n × n`` matrix) or ``"gram"`` (panels of every layer's kernel, ``O(n²·p)`` per layer plus
``O(n²)`` per pair).

``method="auto"`` takes whichever needs fewer operations. The unbiased HSIC of the linear
kernel has a feature-space form (see :func:`transferlens.analysis.similarity._debiased_dot`),
so debiased linear CKA never needs the full ``n × n`` kernel either. RBF CKA does: it builds
one centred ``n × n`` kernel per layer and refuses when they would not fit in
``max_gram_bytes`` (stream batches through
:class:`~transferlens.analysis.minibatch_cka.MinibatchCKA` then).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

from transferlens.analysis.blas import blas_threads
from transferlens.analysis.cka_linear import (
    _Prepared,
    _validated,
    feature_inner,
    gram_inner,
    layer_widths,
    self_inner,
)
from transferlens.analysis.similarity import (
    Kind,
    _center_gram,
    _debiased_dot,
    _median_all,
    _sq_distances,
)
from transferlens.analysis.validate import ArrayLike, _where, as_features

logger = logging.getLogger(__name__)

__all__ = ["cka_matrix", "cka_matrix_by_group", "hsic_matrix"]

Method = Literal["auto", "features", "gram"]
Layers: TypeAlias = "Sequence[ArrayLike] | ArrayLike"

_GRAM_BYTES = 2 * 2**30
_GRAM_COST = 1.2  # measured (2-core CPU): a kernel-panel flop costs 0.9-1.4× a feature flop


def _layer_list(A: Any, arg: str, name: str | None) -> list[Any]:
    if isinstance(A, (np.ndarray, torch.Tensor)):
        if A.ndim == 3:
            return [A[i] for i in range(A.shape[0])]
        if A.ndim == 2:
            return [A]
        raise ValueError(
            f"{_where(name)}{arg} must be L × n × p (layers × examples × features), one n × p "
            f"array, or a sequence of n × p arrays; got shape {tuple(A.shape)}"
        )
    layers = list(A)
    if not layers:
        raise ValueError(f"{_where(name)}{arg} holds no layers")
    return layers


def _choose(method: Method, n: int, wa: list[int], wb: list[int] | None) -> str:
    if method != "auto":
        return method
    a = np.asarray(wa, dtype=float)
    if wb is None:
        feat = n * a.sum() ** 2
        gram = _GRAM_COST * n**2 * (a.sum() + a.size**2)
    else:
        b = np.asarray(wb, dtype=float)
        feat = 2 * n * (a.sum() * b.sum() + (a**2).sum() + (b**2).sum())
        gram = _GRAM_COST * n**2 * (a.sum() + b.sum() + a.size * b.size + a.size + b.size)
    return "gram" if gram < feat else "features"


def _check_unbiased_n(unbiased: bool, n: int, name: str | None) -> None:
    if unbiased and n < 4:
        raise ValueError(
            f"{_where(name)}the unbiased HSIC (debiased CKA) needs at least 4 examples; got n={n}"
        )


def _linear_terms(la, lb, *, unbiased, dtype, device, method, name, block_bytes):
    if method not in ("auto", "features", "gram"):
        raise ValueError(f"method must be 'auto', 'features' or 'gram'; got {method!r}")
    n0 = int(np.shape(la[0])[0]) if np.ndim(la[0]) == 2 else 0
    how = _choose(method, n0, layer_widths(la), None if lb is None else layer_widths(lb))
    layout = "cat" if how == "features" else "layers"
    a = _Prepared(la, "A", name, dtype, device, None, layout)
    b = None if lb is None else _Prepared(lb, "B", name, dtype, a.device, a.n, layout)
    n = a.n
    _check_unbiased_n(unbiased, n, name)
    logger.debug(
        "linear CKA terms for %d × %d layers, n=%d, via %s", a.L, a.L if b is None else b.L, n, how
    )
    if how == "features":
        P = feature_inner(a, a if b is None else b, b is None, block_bytes)
        sa = torch.diagonal(P).clone() if b is None else self_inner(a)
        sb = sa if b is None else self_inner(b)
    else:
        P, sa, sb = gram_inner(a, b, block_bytes)
    bb = a if b is None else b
    if unbiased:
        P = _debiased_dot(P, a.r @ bb.r.T, a.f[:, None] * bb.f[None, :], n)
        sa = _debiased_dot(sa, a.r.square().sum(1), a.f.square(), n)
        sb = sa if b is None else _debiased_dot(sb, b.r.square().sum(1), b.f.square(), n)
        denom = n * (n - 3.0)
    else:
        denom = (n - 1.0) ** 2
    # undo the unit-norm scaling and apply the estimator's normalisation
    P = P / (a.scale2[:, None] * bb.scale2[None, :]) / denom
    sa = sa / a.scale2.square() / denom
    sb = sa if b is None else sb / bb.scale2.square() / denom
    return P, sa, sb, n


def _rbf_terms(la, lb, *, unbiased, threshold, device, name, max_gram_bytes):
    la = list(la)
    n_store = len(la) if lb is None else len(lb) + 1
    first = as_features(la[0], arg="A[0]", name=name, device=device)
    n = first.shape[0]
    _check_unbiased_n(unbiased, n, name)
    need = n_store * n * n * 8
    if need > max_gram_bytes:
        raise ValueError(
            f"{_where(name)}RBF CKA on n={n} examples needs {n_store} kernels of n × n "
            f"({need / 2**30:.1f} GiB > max_gram_bytes={max_gram_bytes / 2**30:.1f} GiB); "
            "subsample rows, stream batches through MinibatchCKA(kind='rbf'), or use "
            "kind='linear'"
        )
    if not threshold > 0:
        raise ValueError(f"threshold must be positive; got {threshold}")

    def centred(t: torch.Tensor, arg: str) -> torch.Tensor:
        D = _sq_distances(t)
        med = _median_all(D)
        if not float(med) > 0:
            raise ValueError(
                f"{_where(name)}{arg}: the median squared distance between examples is 0, so the "
                "RBF bandwidth is undefined; remove duplicate rows"
            )
        K = torch.exp(D / (-2.0 * threshold**2 * med))
        return _center_gram(K, unbiased).reshape(-1)

    ka = torch.stack(
        [centred(t, f"A[{i}]") for i, t in enumerate(_validated(la, "A", name, first.device, n))]
    )
    if lb is None:
        P = ka @ ka.T
        sa = sb = torch.diagonal(P).clone()
    else:
        kb = torch.stack(
            [
                centred(t, f"B[{j}]")
                for j, t in enumerate(_validated(list(lb), "B", name, first.device, n))
            ]
        )
        P, sa, sb = ka @ kb.T, ka.square().sum(1), kb.square().sum(1)
    denom = n * (n - 3.0) if unbiased else (n - 1.0) ** 2
    return P / denom, sa / denom, sb / denom, n


def hsic_matrix(
    A: Layers,
    B: Layers | None = None,
    *,
    kind: Kind = "linear",
    unbiased: bool = False,
    threshold: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    method: Method = "auto",
    name: str | None = None,
    block_bytes: int | None = None,
    max_gram_bytes: int = _GRAM_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """HSIC between every layer of ``A`` and every layer of ``B``, and of each with itself.

    Args:
        A: ``L`` layers (``L × n × p`` or a sequence of ``n × p_i`` arrays).
        B: ``M`` layers on the same examples, or ``None``/``A`` for within-model.
        kind: ``"linear"`` or ``"rbf"``.
        unbiased: Song et al.'s unbiased estimator instead of ``tr(KHLH)/(n-1)²``.
        threshold: RBF bandwidth factor.
        dtype: dtype of the large products (see :func:`cka_matrix`).
        device: compute device.
        method: ``"auto"``, ``"features"`` or ``"gram"`` (linear only).
        name: label of the data for error messages.
        block_bytes: memory for the intermediate products (see :func:`cka_matrix`).
        max_gram_bytes: memory the RBF kernels may take.

    Returns:
        ``(cross, self_a, self_b, n)``: float64 tensors ``L × M``, ``L``, ``M`` holding
        ``HSIC(K_i, L_j)``, ``HSIC(K_i, K_i)``, ``HSIC(L_j, L_j)`` (biased: ``tr(KHLH)/(n-1)²``;
        unbiased: Song et al.), and the number of examples.
    """
    sym = B is None or B is A
    la = _layer_list(A, "A", name)
    lb = None if sym else _layer_list(B, "B", name)
    if kind == "linear":
        with blas_threads():
            return _linear_terms(
                la,
                lb,
                unbiased=unbiased,
                dtype=dtype,
                device=device,
                method=method,
                name=name,
                block_bytes=block_bytes,
            )
    if kind == "rbf":
        return _rbf_terms(
            la,
            lb,
            unbiased=unbiased,
            threshold=threshold,
            device=device,
            name=name,
            max_gram_bytes=max_gram_bytes,
        )
    raise ValueError(f"kind must be 'linear' or 'rbf'; got {kind!r}")


def _normalise(cross, sa, sb, name) -> np.ndarray:
    for arg, s in (("A", sa), ("B", sb)):
        bad = torch.nonzero(~(s > 0)).flatten().tolist()
        if bad:
            raise ValueError(
                f"{_where(name)}HSIC of {arg}[{bad[0]}] with itself is {float(s[bad[0]]):.3g} "
                "(not positive); that layer varies too little across the examples for CKA"
            )
    return (cross / torch.sqrt(sa[:, None] * sb[None, :])).cpu().numpy()


def cka_matrix(
    A: Layers,
    B: Layers | None = None,
    *,
    kind: Kind = "linear",
    debiased: bool = False,
    threshold: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    method: Method = "auto",
    name: str | None = None,
    block_bytes: int | None = None,
    max_gram_bytes: int = _GRAM_BYTES,
) -> np.ndarray:
    """CKA between every layer of ``A`` and every layer of ``B``.

    Args:
        A: ``L`` layers of one model: an ``L × n × p`` array/tensor or a sequence of ``n × p_i``
            arrays (widths may differ).
        B: ``M`` layers on the same ``n`` examples (another model), or ``None``/``A`` itself
            for the within-model matrix (computed as a symmetric matrix, half the work).
        kind: ``"linear"`` or ``"rbf"``.
        debiased: unbiased HSIC (needs ``n >= 4``).
        threshold: RBF bandwidth factor (see :func:`~transferlens.analysis.similarity.gram_rbf`).
        dtype: dtype of the large matrix products. float64 by default; ``torch.float32``
            halves the memory of the layer copies and about halves the time on a CPU (more
            where fp32 is much faster, e.g. GPUs), at ~1e-8 absolute error in CKA in the
            benchmark (centring and scaling stay in float64, and the products are summed in
            float32 over at most a few thousand terms, then in float64).
        device: where to compute (``None``: the first layer's device; numpy -> CPU).
        method: ``"features"``, ``"gram"`` or ``"auto"`` (linear only; see module docs).
        name: label of the data for error messages.
        block_bytes: memory for the intermediate products: one slab of cross-products
            (``"features"``; default 256 MiB) or one panel of every layer's kernel
            (``"gram"``; default 512 MiB, panels of 32 × 32 to 1024 × 2048; each worker
            thread holds one such buffer: at n = 10k, 60 layers in float32 and 2 threads,
            panels of 1000 × 2048, ≈ 1 GiB beside the layers' copies).
        max_gram_bytes: memory the RBF kernels may take.

    Returns:
        ``L × M`` float64 numpy array; entry ``(i, j)`` is CKA(A_i, B_j).
    """
    cross, sa, sb, _ = hsic_matrix(
        A,
        B,
        kind=kind,
        unbiased=debiased,
        threshold=threshold,
        dtype=dtype,
        device=device,
        method=method,
        name=name,
        block_bytes=block_bytes,
        max_gram_bytes=max_gram_bytes,
    )
    return _normalise(cross, sa, sb, name)


def _subset(X: Any, idx: np.ndarray) -> Any:
    if isinstance(X, (np.ndarray, torch.Tensor)):
        if X.ndim == 3:
            return X[:, torch.as_tensor(idx) if isinstance(X, torch.Tensor) else idx]
        return X[torch.as_tensor(idx) if isinstance(X, torch.Tensor) else idx]
    return [_subset(layer, idx) for layer in X]


def cka_matrix_by_group(
    A: Layers,
    B: Layers | None = None,
    *,
    groups: Sequence[Hashable] | np.ndarray,
    **kwargs: Any,
) -> dict[Any, np.ndarray]:
    """One :func:`cka_matrix` per group of rows (e.g. per language).

    Args:
        A: layers of one model (as in :func:`cka_matrix`).
        B: layers of the other model, or ``None`` for the within-model matrix.
        groups: one label per example (row), e.g. ``["en", "sv", "sv", ...]``.
        **kwargs: passed to :func:`cka_matrix` (``kind``, ``debiased``, ``dtype``, ...).

    Returns:
        ``{group: L × M matrix}`` in sorted group order.
    """
    g = np.asarray(groups)
    n = int(_layer_list(A, "A", kwargs.get("name"))[0].shape[0])
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must hold one label per example: {n} labels; got shape {g.shape}")
    name = kwargs.pop("name", None)
    out: dict[Any, np.ndarray] = {}
    for label in np.unique(g):
        idx = np.flatnonzero(g == label)
        key = label.item() if hasattr(label, "item") else label
        where = f"{name + ' ' if name else ''}[group {key!r}, {idx.size} rows]"
        out[key] = cka_matrix(
            _subset(A, idx), None if B is None or B is A else _subset(B, idx), name=where, **kwargs
        )
    return out
