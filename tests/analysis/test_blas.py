"""The CPU matrix-product dispatch: NumPy's BLAS where it can read the operands, torch else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.analysis import blas
from transferlens.analysis.blas import blas_threads, matmul


def _calls(monkeypatch):
    seen = {"numpy": 0}
    real = np.matmul

    def counting(*args, **kwargs):
        seen["numpy"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(blas.np, "matmul", counting)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_and_transposed_views_go_through_numpy_and_agree(monkeypatch, dtype):
    seen = _calls(monkeypatch)
    g = torch.Generator().manual_seed(0)
    cat = torch.randn(50, 3 * 7, generator=g, dtype=dtype)
    a = cat[:, 7:14]  # a column slice: row stride 21
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(matmul(a.T, cat), a.T @ cat, rtol=tol, atol=tol)
    out = torch.empty(20, 50, dtype=dtype)
    got = matmul(a[10:30], a.T, out=out)
    assert got is out
    torch.testing.assert_close(out, a[10:30] @ a.T, rtol=tol, atol=tol)
    k = torch.randn(4, 3, 9, generator=g, dtype=dtype)
    torch.testing.assert_close(
        matmul(k.transpose(0, 1), k.permute(1, 2, 0)),
        torch.bmm(k.transpose(0, 1), k.permute(1, 2, 0)),
        rtol=tol,
        atol=tol,
    )
    assert seen["numpy"] == 3


def test_other_dtypes_layouts_and_grad_fall_back_to_torch(monkeypatch):
    seen = _calls(monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=g)
    cases = [
        (x.to(torch.bfloat16), x.T.to(torch.bfloat16)),  # dtype NumPy's BLAS lacks
        (x[:, ::2], x[:, ::2].T),  # no unit stride
        (x.requires_grad_(), x.T),  # autograd must see the product
        (x.double(), x.T),  # mixed dtypes: torch raises its own error
    ]
    for a, b in cases[:3]:
        got = matmul(a, b)
        torch.testing.assert_close(got.float(), (a @ b).float())
    with pytest.raises(RuntimeError):
        matmul(*cases[3])
    assert seen["numpy"] == 0


def test_blas_threads_restores_the_previous_limit():
    import threadpoolctl

    def limits():
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    before = limits()
    assert before, "NumPy's BLAS should be visible to threadpoolctl"
    target = 2 if before[0] == 1 else 1
    with blas_threads(target):
        assert limits() == [target] * len(before)
    assert limits() == before
