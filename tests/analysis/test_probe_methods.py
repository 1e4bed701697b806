"""Probing methodology: folds by example, control tasks, MDL, baselines, transfer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferlens.analysis.probe_methods import (
    ProbeConfig,
    base_to_adapted_transfer,
    context_labels,
    control_labels,
    cross_lingual_transfer,
    extrapolation_probe,
    extrapolation_split,
    group_folds,
    linear_context_baseline,
    mdl_codelength,
    mdl_probe,
    probe_accuracy,
    selectivity,
)
from transferlens.analysis.stats import bootstrap_ci
from transferlens.results import AnalysisResult

FAST = ProbeConfig(n_boot=200)


def _examples(n_ex=80, per=4, d=10, K=3, L=2, signal=(0.0, 1.5), seed=0):
    """Token rows grouped in examples; the label is linearly encoded with layer strength."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_ex), per)
    y = rng.integers(0, K, g.size)
    dirs = rng.normal(size=(K, d))
    X = np.stack([rng.normal(size=(g.size, d)) + s * dirs[y] for s in signal[:L]])
    return X, y, g


def _one(res: AnalysisResult, **coords):
    recs = res.where(**coords)
    assert len(recs) == 1, (coords, recs)
    return recs[0]


# ----------------------------------------------------------------------------- folds, labels


def test_group_folds_never_split_a_group_and_are_balanced():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(50), rng.integers(1, 8, 50))
    folds = group_folds(g, 5, seed=3)
    for u in np.unique(g):
        assert len(np.unique(folds[g == u])) == 1
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 7
    np.testing.assert_array_equal(folds, group_folds(g, 5, seed=3))
    assert not np.array_equal(folds, group_folds(g, 5, seed=4))
    with pytest.raises(ValueError, match="number of groups"):
        group_folds(np.arange(3), 5)


def test_word_control_task_is_a_type_lookup():
    rng = np.random.default_rng(1)
    types = rng.choice([f"w{i}" for i in range(60)], size=2000)
    labels = rng.choice(["NOUN", "VERB", "ADJ"], size=2000, p=[0.6, 0.3, 0.1])
    ctl = control_labels(labels, types=types, seed=7)
    assert set(ctl) <= {"NOUN", "VERB", "ADJ"}
    for t in np.unique(types):
        assert len(set(ctl[types == t])) == 1
    np.testing.assert_array_equal(ctl, control_labels(labels, types=types, seed=7))
    assert not np.array_equal(ctl, control_labels(labels, types=types, seed=8))
    # a memoriser of type -> label, trained on some folds, is perfect on the held-out rows
    folds = group_folds(np.arange(2000), 5, seed=0)
    train, test = folds != 0, folds == 0
    memo = dict(zip(types[train], ctl[train], strict=True))
    seen = np.array([t in memo for t in types[test]])
    assert seen.mean() > 0.95
    pred = np.array([memo[t] for t in types[test][seen]])
    assert (pred == ctl[test][seen]).mean() == 1.0
    # drawn from the empirical distribution: over many types, close to it
    many = rng.integers(0, 20000, 40000)
    c2 = control_labels(labels.repeat(20), types=many, seed=0)
    assert abs((c2 == "NOUN").mean() - 0.6) < 0.05


def test_example_control_task_one_label_per_example_and_missing_kept():
    g = np.repeat(np.arange(30), 3)
    y = np.tile(["a", "b", "c"], 30).astype(object)
    y[5] = None
    ctl = control_labels(y, examples=g, seed=0)
    assert ctl[5] is None
    for u in range(30):
        vals = {v for v in ctl[g == u] if v is not None}
        assert len(vals) == 1
    with pytest.raises(ValueError, match="exactly one"):
        control_labels(y, seed=0)


