"""Large CPU matrix products through NumPy's BLAS.

The CKA matrix (:mod:`transferlens.analysis.cka_matrix`) spends nearly all its time in a few
large matrix products, run back to back. On CPU they go through NumPy's BLAS (OpenBLAS in
NumPy's wheels) instead of torch's: on the 2-core AMD EPYC development machine, float32
products of the CKA shapes ran at ≈ 120–140 GFLOP/s with NumPy against ≈ 85 with torch 2.13
(MKL) (``docs/similarity.md``). The probe solver's thin products (a few dozen columns) use it
only when torch runs one intra-op thread, as in the worker threads of
:mod:`~transferlens.analysis.workers` (which also limit NumPy's BLAS to one thread): 10–40 %
faster than torch's there. With several threads each, the two libraries' thread pools contend
for the cores between products and element-wise work (2× slower overall, measured).

The choice is fixed (not timed at run time), so the same inputs give the same numbers on a
machine. Tensors on other devices, other dtypes and layouts NumPy's BLAS cannot read go
through ``torch.matmul``. :func:`blas_threads` runs NumPy's BLAS with as many threads as torch
uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["blas_threads", "matmul"]

_NUMPY_DTYPES = (torch.float32, torch.float64)


def _readable(t: torch.Tensor) -> bool:
    """Whether NumPy's BLAS reads ``t`` in place: each matrix has a unit stride on one axis."""
    if t.ndim < 2 or t.numel() == 0:
        return False
    s0, s1 = t.stride(-2), t.stride(-1)
    r, c = t.shape[-2], t.shape[-1]
    return (s1 == 1 and s0 >= max(c, 1)) or (s0 == 1 and s1 >= max(r, 1))


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (2-D or batched 3-D), written into ``out`` if given.

    On CPU, for float32/float64 operands of one dtype that NumPy's BLAS can read without a
    copy (inputs and ``out`` may be transposed or strided views), the product runs in NumPy;
    otherwise in torch. Neither operand may require grad.
    """
    fast = (
        a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dtype in _NUMPY_DTYPES
        and b.dtype == a.dtype
        and a.ndim == b.ndim
        and a.ndim in (2, 3)
        and not (a.requires_grad or b.requires_grad)
        and _readable(a)
        and _readable(b)
        and (out is None or (out.dtype == a.dtype and out.device.type == "cpu" and _readable(out)))
    )
    if not fast:
        if out is None:
            return torch.matmul(a, b)
        return torch.matmul(a, b, out=out)
    if out is None:
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    np.matmul(a.numpy(), b.numpy(), out=out.numpy())
    return out


@contextlib.contextmanager
def blas_threads(n: int | None = None) -> Iterator[None]:
    """Limit NumPy's BLAS to ``n`` threads (default: ``torch.get_num_threads()``) inside the
    block, restoring the previous limit after it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=n or torch.get_num_threads(), user_api="blas"):
        yield
