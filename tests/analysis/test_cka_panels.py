"""The kernel panels of the layer × layer linear CKA: coverage, memory, threads, precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.analysis import cka_linear
from transferlens.analysis.cka_linear import panel_sides, panels
from transferlens.analysis.cka_matrix import cka_matrix, hsic_matrix


@pytest.mark.parametrize(("n", "w", "c"), [(10, 3, 4), (100, 32, 32), (97, 40, 50), (64, 64, 64)])
def test_panels_cover_every_kernel_entry_once(n, w, c):
    seen = np.zeros((n, n), dtype=int)
    for r0, r1, c0, c1 in panels(n, w, c):
        assert r1 - r0 <= w and c1 - c0 <= max(w, c)
        if c0 == r0:  # the square on the diagonal, counted once
            assert c1 == r1
            seen[r0:r1, c0:c1] += 1
        else:  # right of the diagonal, counted for itself and its mirror image
            assert c0 >= r1
            seen[r0:r1, c0:c1] += 1
            seen[c0:c1, r0:r1] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize(
    ("n", "nl", "block_bytes"),
    [(10_000, 60, 2**29), (10_000, 4, 2**29), (600, 5, 20_000), (50, 3, 2**29)],
)
def test_panel_sides_respect_the_memory_budget(n, nl, block_bytes):
    w, c = panel_sides(n, nl, 4, block_bytes)
    assert 1 <= w <= min(n, 1024) and 32 <= c <= 2048
    assert w >= min(n, 32)
    blocks = -(-n // w)
    assert (blocks - 1) * w < n  # rows split evenly: no empty last block
    used = nl * w * max(w, min(c, n)) * 4  # one buffer (each worker thread holds one)
    assert used <= max(block_bytes, nl * 32 * 32 * 4 * 2)


def _layers(seed, n, widths, shared):
    rng = np.random.default_rng(seed)
    return [
        (
            np.tanh(shared @ rng.standard_normal((shared.shape[1], p)))
            + (0.5 + i) * rng.standard_normal((n, p))
        ).astype(np.float32)
        for i, p in enumerate(widths)
    ]


@pytest.fixture
def two_models():
    rng = np.random.default_rng(0)
    n = 700
    Z = rng.standard_normal((n, 5))
    return _layers(1, n, (24, 40, 16), Z), _layers(2, n, (32, 8), Z)


def test_result_does_not_depend_on_the_number_of_threads(two_models):
    A, B = two_models
    prev = torch.get_num_threads()
    got = {}
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got[threads] = (
                cka_matrix(A, B, dtype=torch.float32, method="gram", block_bytes=200_000),
                cka_matrix(A, dtype=torch.float32, method="gram", block_bytes=200_000),
            )
    finally:
        torch.set_num_threads(prev)
    for threads in (2, 3):
        np.testing.assert_array_equal(got[threads][0], got[1][0])
        np.testing.assert_array_equal(got[threads][1], got[1][1])


def test_float32_panels_stay_close_to_float64(two_models):
    A, B = two_models
    ref = cka_matrix(A, B, debiased=True, method="features")
    fast = cka_matrix(A, B, debiased=True, dtype=torch.float32, method="gram", block_bytes=50_000)
    np.testing.assert_allclose(fast, ref, atol=1e-6)
    exact = cka_matrix(A, B, debiased=True, method="gram", block_bytes=50_000)
    np.testing.assert_allclose(exact, ref, atol=1e-12)


def test_torch_path_equals_numpy_path(two_models, monkeypatch):
    """The element-wise work runs in NumPy on CPU and in torch elsewhere (GPUs): both agree."""
    A, B = two_models
    want = [hsic_matrix(A, B, unbiased=True, method="gram", block_bytes=100_000)]
    want.append(hsic_matrix(A, method="gram", block_bytes=100_000))
    monkeypatch.setattr(cka_linear, "_on_numpy", lambda t: False)
    got = [hsic_matrix(A, B, unbiased=True, method="gram", block_bytes=100_000)]
    got.append(hsic_matrix(A, method="gram", block_bytes=100_000))
    for g, w in zip(got, want, strict=True):
        for x, y in zip(g[:3], w[:3], strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=0)
