"""The probe solver's row blocks, per-problem settings, preconditioner and worker threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferlens.analysis.logreg_objective as obj_mod
from transferlens.analysis.logreg import PreparedLayers, fit_logistic
from transferlens.analysis.probe_methods import ProbeConfig, mdl_probe, selectivity
from transferlens.analysis.workers import layer_groups, run_groups


def _data(n=600, d=10, K=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 2.0
    y = (X[:, :K] + rng.normal(size=(n, K)) * 2).argmax(1)
    return X, y


def _cv_masks(n, folds=5, seed=0):
    f = np.random.default_rng(seed).integers(0, folds, n)
    return np.stack([f != k for k in range(folds)]), f


def _prefix_masks(n, ends):
    return np.stack([np.arange(n) < a for a in ends])


def test_row_blocks_cover_each_problem_exactly_and_skip_unused_rows():
    n = 1000
    cv, fold = _cv_masks(n)
    cv[:, :7] = False  # rows no problem trains on (missing labels)
    pre = _prefix_masks(n, [10, 20, 40, 80, 160, 320, 640])
    for train in (cv, pre, np.concatenate([cv, pre])):
        rows, blocks = obj_mod._row_blocks(train)
        assert sorted(rows.tolist()) == np.flatnonzero(train.any(0)).tolist()
        seen = np.zeros_like(train)
        for lo, hi, probs in blocks:
            block_rows = rows[lo:hi]
            others = np.setdiff1d(np.arange(len(train)), probs.numpy())
            # a problem left out of a block gives all its rows weight 0
            assert not train[np.ix_(others, block_rows)].any()
            seen[np.ix_(probs.numpy(), block_rows)] = True
        assert (seen >= train).all()
    # cross-validation: one block per fold, each read by the 4 other folds' problems
    rows, blocks = obj_mod._row_blocks(_cv_masks(2000)[0])
    assert len(blocks) == 5 and all(p.numel() == 4 for _, _, p in blocks)
    # folds under 256 rows merge with the next (read by all 5 problems)
    assert len(obj_mod._row_blocks(_cv_masks(1000)[0])[1]) < 5
    # MDL prefixes: the small steps merge until a block has 256 rows
    rows, blocks = obj_mod._row_blocks(pre)
    assert [(lo, hi) for lo, hi, _ in blocks] == [(0, 320), (320, 640)]
    assert blocks[1][2].tolist() == [6]


@pytest.mark.parametrize("products", [torch.float64, torch.float32])
def test_blocked_loss_and_gradient_equal_the_plain_sums(products):
    rng = np.random.default_rng(1)
    n, d, K, P = 700, 6, 4, 9
    x = torch.as_tensor(rng.normal(size=(2, n, d)))
    cv, _ = _cv_masks(n)
    train = np.concatenate([cv, _prefix_masks(n, [50, 300, 500, 700])])
    train[:, 3] = False
    Y = torch.as_tensor(rng.integers(0, K, size=(n, P)))
    M = torch.as_tensor(train.T / train.sum(1))
    W = torch.as_tensor(rng.normal(size=(2, P, d, K)))
    b = torch.as_tensor(rng.normal(size=(2, P, K)))
    mu = torch.as_tensor(rng.normal(size=(2, P, d)) * 0.1)
    sd = torch.as_tensor(rng.uniform(0.5, 2, size=(2, P, d)))
    lam = torch.full((P,), 0.01, dtype=torch.float64)
    cmask = torch.ones(P, K, dtype=torch.bool)
    cmask[0, 3] = False
    pen = torch.as_tensor([True, False] * 4 + [True])
    plain = obj_mod._loss_grad(x, W, b, mu, sd, lam, Y, M, cmask, pen)
    rows, blocks = obj_mod._row_blocks(train)
    r = torch.as_tensor(rows)
    blocked = obj_mod._loss_grad(
        x[:, r].to(products), W, b, mu, sd, lam, Y[r], M[r], cmask, pen, blocks
    )
    tol = 1e-12 if products == torch.float64 else 1e-5
    for a, c in zip(plain, blocked, strict=True):
        torch.testing.assert_close(a, c, atol=tol, rtol=tol)


@pytest.mark.parametrize("per_layer", [False, True])
def test_cv_and_prefix_problems_in_one_fit_equal_separate_fits(per_layer, monkeypatch):
    if per_layer:  # the path for large inputs: layer by layer, running problems only
        monkeypatch.setattr(obj_mod, "_SMALL", 0)
    X, y = _data()
    n = len(y)
    cv, _ = _cv_masks(n)
    pre = _prefix_masks(n, [150, 300])
    masks = np.concatenate([cv, pre])
    # the prefixes are MDL-style: all classes, intercept penalised; the folds scikit-learn's
    flag = np.r_[np.zeros(len(cv), bool), np.ones(len(pre), bool)]
    Y = np.tile(y, (len(masks), 1))
    fit = fit_logistic(X, Y, train_mask=masks, tol=1e-8, penalize_intercept=flag, all_classes=flag)
    assert fit.converged.all()
    together = fit.log_proba(X)[0].exp()
    for p in range(len(masks)):
        one = fit_logistic(
            X,
            y,
            train_mask=masks[p],
            n_classes=3,
            tol=1e-8,
            penalize_intercept=bool(flag[p]),
            all_classes=bool(flag[p]),
        )
        torch.testing.assert_close(together[p], one.log_proba(X)[0, 0].exp(), atol=1e-6, rtol=0)


def test_all_classes_needs_a_penalised_intercept_per_problem():
    X, y = _data(n=100)
    with pytest.raises(ValueError, match="all_classes=True needs penalize_intercept"):
        fit_logistic(
            X,
            np.stack([y, y]),
            penalize_intercept=[True, False],
            all_classes=[True, True],
        )


def test_preconditioner_uses_each_problem_groups_penalty():
    X, y = _data(n=800, d=8)
    prep = PreparedLayers(np.stack([X, X[::-1] * 2]))
    masks = np.stack([np.arange(800) < 400, np.arange(800) < 800, np.arange(800) < 780])
    K, d, P = 3, 8, 3
    lam = torch.as_tensor([1 / 400, 1 / 800, 1 / 780], dtype=torch.float64)
    obj = obj_mod._Objective(
        prep,
        torch.as_tensor(np.stack([y] * P)),
        torch.as_tensor(masks / masks.sum(1, keepdims=True)),
        torch.zeros(2, P, d, dtype=torch.float64),
        torch.ones(2, P, d, dtype=torch.float64),
        lam,
        torch.ones(P, K, dtype=torch.bool),
        torch.ones(P, dtype=torch.bool),
    )
    apply = obj.preconditioner(torch.ones(P, dtype=torch.bool))
    v = torch.randn(2 * P, d * K + K, dtype=torch.float64)
    rows = torch.tensor([5, 0, 1, 2])  # any subset of rows, in any order
    out = apply(v[rows], rows)
    for j, row in enumerate(rows.tolist()):
        li, p = divmod(row, P)
        # problems 1 and 2 (λ within √2) share one factor with their median penalty
        lam_g = float(lam[p]) if p == 0 else float(lam[1:].median())
        A = prep.gram(li) / K + lam_g * torch.eye(d, dtype=torch.float64)
        want = torch.linalg.solve(A, v[row, : d * K].view(d, K))
        # applied with float32 products: float32 accuracy
        err = (out[j, : d * K].view(d, K) - want).abs().max() / want.abs().max()
        assert err < 1e-5
        torch.testing.assert_close(out[j, d * K :], v[row, d * K :] / (1 / K + lam[p]))


def test_run_groups_order_errors_and_thread_count():
    before = torch.get_num_threads()
    out = {}
    run_groups(lambda g: out.__setitem__(g.start, list(g)), layer_groups(7, 3))
    assert sorted(out) == [0, 3, 6] and out[3] == [3, 4, 5]
    assert torch.get_num_threads() == before

    def fail(g):
        if g.start >= 2:
            raise ValueError(f"bad group {g.start}")

    with pytest.raises(ValueError, match="bad group 2"):
        run_groups(fail, layer_groups(6, 2))
    assert torch.get_num_threads() == before


def test_layer_groups_give_every_worker_work(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert [list(g) for g in layer_groups(5, 10)] == [[0, 1, 2], [3, 4]]
    assert [list(g) for g in layer_groups(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [list(g) for g in layer_groups(1, 10)] == [[0]]


def test_protocol_results_do_not_depend_on_worker_threads():
    rng = np.random.default_rng(3)
    n, d, L = 400, 12, 4
    y = rng.integers(0, 3, n)
    acts = rng.normal(size=(L, n, d)) + 0.5 * np.eye(3)[y] @ rng.normal(size=(3, d))
    cfg = ProbeConfig(n_folds=3, seeds=(0,), n_boot=50)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sel = selectivity(acts, y, config=cfg)
            mdl = mdl_probe(acts, y, config=cfg)
            runs.append(([r["value"] for r in sel.records], [r["value"] for r in mdl.records]))
    finally:
        torch.set_num_threads(before)
    assert runs[0][0] == runs[1][0]  # accuracies: the same predictions
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-9)


def test_mdl_with_missing_labels_equals_mdl_on_the_labelled_rows():
    rng = np.random.default_rng(5)
    n, d, L = 300, 8, 2
    y = rng.integers(0, 3, n)
    acts = rng.normal(size=(L, n, d)) + np.eye(3)[y] @ rng.normal(size=(3, d))
    labels = y.astype(object)
    missing = rng.random(n) < 0.2
    labels[missing] = None
    cfg = ProbeConfig(seeds=(0,), n_boot=20, drop_missing=True)
    both = {"base": acts, "adapted": acts * 2.0}
    with_missing = mdl_probe(both, labels, config=cfg)
    kept = {m: a[:, ~missing] for m, a in both.items()}
    dropped = mdl_probe(kept, y[~missing].astype(object), config=cfg)
    a = [(r["model"], r["layer"], r["labels"], r["value"]) for r in with_missing.records]
    b = [(r["model"], r["layer"], r["labels"], r["value"]) for r in dropped.records]
    assert [x[:3] for x in a] == [x[:3] for x in b]
    np.testing.assert_allclose([x[3] for x in a], [x[3] for x in b], rtol=1e-9)


def test_feature_constant_on_the_training_rows_only_gets_scale_one_like_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    # a value whose mean over 3000 rows does not round back to itself: the variance formula
    # leaves ≈ 1e-9 (standardised held-out rows then reach ≈ 1e8)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3100, 4)), rng.integers(0, 2, 3100)
    train = np.arange(3100) < 3000
    X = np.column_stack([X, np.where(train, 0.1234567, 1.1234567)])  # constant on training rows
    fit = fit_logistic(X, y, train_mask=train, tol=1e-10)
    assert fit.scale[0, 0, -1] == 1.0
    sc = StandardScaler().fit(X[train])
    assert sc.scale_[-1] == 1.0
    ref = LogisticRegression(tol=1e-10, max_iter=10_000).fit(sc.transform(X[train]), y[train])
    want = ref.predict_proba(sc.transform(X))
    np.testing.assert_allclose(fit.log_proba(X)[0, 0].exp().numpy(), want, atol=1e-5)
