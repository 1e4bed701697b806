"""LinearProbe and the batched logistic-regression solver, against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from transferlens.analysis.probing import (
    LinearProbe,
    PreparedLayers,
    check_finite,
    encode_labels,
    fit_logistic,
)


def _task(n=500, d=12, K=4, signal=0.45, seed=0, shift=3.0):
    """A noisy (unsaturated) linear task on correlated, off-centre, unevenly scaled features."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    X = rng.normal(size=(n, d)) @ A * rng.uniform(0.2, 5.0, size=d) + shift * rng.normal(size=d)
    Z = (X - X.mean(0)) / X.std(0)
    logits = Z @ rng.normal(size=(d, K)) * signal
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    y = np.array([rng.choice(K, p=p) for p in P])
    return X, y


def _sklearn_proba(Xtr, ytr, Xte, C):
    sc = StandardScaler().fit(Xtr)
    lr = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(sc.transform(Xtr), ytr)
    return lr, lr.predict_proba(sc.transform(Xte))


@pytest.mark.parametrize("K", [2, 4])
def test_probabilities_match_sklearn_on_unsaturated_task(K):
    X, y = _task(K=K)
    Xtr, ytr, Xte, yte = X[:350], y[:350], X[350:], y[350:]
    C = 0.3
    probe = LinearProbe(C=C, tol=1e-9).fit(Xtr, ytr)
    lr, ref = _sklearn_proba(Xtr, ytr, Xte, C)
    acc = (probe.predict(Xte) == yte).mean()
    assert 0.6 <= acc <= 0.9, f"task should be unsaturated, accuracy {acc}"
    assert np.abs(probe.predict_proba(Xte) - ref).max() < 1e-3
    # the parameters themselves agree (binary: scikit-learn's single-vector form)
    assert probe.coef_.shape == lr.coef_.shape
    np.testing.assert_allclose(probe.coef_, lr.coef_, atol=1e-4)
    np.testing.assert_array_equal(
        probe.predict(Xte), lr.predict(StandardScaler().fit(Xtr).transform(Xte))
    )


def test_objective_convention_lambda_is_one_over_C_n():
    # mean loss + λ/2‖w‖² with λ = 1/(C·n) has the same optimum as C·Σloss + ½‖w‖²:
    # halving n at fixed C doubles λ; scikit-learn on the half data agrees.
    X, y = _task(n=300, K=3, seed=1)
    C = 2.0
    probe = LinearProbe(C=C, tol=1e-9).fit(X[:150], y[:150])
    _, ref = _sklearn_proba(X[:150], y[:150], X[150:], C)
    assert np.abs(probe.predict_proba(X[150:]) - ref).max() < 1e-3


def test_fit_layers_equals_per_layer_fits():
    X0, y = _task(n=300, K=3, seed=2)
    rng = np.random.default_rng(0)
    stack = np.stack([X0, X0 @ rng.normal(size=(12, 12)), X0 + rng.normal(size=X0.shape)])
    probes = LinearProbe(C=0.5, tol=1e-9).fit_layers(stack, y)
    assert len(probes) == 3
    for li, p in enumerate(probes):
        single = LinearProbe(C=0.5, tol=1e-9).fit(stack[li], y)
        np.testing.assert_allclose(
            p.predict_proba(stack[li]), single.predict_proba(stack[li]), atol=1e-6
        )
        np.testing.assert_array_equal(p.classes_, single.classes_)


def test_batched_problems_equal_separate_fits():
    X, y = _task(n=240, K=3, seed=3)
    rng = np.random.default_rng(1)
    Y = np.stack([y, rng.permutation(y)])
    mask = np.stack([np.arange(240) < 160, np.arange(240) >= 80])
    fit = fit_logistic(X, Y, train_mask=mask, tol=1e-9)
    lp = fit.log_proba(X)  # (1, 2, n, K)
    for p in range(2):
        alone = LinearProbe(tol=1e-9).fit(X[mask[p]], Y[p][mask[p]])
        np.testing.assert_allclose(lp[0, p].exp().numpy(), alone.predict_proba(X), atol=1e-6)
        np.testing.assert_allclose(fit.mean[0, p].numpy(), X[mask[p]].mean(0), rtol=1e-10)
    assert fit.converged.all()


