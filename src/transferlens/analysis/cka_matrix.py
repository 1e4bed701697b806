"""Layer × layer CKA matrices and per-group matrices.

Both reduce (as does :mod:`transferlens.analysis.minibatch_cka`) to one quantity per pair of
layers ``(i, j)``: the inner product of the two centred linear kernels,
``⟨K_i, L_j⟩ = ‖A_iᵀB_j‖²_F`` (or, for RBF, of the centred RBF kernels), plus a few per-layer
vectors for the unbiased estimator. It is computed once per
pair, with every layer centred and scaled once, in one of two exact ways:

* ``"features"``: ``A_iᵀ [B_1 … B_M]`` for a slab of A layers at a time (one large matrix
  product), squared and summed per block — ``O(n·p²)`` per pair, no ``n × n`` matrix;
* ``"gram"``: row blocks of the linear kernels ``A_i[r] A_iᵀ`` (upper triangle only) for every
  layer, paired row by row — ``O(n²·p)`` per layer plus ``O(n²)`` per pair, and
  only ``block × n`` slices of the kernels in memory. Each row's products are summed in the
  products' dtype (at most ``n`` terms), the rows in float64.

On CPU the large products run through NumPy's BLAS (:mod:`transferlens.analysis.blas`).

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

from transferlens.analysis.blas import blas_threads, matmul
from transferlens.analysis.similarity import (
    ArrayLike,
    Kind,
    _center_gram,
    _check_not_constant,
    _debiased_dot,
    _median_all,
    _sq_distances,
    _where,
    as_features,
    check_all_finite,
)

logger = logging.getLogger(__name__)

__all__ = ["cka_matrix", "cka_matrix_by_group", "hsic_matrix"]

Method = Literal["auto", "features", "gram"]
Layers: TypeAlias = "Sequence[ArrayLike] | ArrayLike"

_BLOCK_BYTES = 256 * 2**20  # features: one slab of cross-products
_KERNEL_BYTES = 2**30  # kernels: the row blocks of every layer's kernel, both models
_GRAM_BYTES = 2 * 2**30
_GRAM_COST = 1.2  # measured (2-core CPU): kernel blocks + pairing cost ~1.2× per flop


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


def _validated(
    layers: list[Any],
    arg: str,
    name: str | None,
    device: Any,
    n: int | None,
    dtype: torch.dtype | None = torch.float64,
):
    """Yield each layer validated as a tensor (float64, or with ``dtype=None`` float32/float64
    as given, other dtypes as float64), checking a common number of rows. With ``dtype=None``
    the caller checks that the values are finite (:func:`check_all_finite`)."""
    fast = dtype is None
    for i, layer in enumerate(layers):
        dt = dtype
        if dt is None:
            given = getattr(layer, "dtype", None)
            dt = torch.float32 if given in (torch.float32, np.float32) else torch.float64
        t = as_features(
            layer, arg=f"{arg}[{i}]", name=name, dtype=dt, device=device, check_finite=not fast
        )
        if n is not None and t.shape[0] != n:
            raise ValueError(
                f"{_where(name)}{arg}[{i}] has {t.shape[0]} rows (examples) but the first layer "
                f"has {n}; every layer of both models must hold the same examples"
            )
        _check_not_constant(t, f"{arg}[{i}]", name)
        n = t.shape[0]
        yield t


_ROWS = 1024  # rows centred at a time (float64 temporaries stay small)


class _Prepared:
    """Layers centred (in float64) and scaled to unit Frobenius norm, side by side in one
    ``n × P`` matrix of ``dtype``."""

    def __init__(
        self,
        layers: list[Any],
        arg: str,
        name: str | None,
        dtype: torch.dtype,
        device: Any,
        n: int | None,
    ):
        # not-2-D layers get width 0 here and a clear error from the validation below
        widths = [int(np.shape(layer)[-1]) if np.ndim(layer) == 2 else 0 for layer in layers]
        self.widths: list[int] = []
        self.offsets = [0, *np.cumsum(widths).tolist()]
        scale2, rows = [], []
        self.cat = torch.empty(0)
        for i, t in enumerate(_validated(layers, arg, name, device, n, dtype=None)):
            m = t.shape[0]
            if i == 0:
                self.cat = torch.empty(m, self.offsets[-1], dtype=dtype, device=t.device)
            out = self.cat[:, self.offsets[i] : self.offsets[i + 1]]
            mu = torch.zeros(t.shape[1], dtype=torch.float64, device=t.device)
            for r0 in range(0, m, _ROWS):
                mu += t[r0 : r0 + _ROWS].to(torch.float64).sum(0)
            check_all_finite(t, f"{arg}[{i}]", name, total=mu.sum())
            mu /= m
            r = torch.empty(m, dtype=torch.float64, device=t.device)
            for r0 in range(0, m, _ROWS):
                c = t[r0 : r0 + _ROWS].to(torch.float64) - mu
                r[r0 : r0 + _ROWS] = torch.linalg.vector_norm(c, dim=1).square_()
                out[r0 : r0 + _ROWS] = c
            fro2 = r.sum()
            out.mul_(fro2.rsqrt().to(dtype))
            rows.append(r / fro2)
            scale2.append(1.0 / fro2)
            self.widths.append(t.shape[1])
        self.n = self.cat.shape[0]
        self.scale2 = torch.stack(scale2)  # c_i² with c_i = 1/‖A_i‖_F
        self.r = torch.stack(rows)  # L × n, row squared norms (scaled)
        self.f = self.r.sum(1)  # squared Frobenius norms (scaled; = 1 up to rounding)
        self.col_layer = torch.repeat_interleave(
            torch.arange(len(self.widths), device=self.cat.device),
            torch.tensor(self.widths, device=self.cat.device),
        )

    @property
    def L(self) -> int:
        return len(self.widths)

    def layer(self, i: int) -> torch.Tensor:
        return self.cat[:, self.offsets[i] : self.offsets[i + 1]]


def _feature_inner(a: _Prepared, b: _Prepared, sym: bool, block_bytes: int | None) -> torch.Tensor:
    """``P_ij = ‖A_iᵀB_j‖²_F`` from slabs ``A_slabᵀ B_cat`` (columns j >= i only if sym)."""
    block_bytes = _BLOCK_BYTES if block_bytes is None else block_bytes
    P = torch.zeros(a.L, b.L, dtype=torch.float64, device=a.cat.device)
    item = max(a.cat.element_size(), 8)
    i = 0
    while i < a.L:
        c0 = b.offsets[i] if sym else 0
        width_cap = max(1, block_bytes // (item * max(1, b.cat.shape[1] - c0)))
        j = i + 1
        while j < a.L and a.offsets[j + 1] - a.offsets[i] <= width_cap:
            j += 1
        C = matmul(a.cat[:, a.offsets[i] : a.offsets[j]].T, b.cat[:, c0:])
        C = C.to(torch.float64).square_()
        row_layer = a.col_layer[a.offsets[i] : a.offsets[j]] - i
        first = i if sym else 0
        rows = torch.zeros(j - i, C.shape[1], dtype=torch.float64, device=C.device)
        rows.index_add_(0, row_layer, C)
        del C
        block = torch.zeros(j - i, b.L - first, dtype=torch.float64, device=rows.device)
        block.index_add_(1, b.col_layer[c0:] - first, rows)
        P[i:j, first:] = block
        i = j
    if sym:
        P = torch.triu(P) + torch.triu(P, 1).T
    return P


def _self_inner(a: _Prepared) -> torch.Tensor:
    out = []
    for i in range(a.L):
        t = a.layer(i)
        g = matmul(t, t.T) if a.n < t.shape[1] else matmul(t.T, t)
        out.append(g.to(torch.float64).square().sum())
    return torch.stack(out)


def _kernel_rows(x: _Prepared, r0: int, r1: int, out: torch.Tensor) -> None:
    """Rows ``r0:r1`` of every layer's linear kernel, columns ``r0:`` (upper triangle)."""
    for i in range(x.L):
        t = x.layer(i)
        matmul(t[r0:r1], t[r0:].T, out=out[i])


