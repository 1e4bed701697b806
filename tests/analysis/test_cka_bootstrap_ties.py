"""The CKA bootstrap without ties: resamples never pair a unit with its own copy."""

import itertools

import numpy as np
import pytest

from transferlens.analysis.cka_stats import cka_bootstrap
from transferlens.analysis.similarity import linear_cka
from transferlens.analysis.stats import unit_draws


def weighted_u_hsic(X, Y, w):
    """Song et al.'s U-statistic over 4-tuples of distinct rows, each tuple weighted by the
    product of its rows' multiplicities: written from the definition, one tuple at a time."""
    K, L = X @ X.T, Y @ Y.T
    num = den = 0.0
    for i, j, q, r in itertools.permutations(np.flatnonzero(w), 4):
        p = w[i] * w[j] * w[q] * w[r]
        num += p * (K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2.0 * K[i, j] * L[i, q])
        den += p
    return num / den


def brute_cka(X, Y, w):
    return weighted_u_hsic(X, Y, w) / np.sqrt(weighted_u_hsic(X, X, w) * weighted_u_hsic(Y, Y, w))


def small_data(n=9, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    Y = X[:, :3] @ rng.normal(size=(3, 5)) + rng.normal(size=(n, 5)) + 2.0
    return X, Y


@pytest.mark.parametrize("method", ["units", "features"])
def test_resamples_equal_the_weighted_u_statistic_by_definition(method):
    X, Y = small_data()
    got = cka_bootstrap(
        X, Y, debiased=True, n_boot=6, seed=2, method=method, keep_distribution=True
    )
    draws = unit_draws(X.shape[0], 6, 2)
    ref = [brute_cka(X, Y, np.bincount(next(draws), minlength=X.shape[0])) for _ in range(6)]
    np.testing.assert_allclose(got.distribution, ref, rtol=1e-10, atol=1e-12)
    # and with every multiplicity 1 the weighted statistic is debiased CKA itself
    assert brute_cka(X, Y, np.ones(X.shape[0])) == pytest.approx(
        linear_cka(X, Y, debiased=True), abs=1e-12
    )
    assert got.value == pytest.approx(linear_cka(X, Y, debiased=True), abs=1e-14)


def test_resamples_do_not_depend_on_where_the_features_are_centred():
    X, Y = small_data(n=12, seed=1)
    a = cka_bootstrap(X, Y, debiased=True, n_boot=20, seed=0, keep_distribution=True)
    b = cka_bootstrap(X + 7.0, 3.0 * Y - 4.0, debiased=True, n_boot=20, seed=0,
                      keep_distribution=True)  # fmt: skip
    np.testing.assert_allclose(a.distribution, b.distribution, atol=1e-10)


def test_excluding_ties_removes_the_resampling_shift():
    # 60 units of 64 dimensions: copies paired with themselves raise the resampled CKA
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(60, 8))
    X = Z @ rng.normal(size=(8, 64)) + 3.0 * rng.normal(size=(60, 64))
    Y = Z @ rng.normal(size=(8, 64)) + 3.0 * rng.normal(size=(60, 64))
    keep = cka_bootstrap(X, Y, debiased=True, n_boot=400, seed=1, ties="keep")
    excl = cka_bootstrap(X, Y, debiased=True, n_boot=400, seed=1)
    assert excl.value == keep.value
    assert keep.bias > 0.05
    assert abs(excl.bias) < 0.2 * keep.bias
    assert excl.ci_low < excl.value < excl.ci_high


def test_ties_option_is_checked():
    X, Y = small_data()
    with pytest.raises(ValueError, match="debiased=True and one row per unit"):
        cka_bootstrap(X, Y, ties="exclude", n_boot=5)
    with pytest.raises(ValueError, match="one row per unit"):
        cka_bootstrap(X, Y, debiased=True, groups=np.arange(9) // 3, ties="exclude", n_boot=5)
    with pytest.raises(ValueError, match="ties must be"):
        cka_bootstrap(X, Y, debiased=True, ties="drop", n_boot=5)
    with pytest.raises(ValueError, match="ties='exclude' needs"):
        cka_bootstrap(X, Y, kind="rbf", ties="exclude", n_boot=5)
    # "auto" keeps ties where they cannot be excluded: the generic bootstrap's numbers
    grouped = cka_bootstrap(X, Y, debiased=True, groups=np.arange(9) // 3, n_boot=5, seed=0)
    kept = cka_bootstrap(
        X, Y, debiased=True, groups=np.arange(9) // 3, n_boot=5, seed=0, ties="keep"
    )
    assert grouped.ci == kept.ci