def test_absent_class_gets_zero_probability_like_sklearn():
    X, y = _task(n=300, K=3, seed=4)
    train = y != 2
    fit = fit_logistic(X, y, train_mask=train, n_classes=3, tol=1e-9)
    proba = fit.log_proba(X)[0, 0].exp().numpy()
    assert np.all(proba[:, 2] == 0)
    _, ref = _sklearn_proba(X[train], y[train], X, 1.0)
    assert np.abs(proba[:, :2] - ref).max() < 1e-3


def test_standardisation_uses_training_rows_only_and_constant_features():
    X, y = _task(n=200, K=2, seed=5)
    X = np.column_stack([X, np.full(200, 7.0)])  # zero variance
    X[150:] += 100.0  # rows the probe does not train on must not move the scaler
    p = LinearProbe(tol=1e-9).fit(X[:150], y[:150])
    np.testing.assert_allclose(p.mean_, X[:150].mean(0))
    assert p.scale_[-1] == 1.0 and np.all(np.isfinite(p.coef_))
    assert np.all(np.isfinite(p.predict_proba(X)))
    without = LinearProbe(tol=1e-9).fit(X[:150, :-1], y[:150])
    np.testing.assert_allclose(
        p.predict_proba(X[:150]), without.predict_proba(X[:150, :-1]), atol=1e-6
    )


def test_nan_input_names_site_and_count():
    X, y = _task(n=60, K=2)
    X[3, 1] = np.nan
    X[7, 2] = np.inf
    with pytest.raises(ValueError, match=r"'layer 5 resid_post' has 2 non-finite values"):
        LinearProbe(name="layer 5 resid_post").fit(X, y)
    with pytest.raises(ValueError, match="2 non-finite"):
        fit_logistic(X[None], y, name="layer 5")
    with pytest.raises(ValueError, match="1 non-finite"):
        check_finite(torch.tensor([1.0, float("nan")]), "x")


def test_single_class_and_missing_labels():
    X, _ = _task(n=40, K=2)
    with pytest.raises(ValueError, match="products must be torch.float32 or torch.float64"):
        fit_logistic(X, np.arange(40) % 2, products=torch.bfloat16)
    with pytest.raises(ValueError, match="1 class"):
        LinearProbe().fit(X, np.zeros(40, int))
    y = np.array(["a", "b"] * 20, dtype=object)
    y[[1, 4, 9]] = None
    with pytest.raises(ValueError, match="3 of 40 rows have a missing label"):
        LinearProbe().fit(X, y)
    kept = ~np.isin(np.arange(40), [1, 4, 9])
    dropped = LinearProbe(drop_missing=True, tol=1e-9).fit(X, y)
    ref = LinearProbe(tol=1e-9).fit(X[kept], y[kept].astype(str))
    np.testing.assert_allclose(dropped.predict_proba(X), ref.predict_proba(X))
    yn = np.where(np.arange(40) % 2 == 0, 0.0, 1.0)
    yn[5] = np.nan
    with pytest.raises(ValueError, match="1 of 40 rows"):
        LinearProbe().fit(X, yn)
    ym = np.arange(40) % 2
    ym[:2] = -1
    LinearProbe().fit(X, ym)  # -1 is a class unless declared missing
    with pytest.raises(ValueError, match="2 of 40 rows have a missing label"):
        LinearProbe(missing_label=-1).fit(X, ym)
    codes, classes, keep = encode_labels(ym, missing_label=-1, drop_missing=True)
    assert keep.sum() == 38 and list(classes) == [0, 1] and codes.max() == 1