def _paired(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """``Σ_{r,c} ka[i, r, c] · kb[j, r, c]`` for every ``(i, j)``: one product per row ``r``
    (sums of at most ``n`` terms in the products' dtype), rows summed in float64."""
    return matmul(ka.transpose(0, 1), kb.permute(1, 2, 0)).sum(0, dtype=torch.float64)


def _row_sq(k: torch.Tensor) -> torch.Tensor:
    """``Σ_{r,c} k[i, r, c]²`` per layer ``i``: per-row dot products, rows summed in float64."""
    L, w, m = k.shape
    rows = matmul(k.reshape(L * w, 1, m), k.reshape(L * w, m, 1))
    return rows.view(L, w).sum(1, dtype=torch.float64)


def _gram_inner(a: _Prepared, b: _Prepared | None, block_bytes: int | None):
    """``⟨K_i, L_j⟩`` and the self terms from row blocks of the upper-triangle kernels.

    For rows ``r0:r1`` each layer's kernel rows ``K_i[r0:r1, r0:]`` come from one product;
    the block on the diagonal counts once and the blocks right of it twice (the
    kernels are symmetric), so ``⟨K, L⟩ = 2·⟨upper rows⟩ − ⟨diagonal blocks⟩`` summed over
    blocks.
    """
    n, dev, dt = a.n, a.cat.device, a.cat.dtype
    nl = a.L + (0 if b is None else b.L)
    block_bytes = _KERNEL_BYTES if block_bytes is None else block_bytes
    # at least 32 rows per block (thinner products run far below the machine's peak); the
    # default budget gives a few hundred rows at n = 10k
    bsz = int(min(n, max(32, block_bytes // (nl * n * a.cat.element_size()))))
    buf_a = torch.empty(a.L * bsz * n, dtype=dt, device=dev)
    buf_b = None if b is None else torch.empty(b.L * bsz * n, dtype=dt, device=dev)
    P = torch.zeros(a.L, a.L if b is None else b.L, dtype=torch.float64, device=dev)
    sa = torch.zeros(a.L, dtype=torch.float64, device=dev)
    sb = None if b is None else torch.zeros(b.L, dtype=torch.float64, device=dev)

    def self_terms(k: torch.Tensor, w: int) -> torch.Tensor:
        return 2.0 * _row_sq(k) - _row_sq(k[:, :, :w].contiguous())

    for r0 in range(0, n, bsz):
        r1 = min(n, r0 + bsz)
        w, m = r1 - r0, n - r0
        ka = buf_a[: a.L * w * m].view(a.L, w, m)
        _kernel_rows(a, r0, r1, ka)
        if b is None:
            kb = ka
        else:
            kb = buf_b[: b.L * w * m].view(b.L, w, m)
            _kernel_rows(b, r0, r1, kb)
        P += 2.0 * _paired(ka, kb) - _paired(ka[:, :, :w], kb[:, :, :w])
        sa += self_terms(ka, w)
        if b is not None:
            sb += self_terms(kb, w)
    return P, sa, sa if b is None else sb


def _choose(method: Method, n: int, a: _Prepared, b: _Prepared | None) -> str:
    if method in ("features", "gram"):
        return method
    if method != "auto":
        raise ValueError(f"method must be 'auto', 'features' or 'gram'; got {method!r}")
    wa = np.asarray(a.widths, dtype=float)
    if b is None:
        feat = n * wa.sum() ** 2
        gram = _GRAM_COST * n**2 * (wa.sum() + a.L**2)
    else:
        wb = np.asarray(b.widths, dtype=float)
        feat = 2 * n * (wa.sum() * wb.sum() + (wa**2).sum() + (wb**2).sum())
        gram = _GRAM_COST * n**2 * (wa.sum() + wb.sum() + a.L * b.L + a.L + b.L)
    return "gram" if gram < feat else "features"


def _check_unbiased_n(unbiased: bool, n: int, name: str | None) -> None:
    if unbiased and n < 4:
        raise ValueError(
            f"{_where(name)}the unbiased HSIC (debiased CKA) needs at least 4 examples; got n={n}"
        )


def _linear_terms(la, lb, *, unbiased, dtype, device, method, name, block_bytes):
    a = _Prepared(la, "A", name, dtype, device, None)
    b = None if lb is None else _Prepared(lb, "B", name, dtype, a.cat.device, a.n)
    n = a.n
    _check_unbiased_n(unbiased, n, name)
    how = _choose(method, n, a, b)
    logger.debug(
        "linear CKA terms for %d × %d layers, n=%d, via %s", a.L, a.L if b is None else b.L, n, how
    )
    if how == "features":
        P = _feature_inner(a, a if b is None else b, b is None, block_bytes)
        sa = torch.diagonal(P).clone() if b is None else _self_inner(a)
        sb = sa if b is None else _self_inner(b)
    else:
        P, sa, sb = _gram_inner(a, b, block_bytes)
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
            benchmark (centring, scaling and all sums of products stay in float64).
        device: where to compute (``None``: the first layer's device; numpy -> CPU).
        method: ``"features"``, ``"gram"`` or ``"auto"`` (linear only; see module docs).
        name: label of the data for error messages.
        block_bytes: memory for the intermediate products: one slab of cross-products
            (``"features"``; default 256 MiB) or the row blocks of all layers' kernels
            (``"gram"``; default 1 GiB, and never fewer than 32 rows per block: at n = 10k
            and 60 layers in float32 that is ≈ 450 rows, ≈ 1 GiB beside the layers' copies).
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
