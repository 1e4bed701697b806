"""Batched L-BFGS: many independent smooth problems minimised at once.

Used by the probe solver (:mod:`transferlens.analysis.logreg`), whose problems share one matrix
product per evaluation. Each problem (a row of ``x``) keeps its own curvature pairs, step length
and stopping test; problems that stop drop out of the evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["minimize_batched"]


def minimize_batched(
    fun: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    history: int = 10,
    max_ls: int = 40,
    precond: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    active: torch.Tensor | None = None,
    patience: int | None = None,
    budget: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Minimise ``B`` independent smooth objectives at once (rows of ``x``).

    ``fun(x, mask)`` returns the objectives ``(B,)`` and gradients ``(B, D)`` of the rows in
    ``mask`` (other rows' values are ignored). Each row keeps its own curvature pairs (a skipped
    update is stored as a zero pair), step length (Armijo backtracking with quadratic
    interpolation) and stopping test; all the vector work is done on the rows still running
    only. ``precond(v, rows)`` applies an approximate inverse Hessian (the initial matrix of the
    two-loop recursion) to the vectors ``v`` of rows ``rows`` (``(b, D)``, or a stack
    ``(m, b, D)``: one call per iteration serves the two-loop and the curvature scale).
    ``active`` limits the run to some rows (the others are returned as given, not converged).
    ``patience``: stop a row (not converged) once its best max |gradient| has not improved for
    that many iterations — for a solve whose gradients are inexact (float32 products), where
    the stopping test can lie below their error and a float64 solve takes over.
    ``budget``: ``(B,)`` iterations each row may take (at most ``max_iter``), for a run that
    continues rows which already used part of a common limit.
    """
    pc = precond if precond is not None else (lambda v, rows: v)
    B, D = x.shape
    x = x.clone()
    mask = torch.ones(B, dtype=torch.bool) if active is None else active.clone()
    f_all, g_all = fun(x, mask)
    n_iter = torch.zeros(B, dtype=torch.long)
    converged = mask & (g_all.abs().amax(1) <= tol)
    running = mask & ~converged
    if budget is not None:
        running &= budget > 0
    w = running.nonzero().flatten()  # the rows still running
    xw, fw, gw = x[w], f_all[w], g_all[w]
    S = torch.zeros(history, w.numel(), D, dtype=x.dtype)
    Yh = torch.zeros_like(S)
    rho = torch.zeros(history, w.numel(), dtype=x.dtype)
    gamma = torch.ones(w.numel(), dtype=x.dtype)
    has_hist = torch.zeros(w.numel(), dtype=torch.bool)
    pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    run = torch.ones(w.numel(), dtype=torch.bool)  # of w: still running
    best = gw.abs().amax(1)  # best max |gradient| so far, and iterations since it improved
    since = torch.zeros(w.numel(), dtype=torch.long)
    k = 0
    for _ in range(max_iter):
        if not bool(run.all()):  # drop the rows that stopped from all the state
            x[w[~run]] = xw[~run]
            keep = run.nonzero().flatten()
            w, xw, fw, gw = w[keep], xw[keep], fw[keep], gw[keep]
            S, Yh, rho = S[:, keep], Yh[:, keep], rho[:, keep]
            gamma, has_hist = gamma[keep], has_hist[keep]
            best, since = best[keep], since[keep]
            if pending is not None:
                pending = (pending[0][keep], pending[1][keep], pending[2][keep])
            run = run[keep]
        if w.numel() == 0:
            break
        b = w.numel()
        # two-loop recursion
        q = -gw
        alphas = []
        for j in range(min(k, history)):
            s = (k - 1 - j) % history
            a = rho[s] * torch.linalg.vecdot(S[s], q)
            q.addcmul_(a[:, None], Yh[s], value=-1.0)
            alphas.append((s, a))
        if pending is None:
            pq = pc(q, w)
        else:  # last iteration's curvature scale, from the same preconditioner solve as q
            pq, py = pc(torch.stack([q, pending[0]]), w)
            gamma = torch.where(
                pending[2], pending[1] / (pending[0] * py).sum(1).clamp_min(1e-300), gamma
            )
        r = gamma[:, None] * pq
        for s, a in reversed(alphas):
            beta = rho[s] * torch.linalg.vecdot(Yh[s], r)
            r.addcmul_(S[s], (a - beta)[:, None])
        gd = torch.linalg.vecdot(gw, r)
        bad = ~(gd < 0) | ~has_hist
        if bool(bad.any()):
            pg = -pc(gw[bad], w[bad])
            gn = pg.norm(dim=1).clamp_min(1e-300)
            first = (~has_hist)[bad]
            scale = torch.where(first, torch.clamp(1.0 / gn, max=1.0), torch.ones_like(gn))
            r[bad] = pg * scale[:, None]
            gd = (gw * r).sum(1)
        t = torch.ones(b, dtype=x.dtype)
        searching = torch.ones(b, dtype=torch.bool)
        x_new, f_new, g_new = xw.clone(), fw.clone(), gw.clone()
        accepted = torch.zeros(b, dtype=torch.bool)
        for _ls in range(max_ls):
            xt = xw + t[:, None] * r
            x[w] = xt
            sel = torch.zeros(B, dtype=torch.bool)
            sel[w[searching]] = True
            f_all, g_all = fun(x, sel)
            ft, gt = f_all[w], g_all[w]
            # Armijo, or Hager & Zhang's approximate Wolfe test where the decrease is below
            # the objective's rounding (near the optimum, or with float32 products)
            slope = (gt * r).sum(1)
            approx = (ft <= fw + 1e-8 * (1.0 + fw.abs())) & (slope <= -(1.0 - 2e-4) * gd)
            ok = searching & torch.isfinite(ft) & ((ft <= fw + 1e-4 * t * gd) | approx)
            x_new[ok], f_new[ok], g_new[ok] = xt[ok], ft[ok], gt[ok]
            accepted |= ok
            searching &= ~ok
            if not bool(searching.any()):
                break
            den = 2.0 * (ft - fw - gd * t)
            tq = torch.where(torch.isfinite(ft) & (den > 0), -gd * t * t / den, 0.1 * t)
            t = torch.where(searching, torch.minimum(torch.maximum(tq, 0.1 * t), 0.5 * t), t)
        stalled = searching  # line search failed: at the limit of float64 precision
        sv, yv = x_new - xw, g_new - gw
        sy = (sv * yv).sum(1)
        valid = accepted & (sy > 1e-10 * sv.norm(dim=1) * yv.norm(dim=1))
        slot = k % history
        S[slot] = torch.where(valid[:, None], sv, 0.0)
        Yh[slot] = torch.where(valid[:, None], yv, 0.0)
        rho[slot] = torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), 0.0)
        pending = (yv, sy, valid)  # gamma ← sᵀy / yᵀ·pc(y) at the next iteration
        has_hist |= valid
        k += 1
        n_iter[w] += 1
        xw, fw, gw = x_new, f_new, g_new
        gmax = gw.abs().amax(1)
        conv = accepted & (gmax <= tol)
        converged[w[conv]] = True
        run &= ~(conv | stalled)
        if budget is not None:
            run &= n_iter[w] < budget[w]
        if patience is not None:
            since = torch.where(gmax < best, 0, since + 1)
            best = torch.minimum(best, gmax)
            run &= since < patience
    x[w] = xw
    return x, n_iter.numpy(), converged.numpy()
