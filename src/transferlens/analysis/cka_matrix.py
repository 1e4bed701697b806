"""Layer × layer CKA matrices and per-group matrices.

Both reduce (as does :mod:`transferlens.analysis.minibatch_cka`) to one quantity per pair of layers ``(i, j)``: the inner product of the two
centred linear kernels, ``⟨K_i, L_j⟩ = ‖A_iᵀB_j‖²_F`` (or, for RBF, of the centred RBF
kernels), plus a few per-layer vectors for the unbiased estimator. It is computed once per
pair, with every layer centred and scaled once, in one of two exact ways:

* ``"features"``: ``A_iᵀ [B_1 … B_M]`` for a slab of A layers at a time (one large matrix
  product), squared and summed per block — ``O(n·p²)`` per pair, no ``n × n`` matrix;
* ``"gram"``: row blocks of the linear kernels ``A_i[r] A_iᵀ`` (upper triangle only) for every
  layer, paired by one product per block — ``O(n²·p)`` per layer plus ``O(n²)`` per pair, and
  only ``block × n`` slices of the kernels in memory.

``method="auto"`` takes whichever needs fewer operations. The unbiased HSIC of the linear
kernel has a feature-space form (see :func:`transferlens.analysis.similarity._debiased_dot`),
so debiased linear CKA never needs the full ``n × n`` kernel either. RBF CKA does: it builds
one centred ``n × n`` kernel per layer and refuses when they would not fit in
``max_gram_bytes`` (stream batches through
:class:`~transferlens.analysis.minibatch_cka.MinibatchCKA` then).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

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
)

logger = logging.getLogger(__name__)

__all__ = ["cka_matrix", "cka_matrix_by_group", "hsic_matrix"]

Method = Literal["auto", "features", "gram"]
Layers: TypeAlias = "Sequence[ArrayLike] | ArrayLike"

_BLOCK_BYTES = 256 * 2**20
_GRAM_BYTES = 2 * 2**30
_GRAM_COST = 2.0  # measured (2-core CPU): the blocked-kernel products run ~2× slower per flop


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


def _validated(layers: list[Any], arg: str, name: str | None, device: Any, n: int | None):
    """Yield each layer validated as a float64 tensor, checking a common number of rows."""
    for i, layer in enumerate(layers):
        t = as_features(layer, arg=f"{arg}[{i}]", name=name, dtype=torch.float64, device=device)
        if n is not None and t.shape[0] != n:
            raise ValueError(
                f"{_where(name)}{arg}[{i}] has {t.shape[0]} rows (examples) but the first layer "
                f"has {n}; every layer of both models must hold the same examples"
            )
        _check_not_constant(t, f"{arg}[{i}]", name)
        n = t.shape[0]
        yield t


class _Prepared:
    """Layers centred and scaled to unit Frobenius norm, side by side in one ``n × P`` matrix."""

    def __init__(
        self,
        layers: list[Any],
        arg: str,
        name: str | None,
        dtype: torch.dtype,
        device: Any,
        n: int | None,
    ):
        self.widths: list[int] = []
        parts, scale2, rows = [], [], []
        for t in _validated(layers, arg, name, device, n):
            t = t - t.mean(dim=0, keepdim=True)
            fro2 = t.square().sum()
            t = t / fro2.sqrt()
            rows.append(t.square().sum(1))
            scale2.append(1.0 / fro2)
            parts.append(t.to(dtype))
            self.widths.append(t.shape[1])
        self.n = parts[0].shape[0]
        self.cat = torch.cat(parts, dim=1)
        del parts
        self.offsets = [0, *np.cumsum(self.widths).tolist()]
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


def _feature_inner(a: _Prepared, b: _Prepared, sym: bool, block_bytes: int) -> torch.Tensor:
    """``P_ij = ‖A_iᵀB_j‖²_F`` from slabs ``A_slabᵀ B_cat`` (columns j >= i only if sym)."""
    P = torch.zeros(a.L, b.L, dtype=torch.float64, device=a.cat.device)
    item = max(a.cat.element_size(), 8)
    i = 0
    while i < a.L:
        c0 = b.offsets[i] if sym else 0
        width_cap = max(1, block_bytes // (item * max(1, b.cat.shape[1] - c0)))
        j = i + 1
        while j < a.L and a.offsets[j + 1] - a.offsets[i] <= width_cap:
            j += 1
        C = a.cat[:, a.offsets[i] : a.offsets[j]].T @ b.cat[:, c0:]
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
        g = t @ t.T if a.n < t.shape[1] else t.T @ t
        out.append(g.to(torch.float64).square().sum())
    return torch.stack(out)


def _gram_inner(a: _Prepared, b: _Prepared | None, block_bytes: int):
    """``⟨K_i, L_j⟩`` and the self terms from row blocks of the upper-triangle kernels."""
    n, dev, dt = a.n, a.cat.device, a.cat.dtype
    nl = a.L + (0 if b is None else b.L)
    # at least 256 rows per block: thinner products run far below the machine's peak
    bsz = int(min(n, max(256, block_bytes // (nl * n * 8))))
    P = torch.zeros(a.L, a.L if b is None else b.L, dtype=torch.float64, device=dev)
    sa = torch.zeros(a.L, dtype=torch.float64, device=dev)
    sb = None if b is None else torch.zeros(b.L, dtype=torch.float64, device=dev)
    root2 = math.sqrt(2.0)

    def kernels(x: _Prepared, r0: int, r1: int) -> torch.Tensor:
        # products in ``dt``; the pairing sums b·(n−r0) terms per entry, so it runs in float64
        out = torch.empty(x.L, r1 - r0, n - r0, dtype=torch.float64, device=dev)
        for i in range(x.L):
            t = x.layer(i)
            if dt == torch.float64:
                torch.matmul(t[r0:r1], t[r0:].T, out=out[i])
            else:
                out[i] = t[r0:r1] @ t[r0:].T
        out[:, :, r1 - r0 :] *= root2  # off-diagonal blocks count twice in ⟨K, L⟩
        return out.view(x.L, -1)

    for r0 in range(0, n, bsz):
        r1 = min(n, r0 + bsz)
        ka = kernels(a, r0, r1)
        if b is None:
            blk = ka @ ka.T
            P += blk
            sa += torch.diagonal(blk)
        else:
            kb = kernels(b, r0, r1)
            P += ka @ kb.T
            sa += ka.square().sum(1)
            sb += kb.square().sum(1)
            del kb
        del ka
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
    block_bytes: int = _BLOCK_BYTES,
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
        block_bytes: approximate memory for one block of intermediate products.
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
    block_bytes: int = _BLOCK_BYTES,
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
            halves the memory of the layer copies and saved ~30% of the time on a 2-core CPU
            (more where fp32 is much faster, e.g. GPUs), at ~1e-8 absolute error in CKA in the
            benchmark (centring, scaling and all sums stay in float64).
        device: where to compute (``None``: the first layer's device; numpy -> CPU).
        method: ``"features"``, ``"gram"`` or ``"auto"`` (linear only; see module docs).
        name: label of the data for error messages.
        block_bytes: approximate memory for one block of intermediate products (the kernel
            path uses blocks of at least 256 rows whatever this says).
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
