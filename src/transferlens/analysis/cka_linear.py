"""The linear-kernel terms behind :func:`~transferlens.analysis.cka_matrix.cka_matrix`.

Every layer is validated, centred (in float64) and scaled to unit Frobenius norm once; then
for every pair of layers ``(i, j)`` one quantity is computed, the inner product of the two
centred linear kernels ``⟨K_i, L_j⟩ = ‖A_iᵀB_j‖²_F``, and for every layer ``‖K_i‖²_F``, in one
of two exact ways:

* ``"features"``: ``A_iᵀ [B_1 … B_M]`` for a slab of A layers at a time (one large matrix
  product), squared and summed per block — ``O(n·p²)`` per pair, no ``n × n`` matrix;
* ``"gram"``: the upper triangle of every layer's kernel in panels ``K_i[R, C] = A_i[R] A_i[C]ᵀ``
  (a block of rows ``R`` against a block of columns ``C`` right of it, or the square on the
  diagonal), all layers of both models for one panel at a time, paired at once —
  ``O(n²·p)`` per layer plus ``O(n²)`` per pair, with only the panels in memory. Panels are
  independent: they run on the CPU's worker threads (:mod:`transferlens.analysis.workers`),
  each with its own panel buffer. The products inside a panel are summed in the products'
  dtype over groups of rows (at most ``max(8192, panel width)`` terms), the groups and
  panels in float64, panel by panel in a fixed order: the result does not depend on the number
  of threads.

On CPU the large products run through NumPy's BLAS (:mod:`transferlens.analysis.blas`).
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from transferlens.analysis.blas import matmul
from transferlens.analysis.validate import (
    _check_not_constant,
    _where,
    as_features,
    check_all_finite,
)
from transferlens.analysis.workers import run_jobs, workers

__all__: list[str] = []

_BLOCK_BYTES = 256 * 2**20  # features: one slab of cross-products
_KERNEL_BYTES = 2**29  # gram: one panel of every layer (each worker thread holds one)
_ROWS = 1024  # rows centred at a time (float64 temporaries stay small)
_GROUP_TERMS = 8192  # gram: products summed in the products' dtype before float64
_MIN_SIDE = 32  # gram: panels at least 32 × 32 (thinner products run far below peak) ...
_MAX_ROWS, _MAX_COLS = 1024, 2048  # ... and at most 1024 × 2048 (larger ones run no faster)


def _validate_one(
    layer: Any,
    arg: str,
    name: str | None,
    device: Any,
    n: int | None,
    dtype: torch.dtype | None,
    read_only: bool = False,
) -> torch.Tensor:
    """One layer as a tensor (``dtype``, or with ``dtype=None`` float32/float64 as given and
    other dtypes as float64), with ``n`` rows if given and not constant. With ``dtype=None``
    the caller checks that the values are finite (:func:`check_all_finite`). ``read_only``:
    the caller only reads the tensor, so read-only (memory-mapped) input is not copied."""
    dt = dtype
    if dt is None:
        given = getattr(layer, "dtype", None)
        dt = torch.float32 if given in (torch.float32, np.float32) else torch.float64
    t = as_features(
        layer,
        arg=arg,
        name=name,
        dtype=dt,
        device=device,
        check_finite=dtype is not None,
        copy_read_only=not read_only,
    )
    if n is not None and t.shape[0] != n:
        raise ValueError(
            f"{_where(name)}{arg} has {t.shape[0]} rows (examples) but the first layer "
            f"has {n}; every layer of both models must hold the same examples"
        )
    _check_not_constant(t, arg, name)
    return t


def _validated(
    layers: list[Any],
    arg: str,
    name: str | None,
    device: Any,
    n: int | None,
    dtype: torch.dtype | None = torch.float64,
) -> Iterator[torch.Tensor]:
    """Yield each layer validated by :func:`_validate_one` with a common number of rows."""
    for i, layer in enumerate(layers):
        t = _validate_one(layer, f"{arg}[{i}]", name, device, n, dtype)
        n = t.shape[0]
        yield t


def layer_widths(layers: list[Any]) -> list[int]:
    """Each layer's number of columns; a layer that is not 2-D counts as 0 here and gets a
    clear error from the validation."""
    return [int(np.shape(x)[-1]) if np.ndim(x) == 2 else 0 for x in layers]


def _run(jobs: list[Callable[[], None]], device: torch.device) -> None:
    """Run the jobs on the worker threads on CPU; one after another on other devices (one
    stream of device work)."""
    if device.type == "cpu":
        run_jobs(jobs)
    else:
        for job in jobs:
            job()


def _device_of(layer: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    return layer.device if isinstance(layer, torch.Tensor) else torch.device("cpu")


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _on_numpy(t: torch.Tensor) -> bool:
    """Whether element-wise work on ``t`` runs through NumPy (float32/float64 CPU tensors) or
    torch (other devices and dtypes)."""
    return t.device.type == "cpu" and t.dtype in _NUMPY


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; on CPU from NumPy, whose large allocations ask Linux for huge
    pages (``madvise``), so that writing the layer copies and reading them back in the
    products takes fewer page faults and TLB misses than with torch's allocator."""
    if device.type != "cpu" or dtype not in _NUMPY:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=_NUMPY[dtype]))


