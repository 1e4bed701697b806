"""The batched L-BFGS on problems with known minima."""

from __future__ import annotations

import torch

from transferlens.analysis.lbfgs import minimize_batched


def _quadratics(B=4, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(B, D, D, generator=g, dtype=torch.float64)
    H = Q @ Q.transpose(1, 2) + torch.linspace(0.01, 1.0, B, dtype=torch.float64)[:, None, None] * (
        torch.eye(D, dtype=torch.float64)
    )
    opt = torch.randn(B, D, generator=g, dtype=torch.float64)

    def fun(x, active):
        d = x - opt
        Hd = (H @ d[..., None])[..., 0]
        return 0.5 * (d * Hd).sum(1), Hd

    return fun, opt


def test_each_problem_reaches_its_own_minimum():
    fun, opt = _quadratics()
    x, n_iter, conv = minimize_batched(
        fun, torch.zeros_like(opt), max_iter=500, tol=1e-10, history=10
    )
    assert conv.all()
    torch.testing.assert_close(x, opt, atol=1e-7, rtol=0)
    assert (n_iter > 1).all() and len(set(n_iter.tolist())) > 1  # own stopping test each


def test_inactive_rows_are_returned_untouched():
    fun, opt = _quadratics(seed=1)
    x0 = torch.zeros_like(opt)
    active = torch.tensor([True, False, True, False])
    x, n_iter, conv = minimize_batched(fun, x0, max_iter=500, tol=1e-10, active=active)
    assert conv.tolist() == [True, False, True, False]
    assert (n_iter[~active.numpy()] == 0).all()
    torch.testing.assert_close(x[~active], x0[~active], atol=0, rtol=0)
    torch.testing.assert_close(x[active], opt[active], atol=1e-7, rtol=0)


def test_max_iter_stops_without_claiming_convergence():
    fun, opt = _quadratics(seed=2)
    x, n_iter, conv = minimize_batched(fun, torch.zeros_like(opt), max_iter=2, tol=1e-12)
    assert not conv.any() and (n_iter == 2).all()


def test_patience_stops_rows_whose_gradient_stops_improving():
    # row 0's gradients carry an error far above tol (like float32 products): it can never
    # meet the stopping test; row 1 is exact and converges
    fun, opt = _quadratics(B=2)
    g = torch.Generator().manual_seed(1)

    def noisy(x, active):
        f, grad = fun(x, active)
        noise = torch.zeros_like(grad)
        noise[0] = 1e-4 * torch.randn(grad.shape[1], generator=g, dtype=torch.float64)
        return f, grad + noise

    x0 = torch.zeros_like(opt)
    _, it_free, conv_free = minimize_batched(noisy, x0, max_iter=300, tol=1e-9)
    _, it, conv = minimize_batched(noisy, x0, max_iter=300, tol=1e-9, patience=10)
    assert not conv_free[0] and it_free[0] > 100  # without patience: runs on
    assert not conv[0] and it[0] < it_free[0]  # stopped, not converged
    assert conv[1] and conv_free[1]


def test_budget_limits_each_row_to_its_own_iterations():
    fun, opt = _quadratics(seed=2)
    budget = torch.tensor([1, 3, 0, 500])
    x, n_iter, conv = minimize_batched(
        fun, torch.zeros_like(opt), max_iter=500, tol=1e-10, budget=budget
    )
    assert n_iter[:3].tolist() == [1, 3, 0] and not conv[:3].any()
    assert conv[3] and 3 < n_iter[3] < 500
