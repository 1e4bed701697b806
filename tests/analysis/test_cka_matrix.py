"""Layer × layer CKA matrices, per-group matrices and minibatch CKA against per-pair loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.analysis.cka_matrix import (
    cka_matrix,
    cka_matrix_by_group,
    hsic_matrix,
)
from transferlens.analysis.minibatch_cka import MinibatchCKA
from transferlens.analysis.similarity import (
    cka,
    gram_linear,
    gram_rbf,
    hsic_unbiased,
    linear_cka,
)


def layers(seed=0, n=120, widths=(8, 20, 5), shared=None):
    """Layers that share a latent, so CKA values are spread out (not all ≈0 or ≈1)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 6)) if shared is None else shared
    out = []
    for i, p in enumerate(widths):
        noise = 0.5 + i
        out.append(np.tanh(Z @ rng.standard_normal((6, p))) + noise * rng.standard_normal((n, p)))
    return out, Z


def loop(A, B, **kw):
    return np.array([[cka(a, b, **kw) for b in B] for a in A])


@pytest.mark.parametrize("method", ["features", "gram", "auto"])
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_matrix_equals_per_pair_loop(method, debiased):
    A, Z = layers(0)
    B, _ = layers(1, widths=(30, 3, 12, 7), shared=Z)
    got = cka_matrix(A, B, debiased=debiased, method=method)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, loop(A, B, debiased=debiased), atol=1e-12)
    within = cka_matrix(A, debiased=debiased, method=method)
    np.testing.assert_allclose(within, loop(A, A, debiased=debiased), atol=1e-12)
    np.testing.assert_allclose(within, within.T, atol=0)
    np.testing.assert_allclose(np.diag(within), 1.0, atol=1e-12)
    assert got.std() > 0.1  # a spread of values, so the comparison means something


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_matrix_equals_per_pair_loop(debiased):
    A, Z = layers(2, n=60)
    B, _ = layers(3, n=60, widths=(4, 9), shared=Z)
    kw = {"kind": "rbf", "threshold": 0.8, "debiased": debiased}
    np.testing.assert_allclose(cka_matrix(A, B, **kw), loop(A, B, **kw), atol=1e-12)
    np.testing.assert_allclose(cka_matrix(A, **kw), loop(A, A, **kw), atol=1e-12)


def test_small_blocks_and_wide_layers_give_the_same_matrix():
    # tiny memory blocks force one slab per layer (features) and 32 × 32 panels (kernels:
    # 600 rows -> 18 blocks of 32 and one of 24); n < p for the second case
    for n, wa, wb in ((600, (90, 60, 75), (50, 80)), (40, (90, 60), (120,))):
        A, Z = layers(4, n=n, widths=wa)
        B, _ = layers(5, n=n, widths=wb, shared=Z)
        ref = loop(A, B, debiased=True)
        for method in ("features", "gram"):
            got = cka_matrix(A, B, debiased=True, method=method, block_bytes=20_000)
            np.testing.assert_allclose(got, ref, atol=1e-12)
            within = cka_matrix(A, method=method, block_bytes=20_000)
            np.testing.assert_allclose(within, loop(A, A), atol=1e-12)


def test_stacked_tensor_input_and_float32_products():
    A, Z = layers(6, widths=(16, 16, 16))
    B, _ = layers(7, widths=(16, 16), shared=Z)
    stacked_a = torch.from_numpy(np.stack(A)).float()  # L × n × p, fp32
    stacked_b = torch.from_numpy(np.stack(B)).to(torch.bfloat16)
    ref = loop([a.double().numpy() for a in stacked_a], [b.double().numpy() for b in stacked_b])
    np.testing.assert_allclose(cka_matrix(stacked_a, stacked_b), ref, atol=1e-12)
    for method in ("features", "gram"):
        fast = cka_matrix(stacked_a, stacked_b, dtype=torch.float32, method=method)
        np.testing.assert_allclose(fast, ref, atol=1e-5)
    assert stacked_a.dtype == torch.float32  # input untouched


def test_hsic_matrix_returns_true_hsic_values():
    A, Z = layers(8, n=50)
    B, _ = layers(9, n=50, widths=(7,), shared=Z)
    cross, sa, sb, n = hsic_matrix(A, B, unbiased=True)
    assert n == 50
    for i, a in enumerate(A):
        assert float(cross[i, 0]) == pytest.approx(
            hsic_unbiased(gram_linear(a), gram_linear(B[0])), rel=1e-10
        )
        assert float(sa[i]) == pytest.approx(
            hsic_unbiased(gram_linear(a), gram_linear(a)), rel=1e-10
        )


def test_by_group_equals_calls_on_row_subsets():
    A, Z = layers(10, n=150)
    B, _ = layers(11, n=150, widths=(10, 4), shared=Z)
    langs = np.array(["sv", "en", "de"] * 50)
    got = cka_matrix_by_group(A, B, groups=langs, debiased=True)
    assert list(got) == ["de", "en", "sv"]
    for lang, mat in got.items():
        rows = langs == lang
        np.testing.assert_allclose(
            mat, loop([a[rows] for a in A], [b[rows] for b in B], debiased=True), atol=1e-12
        )
    within = cka_matrix_by_group(np.stack(A[:1] * 2), groups=langs)
    assert within["en"].shape == (2, 2)
    with pytest.raises(ValueError, match="one label per example: 150"):
        cka_matrix_by_group(A, B, groups=langs[:10])
    with pytest.raises(ValueError, match=r"\[group 'x', 3 rows\].*at least 4"):
        cka_matrix_by_group(A, B, groups=np.array(["x"] * 3 + ["y"] * 147), debiased=True)