class _Prepared:
    """Layers centred (in float64) and scaled to unit Frobenius norm, in ``dtype``.

    ``layout="cat"`` puts them side by side in one ``n × P`` matrix (``.cat``, for the slab
    products of the feature method); ``"layers"`` stores each layer's ``n × p_i`` block
    contiguously (rows of one layer adjacent, for the kernel panels). On CPU, layers are
    prepared on the worker threads.
    """

    def __init__(
        self,
        layers: list[Any],
        arg: str,
        name: str | None,
        dtype: torch.dtype,
        device: Any,
        n: int | None,
        layout: str = "cat",
    ):
        self.widths = layer_widths(layers)
        self.offsets = [0, *np.cumsum(self.widths).tolist()]
        rows = (
            n if n is not None else (int(np.shape(layers[0])[0]) if np.ndim(layers[0]) == 2 else 0)
        )
        self.n = rows
        self.layout = layout
        dev = _device_of(layers[0], device)
        total = self.offsets[-1]
        if layout == "cat":
            self.cat = _empty((rows, total), dtype, dev)
        else:
            self.flat = _empty((rows * total,), dtype, dev)
        L = len(layers)
        self.scale2 = torch.empty(L, dtype=torch.float64, device=dev)
        self.r = torch.empty(L, rows, dtype=torch.float64, device=dev)

        def job(i: int):
            return lambda: self._prepare(i, layers[i], arg, name, dev, rows)

        _run([job(i) for i in range(L)], dev)
        self.f = self.r.sum(1)  # squared Frobenius norms (scaled; = 1 up to rounding)

    @property
    def L(self) -> int:
        return len(self.widths)

    @property
    def device(self) -> torch.device:
        return self.r.device

    def layer(self, i: int) -> torch.Tensor:
        if self.layout == "cat":
            return self.cat[:, self.offsets[i] : self.offsets[i + 1]]
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.flat[self.n * a : self.n * b].view(self.n, b - a)

    def _prepare(self, i: int, layer: Any, arg: str, name: str | None, dev, n: int) -> None:
        t = _validate_one(layer, f"{arg}[{i}]", name, dev, n, None, read_only=True)
        out = self.layer(i)
        mu = torch.zeros(t.shape[1], dtype=torch.float64, device=t.device)
        for r0 in range(0, n, _ROWS):
            mu += t[r0 : r0 + _ROWS].to(torch.float64).sum(0)
        check_all_finite(t, f"{arg}[{i}]", name, total=mu.sum())
        mu /= n
        r = self.r[i]
        if _on_numpy(t) and _on_numpy(out):  # the same in NumPy, 2-3× faster on one thread
            tn, outn, mun, rn = t.numpy(), out.numpy(), mu.numpy(), r.numpy()
            buf = np.empty((min(n, _ROWS), t.shape[1]))  # reused: no allocation per block
            for r0 in range(0, n, _ROWS):
                r1 = min(n, r0 + _ROWS)
                c = buf[: r1 - r0]
                np.subtract(tn[r0:r1], mun, out=c)
                np.einsum("ij,ij->i", c, c, out=rn[r0:r1])
                outn[r0:r1] = c
        else:
            for r0 in range(0, n, _ROWS):
                c = t[r0 : r0 + _ROWS].to(torch.float64) - mu
                r[r0 : r0 + _ROWS] = torch.linalg.vector_norm(c, dim=1).square_()
                out[r0 : r0 + _ROWS] = c
        fro2 = r.sum()
        out.mul_(fro2.rsqrt().to(out.dtype))
        r /= fro2
        self.scale2[i] = 1.0 / fro2  # c_i² with c_i = 1/‖A_i‖_F


