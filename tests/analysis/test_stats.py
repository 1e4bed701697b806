"""Bootstrap over units, paired differences, permutation baselines, seed summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.analysis.cka_stats import cka_bootstrap, cka_permutation_test
from transferlens.analysis.similarity import cka, linear_cka
from transferlens.analysis.stats import (
    BootstrapResult,
    Units,
    bootstrap_ci,
    paired_bootstrap,
    percentile_interval,
    permutation_test,
    seed_summary,
)
from transferlens.results import AnalysisResult


def test_ci_contains_the_truth_and_has_the_analytic_width():
    rng = np.random.default_rng(0)
    x = rng.normal(1.3, 2.0, size=400)
    res = bootstrap_ci(np.mean, x, n_boot=2000, seed=1)
    assert res.value == pytest.approx(x.mean())
    assert res.ci_low < 1.3 < res.ci_high
    analytic = 2 * 1.96 * x.std(ddof=1) / np.sqrt(400)
    assert res.ci_high - res.ci_low == pytest.approx(analytic, rel=0.1)
    assert res.n_units == 400 and res.n_boot == 2000 and res.level == 0.95


def test_coverage_over_repeated_experiments():
    rng = np.random.default_rng(5)
    hits = 0
    for k in range(100):
        x = rng.exponential(1.0, size=80)  # skewed; true mean 1
        res = bootstrap_ci(np.mean, x, n_boot=400, seed=k)
        hits += res.ci_low <= 1.0 <= res.ci_high
    assert 85 <= hits <= 100  # nominal 95 (percentile intervals undercover a little)


def test_groups_are_resampled_whole():
    rng = np.random.default_rng(0)
    G, size = 40, 25
    groups = np.repeat(np.arange(G), size)
    group_effect = rng.normal(0, 1, G)
    tokens = group_effect[groups] + 0.01 * rng.normal(size=G * size)  # tokens ~ copies

    seen = []

    def stat(values, gids):
        ids, counts = np.unique(gids, return_counts=True)
        assert np.all(counts % size == 0)  # every drawn group came with all its 25 rows
        seen.append(len(ids))
        return values.mean()

    res = bootstrap_ci(stat, tokens, groups, groups=groups, n_boot=1000, seed=0)
    assert res.n_units == G
    assert seen[0] == G and max(seen[1:]) < G  # full data, then draws that repeat groups
    # width matches the group-level analytic interval, not the (5× narrower) token-level one
    group_width = 2 * 1.96 * group_effect.std(ddof=1) / np.sqrt(G)
    token_width = 2 * 1.96 * tokens.std(ddof=1) / np.sqrt(G * size)
    width = res.ci_high - res.ci_low
    assert width == pytest.approx(group_width, rel=0.15)
    assert width > 3 * token_width
    naive = bootstrap_ci(np.mean, tokens, n_boot=1000, seed=0)
    assert naive.ci_high - naive.ci_low == pytest.approx(token_width, rel=0.15)


def test_units_rows_keep_draw_order_and_string_labels():
    labels = np.array(["p2", "p1", "p2", "p3", "p1", "p2"])
    u = Units(6, labels)
    assert u.count == 3  # units: p1=0, p2=1, p3=2
    np.testing.assert_array_equal(u.rows(np.array([2, 0, 0])), [3, 1, 4, 1, 4])
    np.testing.assert_array_equal(u.weights(np.array([2, 0, 0])), [0, 2, 0, 1, 2, 0])


def test_same_seed_same_numbers_different_seed_different():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    a = bootstrap_ci(np.median, x, seed=7, keep_distribution=True)
    b = bootstrap_ci(np.median, x, seed=7, keep_distribution=True)
    c = bootstrap_ci(np.median, x, seed=8, keep_distribution=True)
    assert a.ci == b.ci
    np.testing.assert_array_equal(a.distribution, b.distribution)
    assert not np.array_equal(a.distribution, c.distribution)


def test_torch_arrays_are_resampled_too():
    x = torch.arange(100, dtype=torch.float64)
    res = bootstrap_ci(lambda t: float(t.mean()), x, n_boot=200)
    ref = bootstrap_ci(np.mean, x.numpy(), n_boot=200)
    assert res.ci == pytest.approx(ref.ci)


def test_paired_identical_models_give_exactly_zero():
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.7
    groups = np.repeat(np.arange(60), 5)
    res = paired_bootstrap(np.mean, (correct,), (correct.copy(),), groups=groups)
    assert (res.value, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
    X = rng.normal(size=(300, 6))
    res = paired_bootstrap(linear_cka, (X, X), (X.copy(), X.copy()), n_boot=20)
    assert res.ci == (0.0, 0.0)


def test_paired_shares_resamples_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 1, 500)  # shared by both models: cancels when paired
    a = difficulty + rng.normal(0, 0.1, 500)
    b = difficulty + 0.05 + rng.normal(0, 0.1, 500)
    paired = paired_bootstrap(np.mean, (a,), (b,), keep_distribution=True)
    ia = bootstrap_ci(np.mean, a, keep_distribution=True)
    ib = bootstrap_ci(np.mean, b, keep_distribution=True)
    # same seed, same draws: the paired difference is exactly the difference of the two runs
    np.testing.assert_allclose(paired.distribution, ia.distribution - ib.distribution, atol=1e-12)
    assert paired.value == pytest.approx(a.mean() - b.mean())
    assert (paired.value_a, paired.value_b) == pytest.approx((a.mean(), b.mean()))
    assert paired.ci_high < 0  # the 0.05 shift is detected
    unpaired = np.quantile(ia.distribution - np.roll(ib.distribution, 1), [0.025, 0.975])
    assert paired.ci_high - paired.ci_low < 0.2 * (unpaired[1] - unpaired[0])


def test_permutation_test_p_value_and_null():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    Y = X @ rng.normal(size=(5, 4)) + 0.5 * rng.normal(size=(80, 4))
    res = permutation_test(linear_cka, X, Y, n_perm=49, seed=0, keep_null=True)
    assert res.p_value == pytest.approx(1 / 50)  # +1 correction: never 0
    assert res.value > res.null_quantile > res.null_mean > 0
    assert res.null.shape == (49,)

    # independent data: p-values roughly uniform, observed value looks like the null
    def corr(x, y):
        return abs(np.corrcoef(x[:, 0], y[:, 0])[0, 1])

    ps = [
        permutation_test(
            corr, rng.normal(size=(30, 3)), rng.normal(size=(30, 3)), n_perm=49, seed=s
        ).p_value
        for s in range(100)
    ]
    assert 0.4 < np.mean(ps) < 0.6
    assert min(ps) >= 1 / 50


def test_seed_summary():
    s = seed_summary([0.8, 0.82, 0.79, 0.85])
    assert s.mean == pytest.approx(0.815)
    assert s.std == pytest.approx(np.std([0.8, 0.82, 0.79, 0.85], ddof=1))
    assert (s.min, s.max, s.n) == (0.79, 0.85, 4)
    assert np.isnan(seed_summary([0.5]).std)
    with pytest.raises(ValueError, match="1 of 2 values are NaN"):
        seed_summary([0.5, np.nan])


def test_results_record_round_trip():
    res = BootstrapResult(0.5, 0.4, 0.6, 0.95, 30, 1000)
    table = AnalysisResult("similarity", "cka", "linear_cka")
    rec = table.add(**res.record(), layer=3)
    assert rec == {"layer": 3, "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 30}


def test_bad_input():
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        bootstrap_ci(np.mean, x, level=95)
    with pytest.raises(ValueError, match="one label per row: 10"):
        bootstrap_ci(np.mean, x, groups=[0, 1])
    with pytest.raises(ValueError, match="at least 2 units"):
        bootstrap_ci(np.mean, x, groups=np.zeros(10))
    with pytest.raises(ValueError, match="array 1 has 9 rows but array 0 has 10"):
        bootstrap_ci(lambda a, b: 0.0, x, x[:9])
    with pytest.raises(ValueError, match="n_boot must be at least 1"):
        bootstrap_ci(np.mean, x, n_boot=0)
    with pytest.raises(ValueError, match="resampled statistics are NaN"):
        percentile_interval(np.array([1.0, np.nan]))


# --------------------------------------------------------------------------------------------
# Fast CKA versions agree with the generic functions (same draws, same numbers)


def cka_data(seed=0, n=150, p1=9, p2=14):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p1))
    Y = np.tanh(X @ rng.normal(size=(p1, p2))) + 2.0 * rng.normal(size=(n, p2)) + 3.0
    return X, Y


@pytest.mark.parametrize("method", ["units", "features"])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_cka_bootstrap_equals_generic_bootstrap(method, debiased, grouped):
    X, Y = cka_data()
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 35, size=150) if grouped else None  # unequal group sizes
    ref = bootstrap_ci(
        lambda x, y: linear_cka(x, y, debiased=debiased),
        X,
        Y,
        groups=groups,
        n_boot=30,
        seed=4,
        keep_distribution=True,
    )
    got = cka_bootstrap(
        X,
        Y,
        groups=groups,
        debiased=debiased,
        n_boot=30,
        seed=4,
        method=method,
        ties="keep",
        keep_distribution=True,
    )
    np.testing.assert_allclose(got.distribution, ref.distribution, atol=1e-12)
    assert got.value == pytest.approx(ref.value, abs=1e-14)
    assert got.ci == pytest.approx(ref.ci, abs=1e-12)
    assert got.n_units == ref.n_units


def test_cka_bootstrap_rbf_equals_generic():
    X, Y = cka_data(n=60)
    groups = np.repeat(np.arange(20), 3)
    got = cka_bootstrap(X, Y, kind="rbf", groups=groups, n_boot=20, seed=0)
    ref = bootstrap_ci(lambda x, y: cka(x, y, kind="rbf"), X, Y, groups=groups, n_boot=20)
    assert got.ci == pytest.approx(ref.ci, abs=1e-12)


def test_cka_bootstrap_reports_resampling_bias(caplog):
    X, Y = cka_data(n=60)
    groups = np.repeat(np.arange(20), 3)
    with caplog.at_level("WARNING", logger="transferlens.analysis.stats"):
        small = cka_bootstrap(X, Y, groups=groups, n_boot=300)
    # duplicated units act like fewer examples, which raises CKA: the shift is reported
    assert small.bias > 0.03
    assert "outside its 95% bootstrap interval" in caplog.text
    Xl, Yl = cka_data(n=3000)
    large = cka_bootstrap(Xl, Yl, n_boot=200, debiased=True)
    assert large.ci_low < large.value < large.ci_high
    assert abs(large.bias) < 0.25 * (large.ci_high - large.ci_low)


@pytest.mark.parametrize("kind", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(40, 30, 25), (60, 3, 2)])  # kernel path, feature path
def test_cka_permutation_test_equals_generic(kind, debiased, shape):
    X, Y = cka_data(1, *shape)
    fn = lambda x, y: cka(x, y, kind=kind, debiased=debiased)  # noqa: E731
    ref = permutation_test(fn, X, Y, n_perm=30, seed=2, keep_null=True)
    got = cka_permutation_test(
        X, Y, kind=kind, debiased=debiased, n_perm=30, seed=2, keep_null=True
    )
    np.testing.assert_allclose(got.null, ref.null, atol=1e-12)
    assert (got.value, got.p_value) == pytest.approx((ref.value, ref.p_value), abs=1e-12)


def test_cka_permutation_baseline_matches_chance_level():
    # independent wide data: biased CKA is high by chance, and the null says so
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 512)), rng.normal(size=(64, 512))
    res = cka_permutation_test(X, Y, n_perm=50)
    assert res.value > 0.8 and res.null_mean > 0.8
    assert res.p_value > 0.05
    deb = cka_permutation_test(X, Y, debiased=True, n_perm=50)
    assert abs(deb.null_mean) < 0.01