def test_deterministic_and_prepared_layers_reused():
    X, y = _task(n=200, K=3, seed=6)
    a = LinearProbe().fit(X, y).predict_proba(X)
    b = LinearProbe().fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    prep = PreparedLayers(X)
    f1 = fit_logistic(prep, y, tol=1e-9)
    f2 = fit_logistic(X, y, tol=1e-9)
    np.testing.assert_allclose(f1.log_proba(prep).numpy(), f2.log_proba(X).numpy(), atol=1e-8)


def test_preconditioning_does_not_change_the_solution():
    X, y = _task(n=300, K=3, seed=7)
    a = fit_logistic(X, y, tol=1e-9, precondition=True)
    b = fit_logistic(X, y, tol=1e-9, precondition=False, max_iter=5000)
    np.testing.assert_allclose(a.log_proba(X).numpy(), b.log_proba(X).numpy(), atol=1e-6)
    assert a.n_iter.max() <= b.n_iter.max()


def test_max_iter_holds_for_every_fit_after_the_float64_polish():
    # more dimensions than rows and weak regularisation: the fits stop at max_iter in float32
    # and the float64 polish continues them; each may only use the rest of its own budget
    from transferlens.analysis.probe_labels import group_folds

    rng = np.random.default_rng(0)
    F = rng.normal(size=(200, 16)) * np.geomspace(10, 0.1, 16)
    X = F @ rng.normal(size=(16, 300)) + 0.05 * rng.normal(size=(200, 300))
    X = (X + 3.0 * rng.normal(size=300)).astype(np.float32)
    g = np.repeat(np.arange(40), 5)
    y = np.repeat(rng.integers(0, 5, 40), 5)
    folds = group_folds(g, 5, 0)
    masks = np.stack([folds != f for f in range(5)])
    fit = fit_logistic(
        X, np.repeat(y[None], 5, 0), train_mask=masks, n_classes=5, C=100.0, max_iter=150
    )
    assert not fit.converged.any()
    assert (fit.n_iter == 150).all()  # was up to 167: the polish gave every fit the same rest


@pytest.mark.slow
def test_sklearn_estimator_checks():
    """scikit-learn's estimator checks; the array-API check is skipped by scikit-learn itself
    unless SCIPY_ARRAY_API is set (LinearProbe takes numpy input only)."""
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(LinearProbe(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert failed == []
    assert skipped <= {"check_array_api_input"}
    assert len(results) > 40


@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_float32_products_reach_the_float64_solution_and_its_stopping_test(tol):
    # random labels on many rows: the optimum's gradient is a near-cancelling sum, the case
    # a float32 solve cannot finish without the float64 polish
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3000, 40)) @ rng.normal(size=(40, 40)) + 5.0
    Y = np.stack([rng.integers(0, 5, 3000), _task(n=3000, d=40, K=5, seed=8)[1]])
    fast = fit_logistic(X, Y, tol=tol)
    exact = fit_logistic(X, Y, tol=tol, products=torch.float64)
    assert fast.converged.all() and exact.converged.all()
    diff = (fast.log_proba(X).exp() - exact.log_proba(X).exp()).abs().max().item()
    assert diff < (1e-4 if tol == 1e-6 else 1e-7)
    # the float64 gradient at the float32 solve's answer meets tol
    import transferlens.analysis.logreg_objective as lo

    prep = PreparedLayers(X)
    M = torch.full((2, 3000), 1.0 / 3000, dtype=torch.float64)
    mu = fast.mean - torch.stack(prep.refs)[:, None, :]
    _, gW, gb = lo._loss_grad(
        prep.xs[0][None],
        fast.coef,
        fast.intercept,
        mu,
        fast.scale,
        torch.full((2,), 1.0 / 3000, dtype=torch.float64),
        torch.as_tensor(Y).T,
        M.T,
        fast.class_mask,
        False,
    )
    assert max(gW.abs().max().item(), gb.abs().max().item()) <= tol