def col_layer(x: _Prepared) -> torch.Tensor:
    """The layer of every column of ``x.cat``."""
    return torch.repeat_interleave(
        torch.arange(x.L, device=x.device), torch.tensor(x.widths, device=x.device)
    )


def feature_inner(a: _Prepared, b: _Prepared, sym: bool, block_bytes: int | None) -> torch.Tensor:
    """``P_ij = ‖A_iᵀB_j‖²_F`` from slabs ``A_slabᵀ B_cat`` (columns j >= i only if sym)."""
    block_bytes = _BLOCK_BYTES if block_bytes is None else block_bytes
    P = torch.zeros(a.L, b.L, dtype=torch.float64, device=a.device)
    item = max(a.cat.element_size(), 8)
    a_col, b_col = col_layer(a), col_layer(b)
    i = 0
    while i < a.L:
        c0 = b.offsets[i] if sym else 0
        width_cap = max(1, block_bytes // (item * max(1, b.cat.shape[1] - c0)))
        j = i + 1
        while j < a.L and a.offsets[j + 1] - a.offsets[i] <= width_cap:
            j += 1
        C = matmul(a.cat[:, a.offsets[i] : a.offsets[j]].T, b.cat[:, c0:])
        C = C.to(torch.float64).square_()
        row_layer = a_col[a.offsets[i] : a.offsets[j]] - i
        first = i if sym else 0
        rows = torch.zeros(j - i, C.shape[1], dtype=torch.float64, device=C.device)
        rows.index_add_(0, row_layer, C)
        del C
        block = torch.zeros(j - i, b.L - first, dtype=torch.float64, device=rows.device)
        block.index_add_(1, b_col[c0:] - first, rows)
        P[i:j, first:] = block
        i = j
    if sym:
        P = torch.triu(P) + torch.triu(P, 1).T
    return P


def self_inner(a: _Prepared) -> torch.Tensor:
    """``‖A_iᵀA_i‖²_F`` per layer (the smaller of the two Gram matrices)."""
    out = []
    for i in range(a.L):
        t = a.layer(i)
        g = matmul(t, t.T) if a.n < t.shape[1] else matmul(t.T, t)
        out.append(g.to(torch.float64).square().sum())
    return torch.stack(out)


def panel_sides(n: int, nl: int, itemsize: int, block_bytes: int) -> tuple[int, int]:
    """Rows and (at most) columns of a kernel panel: ``nl`` panels fit in ``block_bytes`` (but
    panels are at least 32 × 32 and at most 1024 × 2048, so that there are panels enough to
    share among the threads), about twice as wide as tall, and the rows split ``n`` evenly.
    Not a function of the number of threads, so neither are the sums."""
    per = max(_MIN_SIDE * _MIN_SIDE, block_bytes // (nl * itemsize))
    w = min(n, _MAX_ROWS, max(_MIN_SIDE, math.isqrt(per // 2)))
    c = min(_MAX_COLS, max(_MIN_SIDE, per // w))
    blocks = -(-n // w)
    return -(-n // blocks), c


def panels(n: int, w: int, c: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, c0, c1)`` panels covering the upper triangle of an ``n × n`` kernel once:
    per block of rows the square on the diagonal, then the columns right of it in equal
    chunks of at most ``c``."""
    out = []
    for r0 in range(0, n, w):
        r1 = min(n, r0 + w)
        out.append((r0, r1, r0, r1))
        rest = n - r1
        if rest:
            k = -(-rest // c)
            step = -(-rest // k)
            out.extend((r0, r1, c0, min(n, c0 + step)) for c0 in range(r1, n, step))
    return out


def _pair(ker: torch.Tensor, la: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_{r,c} ker[i, r, c] · ker[la + j, r, c]`` for every ``(i, j)`` (every ``(i, j)`` of
    the first ``la`` panels if ``sym``) and ``Σ ker[i]²`` per panel: products summed in the
    panels' dtype over groups of rows of at most ``max(_GROUP_TERMS, columns)`` terms, the
    groups in float64."""
    nl, rows, cols = ker.shape
    g = max(1, _GROUP_TERMS // cols)
    if _on_numpy(ker):  # NumPy directly: thousands of small products per panel
        k = ker.numpy()
        cross = np.zeros((la, la if sym else nl - la))
        sq = np.zeros(nl)
        for s0 in range(0, rows, g):
            f = k[:, s0 : s0 + g].reshape(nl, -1)
            if sym:
                cross += f @ f.T
            else:
                cross += f[:la] @ f[la:].T
                sq += np.matmul(f[:, None, :], f[:, :, None]).reshape(nl)
        if sym:
            sq = np.diagonal(cross).copy()
        return torch.from_numpy(cross), torch.from_numpy(sq)
    cross_t = torch.zeros(la, la if sym else nl - la, dtype=torch.float64, device=ker.device)
    sq_t = torch.zeros(nl, dtype=torch.float64, device=ker.device)
    for s0 in range(0, rows, g):
        f = ker[:, s0 : s0 + g].reshape(nl, -1)
        if sym:
            cross_t += (f @ f.T).to(torch.float64)
        else:
            cross_t += (f[:la] @ f[la:].T).to(torch.float64)
            sq_t += torch.bmm(f.unsqueeze(1), f.unsqueeze(2)).view(nl).to(torch.float64)
    if sym:
        sq_t = torch.diagonal(cross_t).clone()
    return cross_t, sq_t


def gram_inner(
    a: _Prepared, b: _Prepared | None, block_bytes: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``⟨K_i, L_j⟩`` and the self terms ``‖K_i‖²``, ``‖L_j‖²`` from kernel panels.

    The kernels are symmetric: a panel right of the diagonal counts twice, the square on the
    diagonal once.
    """
    n, dev, dt = a.n, a.device, a.flat.dtype
    la = a.L
    nl = la + (0 if b is None else b.L)
    threads = workers() if dev.type == "cpu" else 1
    block_bytes = _KERNEL_BYTES if block_bytes is None else block_bytes
    w, c = panel_sides(n, nl, a.flat.element_size(), block_bytes)
    work = panels(n, w, c)
    threads = min(threads, len(work))
    size = nl * w * max(w, min(c, n))
    buffers: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
    for _ in range(threads):
        buffers.put(_empty((size,), dt, dev))
    parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(work)
    layers = [a.layer(i) for i in range(la)] + (
        [] if b is None else [b.layer(j) for j in range(b.L)]
    )

    def panel(k: int) -> None:
        r0, r1, c0, c1 = work[k]
        rows, cols = r1 - r0, c1 - c0
        buf = buffers.get()
        try:
            ker = buf[: nl * rows * cols].view(nl, rows, cols)
            for i, t in enumerate(layers):
                matmul(t[r0:r1], t[c0:c1].T, out=ker[i])
            cross, sq = _pair(ker, la, b is None)
            weight = 1.0 if c0 == r0 else 2.0
            parts[k] = (cross * weight, sq * weight)
        finally:
            buffers.put(buf)

    # largest panels first, so that the threads finish together
    order = sorted(
        range(len(work)), key=lambda k: -(work[k][1] - work[k][0]) * (work[k][3] - work[k][2])
    )
    _run([lambda k=k: panel(k) for k in order], dev)
    P = torch.zeros(la, la if b is None else b.L, dtype=torch.float64, device=dev)
    s = torch.zeros(nl, dtype=torch.float64, device=dev)
    for part in parts:  # in panel order, whatever thread computed it
        assert part is not None
        P += part[0]
        s += part[1]
    return P, s[:la], s[:la] if b is None else s[la:]