def test_matrix_errors_name_the_layer():
    A, _ = layers(12)
    bad = [a.copy() for a in A]
    bad[2][[0, 3], 1] = np.nan
    with pytest.raises(ValueError, match=r"resid_post: A\[2\] has 2 non-finite values"):
        cka_matrix(bad, name="resid_post")
    const = [a.copy() for a in A]
    const[1][:] = 1.5
    with pytest.raises(ValueError, match=r"B\[1\] is constant"):
        cka_matrix(A, const)
    with pytest.raises(ValueError, match=r"B\[0\] has 100 rows .* first layer has 120"):
        cka_matrix(A, [A[0][:100]])
    with pytest.raises(ValueError, match="at least 4"):
        cka_matrix([a[:3] for a in A], debiased=True)
    with pytest.raises(ValueError, match="max_gram_bytes"):
        cka_matrix(A, kind="rbf", max_gram_bytes=1000)
    with pytest.raises(ValueError, match="L × n × p"):
        cka_matrix(np.zeros((2, 3, 4, 5)))


# --------------------------------------------------------------------------------------------
# Minibatch CKA


def test_minibatch_on_independent_data_is_near_zero_unlike_mean_of_batch_cka():
    rng = np.random.default_rng(0)
    acc, per_batch = MinibatchCKA(), []
    for _ in range(60):
        x, y = rng.standard_normal((64, 512)), rng.standard_normal((64, 512))
        acc.update(x, y)
        per_batch.append(linear_cka(x, y))
    assert abs(acc.compute()) < 0.02  # reference: ≈0.01
    assert np.mean(per_batch) == pytest.approx(0.89, abs=0.02)  # reference: ≈0.89
    assert acc.n_batches_ == 60 and acc.n_examples_ == 60 * 64


def test_minibatch_is_close_to_full_data_debiased_cka():
    rng = np.random.default_rng(1)
    n = 4096
    Z = rng.standard_normal((n, 16))
    X = Z @ rng.standard_normal((16, 96)) + 2 * rng.standard_normal((n, 96))
    Y = np.tanh(Z @ rng.standard_normal((16, 64))) + rng.standard_normal((n, 64))
    acc = MinibatchCKA()
    for b in range(0, n, 128):
        acc.update(X[b : b + 128], Y[b : b + 128])
    full = linear_cka(X, Y, debiased=True)
    assert 0.2 < full < 0.8
    assert acc.compute() == pytest.approx(full, abs=0.02)


@pytest.mark.parametrize("kind", ["linear", "rbf"])
def test_minibatch_equals_sum_of_per_batch_unbiased_hsic(kind):
    A, Z = layers(13, n=90)
    B, _ = layers(14, n=90, widths=(6, 11), shared=Z)
    gram = gram_linear if kind == "linear" else gram_rbf
    sizes = [30, 25, 35]  # unequal batches
    acc, within = MinibatchCKA(kind), MinibatchCKA(kind)
    xy, xx, yy = np.zeros((3, 2)), np.zeros(3), np.zeros(2)
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        start += size
        ga = [gram(a[rows]) for a in A]
        gb = [gram(b[rows]) for b in B]
        xy += [[hsic_unbiased(k, ell) for ell in gb] for k in ga]
        xx += [hsic_unbiased(k, k) for k in ga]
        yy += [hsic_unbiased(ell, ell) for ell in gb]
        acc.update([a[rows] for a in A], [b[rows] for b in B])
        within.update(np.stack([a[rows] for a in A[:1]] * 2))
    np.testing.assert_allclose(acc.compute(), xy / np.sqrt(np.outer(xx, yy)), atol=1e-12)
    np.testing.assert_allclose(within.compute(), np.ones((2, 2)), atol=1e-12)


def test_minibatch_errors():
    rng = np.random.default_rng(0)
    acc = MinibatchCKA()
    with pytest.raises(ValueError, match="no batches yet"):
        acc.compute()
    with pytest.raises(ValueError, match="batch of 3 examples is too small"):
        acc.update(rng.standard_normal((3, 5)), rng.standard_normal((3, 5)))
    acc.update(rng.standard_normal((8, 5)), rng.standard_normal((8, 5)))
    with pytest.raises(ValueError, match="same layers every batch"):
        acc.update([rng.standard_normal((8, 5))] * 2, rng.standard_normal((8, 5)))
    with pytest.raises(ValueError, match="Y has 7 rows|B\\[0\\] has 7 rows"):
        acc.update(rng.standard_normal((8, 5)), rng.standard_normal((7, 5)))
    acc.reset()
    assert acc.n_batches_ == 0
    with pytest.raises(ValueError, match="kind must be"):
        MinibatchCKA("cosine")