@pytest.mark.slow
def test_linear_probe_is_more_selective_than_wide_mlp():
    """Hewitt & Liang: with the label linearly encoded in type embeddings, a wide, barely
    regularised MLP also fits the random per-type control labels; the linear probe cannot."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    n_types, d, n = 120, 6, 1200
    emb = rng.normal(size=(n_types, d))
    types = rng.integers(0, n_types, n)
    X = (emb[types] + 0.05 * rng.normal(size=(n, d)))[None]
    y = (emb @ rng.normal(size=(d, 3))).argmax(1)[types]
    cfg = ProbeConfig(n_folds=3, n_boot=200)
    lin = selectivity(X, y, types=types, config=cfg)
    mlp = selectivity(
        X,
        y,
        types=types,
        config=cfg,
        probe=MLPClassifier((512,), alpha=1e-6, solver="lbfgs", max_iter=400, random_state=0),
    )
    s_lin = _one(lin, quantity="selectivity")["value"]
    s_mlp = _one(mlp, quantity="selectivity")["value"]
    assert _one(lin, quantity="task_accuracy")["value"] > 0.85
    assert (
        _one(mlp, quantity="control_accuracy")["value"]
        > _one(lin, quantity="control_accuracy")["value"] + 0.2
    )
    assert s_lin > s_mlp + 0.2


def test_context_labels():
    ids = np.array([5, 7, 5, 9, 5, 7, 1, 2])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    prev = context_labels(ids, g, offset=-1, top_k=2)
    # neighbours: -, 5, 7, 5 | -, 5, 7, 1 ; counts 5:3, 7:2, 1:1 -> classes 5->0, 7->1, other 2
    np.testing.assert_array_equal(prev, [-1, 0, 1, 0, -1, 0, 1, 2])
    nxt = context_labels(ids, g, offset=1, top_k=1)
    np.testing.assert_array_equal(nxt[[3, 7]], [-1, -1])


def test_extrapolation_split_and_random_split_sizes():
    scores = np.repeat(np.arange(20), 3)  # constant within each example
    g = np.repeat(np.arange(20), 3)
    train = extrapolation_split(scores, train_fraction=0.5)
    assert train.sum() == 30 and scores[train].max() < scores[~train].min()
    hard = extrapolation_split(scores, train_fraction=0.25, easy="high")
    assert scores[hard].min() > scores[~hard].max()
    with pytest.raises(ValueError, match="one side"):
        extrapolation_split(np.ones(10))
    from transferlens.analysis.probe_labels import _random_split_like

    rnd = _random_split_like(train, g, seed=0)
    assert rnd.sum() == 30
    for u in range(20):
        assert len(np.unique(rnd[g == u])) == 1


# ----------------------------------------------------------------------------- accuracy


def test_probe_accuracy_records_intervals_and_paired_difference():
    X, y, g = _examples()
    res = probe_accuracy(
        {"base": X, "adapted": X[::-1].copy()}, y, g, config=FAST, layer_ids=[3, 7]
    )
    assert res.metric == "accuracy" and res.analysis == "probe"
    strong, weak = _one(res, model="base", layer=7), _one(res, model="base", layer=3)
    assert strong["value"] > 0.8 and abs(weak["value"] - 1 / 3) < 0.12
    assert strong["ci_low"] <= strong["value"] <= strong["ci_high"]
    assert strong["n"] == 320 and strong["n_groups"] == 80
    d = _one(res, model="adapted-base", layer=3)
    assert d["value"] == pytest.approx(strong["value"] - weak["value"])
    assert d["ci_low"] > 0


def test_fits_stopped_at_max_iter_are_counted_and_warned_about():
    from sklearn.exceptions import ConvergenceWarning

    X, y, g = _examples()
    done = probe_accuracy(X, y, g, config=FAST)
    assert done.data["probe_fits"] == {"total": 10, "unconverged": 0}  # 2 layers × 5 folds
    short = ProbeConfig(n_boot=200, max_iter=2)
    with pytest.warns(ConvergenceWarning, match="10 of 10 probe fits stopped"):
        res = probe_accuracy(X, y, g, config=short)
    assert res.data["probe_fits"] == {"total": 10, "unconverged": 10}
    with pytest.warns(ConvergenceWarning, match="mdl_probe: .* probe fits stopped"):
        mdl = mdl_probe(X, y, g, config=short)
    assert mdl.data["probe_fits"]["unconverged"] > 0
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two layer groups on two worker threads: counted there too
    try:
        with pytest.warns(ConvergenceWarning, match="selectivity: 20 of 20"):
            selectivity(X, y, g, config=short)  # task and control
    finally:
        torch.set_num_threads(before)


def test_bootstrap_matches_stats_bootstrap_ci():
    X, y, g = _examples(L=1, signal=(1.0,))
    res = probe_accuracy(X, y, g, config=ProbeConfig(n_boot=300, boot_seed=5, tol=1e-8))
    rec = _one(res, layer=0)
    # recompute the out-of-fold correctness and bootstrap it with the generic function
    from transferlens.analysis.probing import LinearProbe

    folds = group_folds(g, 5, seed=0)
    correct = np.zeros(y.size)
    for f in range(5):
        p = LinearProbe(tol=1e-8).fit(X[0][folds != f], y[folds != f])
        correct[folds == f] = p.predict(X[0][folds == f]) == y[folds == f]
    ref = bootstrap_ci(np.mean, correct, groups=g, n_boot=300, seed=5)
    assert rec["value"] == pytest.approx(ref.value)
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx((ref.ci_low, ref.ci_high))


def test_identical_lower_layers_give_identical_results_and_determinism():
    X, y, g = _examples(L=2, signal=(1.0, 1.0))
    rng = np.random.default_rng(5)
    adapted = X.copy()
    adapted[1] = rng.normal(size=adapted[1].shape)  # only the upper layer changed
    cfg = ProbeConfig(seeds=(0, 1), n_boot=200)
    res = probe_accuracy({"base": X, "adapted": adapted}, y, g, config=cfg)
    b, a = _one(res, model="base", layer=0), _one(res, model="adapted", layer=0)
    assert {k: b[k] for k in b if k != "model"} == {k: a[k] for k in a if k != "model"}
    diff0 = _one(res, model="adapted-base", layer=0)
    assert (diff0["value"], diff0["ci_low"], diff0["ci_high"]) == (0.0, 0.0, 0.0)
    assert _one(res, model="adapted-base", layer=1)["value"] < -0.3
    assert b["n_seeds"] == 2 and b["seed_std"] >= 0
    again = probe_accuracy({"base": X, "adapted": adapted}, y, g, config=cfg)
    assert again.records == res.records


def test_selectivity_of_example_level_task():
    X, y, g = _examples(per=1, n_ex=300, L=1, signal=(2.0,))
    res = selectivity(X, y, g, config=FAST)
    task, ctl = _one(res, quantity="task_accuracy"), _one(res, quantity="control_accuracy")
    sel = _one(res, quantity="selectivity")
    assert task["value"] > 0.8 and ctl["value"] < 0.5
    assert sel["value"] == pytest.approx(task["value"] - ctl["value"])
    assert sel["ci_low"] < sel["value"] < sel["ci_high"]
    assert res.config["control"] == "example"


# ----------------------------------------------------------------------------- MDL


class _Uniform:
    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return np.full((len(X), 4), 0.25)


class _LaplacePrior:
    """Ignores X: p(y=k) = (count_k + 1) / (t + K) over the training labels."""

    classes_ = np.arange(2)

    def fit(self, X, y):
        self.p = (np.bincount(y, minlength=2) + 1) / (len(y) + 2)
        return self

    def predict_proba(self, X):
        return np.tile(self.p, (len(X), 1))


def test_mdl_uniform_predictor_compresses_exactly_one():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(500, 3)), rng.integers(0, 4, 500)
    code = mdl_codelength(X, y, predictor_factory=_Uniform)
    assert code.compression == pytest.approx(1.0, abs=1e-12)
    assert code.codelength == pytest.approx(500 * 2.0)


def test_mdl_twenty_examples_by_hand():
    y = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0])
    X = np.zeros((20, 1))
    code = mdl_codelength(X, y, predictor_factory=_LaplacePrior, shuffle=False)
    # block ends: max(1, floor(f*20)) for f = .1%,...,100% -> 1,1,1,1,1,1,1,2,5,10,20
    assert code.block_ends == [1, 2, 5, 10, 20]
    lg = math.log2
    expected = (
        1 * lg(2)  # t1 = 1 row sent uniformly
        - lg(1 / 3)  # row 2 (label 1) from row 1 (one 0): p1 = (0+1)/(1+2)
        - 3 * lg(2 / 4)  # rows 3-5 from rows 1-2 (one 0, one 1): p = 2/4 each
        - 4 * lg(3 / 7)
        - 1 * lg(4 / 7)  # rows 6-10 (1,1,1,0,1) from rows 1-5 (three 0s, two 1s)
        - 4 * lg(5 / 12)
        - 6 * lg(7 / 12)  # rows 11-20 (four 0s, six 1s) from rows 1-10 (4, 6)
    )
    assert code.codelength == pytest.approx(expected, rel=1e-12)
    assert code.compression == pytest.approx(20 / expected, rel=1e-12)
    assert code.row_bits[0] == 1.0 and code.row_bits[1] == pytest.approx(-lg(1 / 3))


def test_mdl_real_labels_compress_better_than_control():
    X, y, g = _examples(n_ex=150, per=2, L=2, signal=(0.0, 2.0))
    res = mdl_probe(X, y, g, config=FAST)
    assert res.metric == "compression"
    task1, ctl1 = _one(res, layer=1, labels="task"), _one(res, layer=1, labels="control")
    assert task1["value"] > 1.5 > ctl1["value"]
    assert task1["ci_low"] > ctl1["ci_high"]
    assert task1["uniform_bits"] == pytest.approx(300 * math.log2(3))
    assert task1["value"] == pytest.approx(task1["uniform_bits"] / task1["codelength_bits"])
    # no information in layer 0: close to (and, paying for learning, below) compression 1
    assert 0.7 < _one(res, layer=0, labels="task")["value"] < 1.05


class _PenalisedLinear:
    """The default MDL probe, one fit at a time (the batched path must give the same bits)."""

    classes_ = np.arange(3)

    def fit(self, X, y):
        from transferlens.analysis.probing import fit_logistic

        self.fit_ = fit_logistic(
            X, y, n_classes=3, penalize_intercept=True, all_classes=True, tol=1e-9
        )
        return self

    def predict_proba(self, X):
        return self.fit_.log_proba(X)[0, 0].exp().numpy()


@pytest.mark.slow
def test_mdl_batched_blocks_match_one_fit_at_a_time():
    X, y, g = _examples(n_ex=200, per=2, L=1, signal=(1.0,))
    cfg = ProbeConfig(tol=1e-9)
    fast = mdl_codelength(X[0], y, groups=g, seed=3, config=cfg)
    slow = mdl_codelength(X[0], y, groups=g, seed=3, predictor_factory=_PenalisedLinear)
    assert fast.block_ends == slow.block_ends
    assert all(e % 2 == 0 for e in fast.block_ends)  # blocks end at example boundaries
    np.testing.assert_allclose(fast.row_bits, slow.row_bits, atol=1e-5)


def test_mdl_default_probe_codes_unseen_classes_finitely():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.full(30, 1), np.full(10, 2)]  # class 2 only at the end
    X = rng.normal(size=(70, 4)) + np.eye(3, 4)[y] * 2
    code = mdl_codelength(X, y, shuffle=False)
    assert np.all(np.isfinite(code.row_bits)) and code.codelength > 0


# ----------------------------------------------------------------------------- baselines


def test_linear_context_baseline_finds_previous_token():
    rng = np.random.default_rng(0)
    vocab, d, n_ex, per = 6, 12, 150, 6
    emb, emb_prev = rng.normal(size=(vocab, d)), rng.normal(size=(vocab, d))
    ids = rng.integers(0, vocab, n_ex * per)
    g = np.repeat(np.arange(n_ex), per)
    prev = np.r_[0, ids[:-1]]
    first = np.r_[True, g[1:] != g[:-1]]
    X = (
        emb[ids]
        + np.where(first[:, None], 0.0, emb_prev[prev])
        + 0.1 * rng.normal(size=(ids.size, d))
    )[None]
    res = linear_context_baseline(X, ids, g, top_k=10, config=FAST)
    back = _one(res, offset=-1, quantity="accuracy")
    fwd = _one(res, offset=1, quantity="accuracy")
    assert back["value"] > 0.9
    assert fwd["value"] < _one(res, offset=1, quantity="majority")["value"] + 0.1
    assert back["n"] == n_ex * (per - 1)


def test_extrapolation_detects_a_failure_to_extrapolate():
    rng = np.random.default_rng(0)
    n = 800
    length = rng.integers(1, 100, n)
    X = rng.normal(size=(n, 2))
    short = length <= np.quantile(length, 0.5, method="lower")
    y = np.where(short, X[:, 0] > 0, X[:, 1] > 0).astype(int)  # the rule changes for long rows
    res = extrapolation_probe(X[None], y, length, config=ProbeConfig(seeds=(0, 1, 2), n_boot=200))
    ex, rnd = _one(res, split="extrapolation"), _one(res, split="random")
    gap = _one(res, split="gap")
    assert ex["value"] < 0.62 < rnd["value"]
    assert gap["value"] == pytest.approx(rnd["value"] - ex["value"])
    assert ex["n_train"] == rnd["n_train"] == int(short.sum())
    assert rnd["n_seeds"] == 3 and rnd["seed_std"] > 0 and ex["seed_std"] == 0


# ----------------------------------------------------------------------------- transfer


def _parallel(shared: bool, n=240, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    da, db = rng.normal(size=d), rng.normal(size=d)
    db = db - (db @ da) / (da @ da) * da  # orthogonal to A's direction
    direction_b = da if shared else db
    Xa = rng.normal(size=(n, d)) + 2.0 * np.outer(2 * y - 1, da) / np.linalg.norm(da)
    Xb = rng.normal(size=(n, d)) + 2.0 * np.outer(2 * y - 1, direction_b) / np.linalg.norm(
        direction_b
    )
    ids = np.array([f"p{i}" for i in range(n)])
    return {"a": Xa[None], "b": Xb[None]}, {"a": y, "b": y}, {"a": ids, "b": ids}


@pytest.mark.parametrize("shared", [True, False])
def test_cross_lingual_transfer_matrix(shared):
    acts, labels, groups = _parallel(shared)
    res = cross_lingual_transfer(acts, labels, groups, config=FAST)
    assert len(res.records) == 4
    assert _one(res, train_language="a", test_language="a")["value"] > 0.9
    assert _one(res, train_language="b", test_language="b")["value"] > 0.9
    ab = _one(res, train_language="a", test_language="b")
    if shared:
        assert ab["value"] > 0.9
    else:
        assert abs(ab["value"] - 0.5) < 0.1 and ab["ci_low"] < 0.5 + 0.12


def test_base_to_adapted_identical_activations():
    X, y, g = _examples()
    res = base_to_adapted_transfer(X, X.copy(), y, g, config=FAST)
    for li in (0, 1):
        same = _one(res, train_model="base", test_model="base", layer=li)
        cross = _one(res, train_model="base", test_model="adapted", layer=li, quantity="accuracy")
        assert cross["value"] == same["value"]
        drop = _one(res, train_model="base", test_model="adapted", layer=li, quantity="drop")
        assert (drop["value"], drop["ci_low"], drop["ci_high"]) == (0.0, 0.0, 0.0)
    drift = X.copy()
    drift[1] = drift[1] @ np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))[0]
    res2 = base_to_adapted_transfer(X, drift, y, g, config=FAST)
    assert (
        _one(res2, train_model="base", test_model="adapted", layer=1, quantity="drop")["value"]
        > 0.2
    )


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    X, y, g = _examples()
    bad = X.copy()
    bad[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"'task, layer 1' has 1 non-finite"):
        probe_accuracy(bad, y, g, config=FAST)
    ym = y.astype(float)
    ym[:3] = np.nan
    with pytest.raises(ValueError, match="3 of 320 rows have a missing label"):
        probe_accuracy(X, ym, g, config=FAST)
    res = probe_accuracy(X, ym, g, config=ProbeConfig(drop_missing=True, n_boot=100))
    assert _one(res, layer=1)["n"] == 317
    with pytest.raises(ValueError, match="1 class"):
        probe_accuracy(X, np.zeros(320), g, config=FAST)
    with pytest.raises(ValueError, match="groups need one example id per row"):
        probe_accuracy(X, y, g[:10], config=FAST)
    with pytest.raises(ValueError, match="same number of layers and rows"):
        probe_accuracy({"base": X, "adapted": X[:1]}, y, g, config=FAST)
