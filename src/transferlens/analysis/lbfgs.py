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
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Minimise ``B`` independent smooth objectives at once (rows of ``x``).

    Each row keeps its own curvature pairs (a skipped update is stored as a zero pair), step
    length (Armijo backtracking with quadratic interpolation) and stopping test. ``precond``
    applies an approximate inverse Hessian (the initial matrix of the two-loop recursion) to
    ``(B, D)`` vectors or to a stack ``(m, B, D)`` (one call per iteration serves the two-loop
    and the curvature scale). ``active`` limits the run to some rows (the others are returned as given, not converged).
    """
    pc = precond if precond is not None else (lambda v: v)
    B, D = x.shape
    active = torch.ones(B, dtype=torch.bool) if active is None else active.clone()
    f, g = fun(x, active)
    n_iter = torch.zeros(B, dtype=torch.long)
    done = active & (g.abs().amax(1) <= tol)
    converged = done.clone()
    active &= ~done
    S = torch.zeros(history, B, D, dtype=x.dtype)
    Yh = torch.zeros(history, B, D, dtype=x.dtype)
    rho = torch.zeros(history, B, dtype=x.dtype)
    gamma = torch.ones(B, dtype=x.dtype)
    has_hist = torch.zeros(B, dtype=torch.bool)
    pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    k = 0
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # two-loop recursion
        q = -g
        alphas = []
        for j in range(min(k, history)):
            s = (k - 1 - j) % history
            a = rho[s] * (S[s] * q).sum(1)
            q = q - a[:, None] * Yh[s]
            alphas.append((s, a))
        if pending is None:
            pq = pc(q)
        else:  # last iteration's curvature scale, from the same preconditioner solve as q
            pq, py = pc(torch.stack([q, pending[0]]))
            gamma = torch.where(
                pending[2], pending[1] / (pending[0] * py).sum(1).clamp_min(1e-300), gamma
            )
        r = gamma[:, None] * pq
        for s, a in reversed(alphas):
            beta = rho[s] * (Yh[s] * r).sum(1)
            r = r + S[s] * (a - beta)[:, None]
        gd = (g * r).sum(1)
        bad = ~(gd < 0) | ~has_hist
        if bool(bad.any()):
            pg = -pc(g)[bad]
            gn = pg.norm(dim=1).clamp_min(1e-300)
            first = (~has_hist)[bad]
            scale = torch.where(first, torch.clamp(1.0 / gn, max=1.0), torch.ones_like(gn))
            r[bad] = pg * scale[:, None]
            gd = (g * r).sum(1)
        t = torch.ones(B, dtype=x.dtype)
        searching = active.clone()
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        accepted = torch.zeros(B, dtype=torch.bool)
        for _ls in range(max_ls):
            xt = x + t[:, None] * r
            ft, gt = fun(xt, searching)
            # Armijo, or Hager & Zhang's approximate Wolfe test where the decrease is below
            # the objective's rounding (near the optimum, or with float32 products)
            slope = (gt * r).sum(1)
            approx = (ft <= f + 1e-8 * (1.0 + f.abs())) & (slope <= -(1.0 - 2e-4) * gd)
            ok = searching & torch.isfinite(ft) & ((ft <= f + 1e-4 * t * gd) | approx)
            x_new[ok], f_new[ok], g_new[ok] = xt[ok], ft[ok], gt[ok]
            accepted |= ok
            searching &= ~ok
            if not bool(searching.any()):
                break
            den = 2.0 * (ft - f - gd * t)
            tq = torch.where(torch.isfinite(ft) & (den > 0), -gd * t * t / den, 0.1 * t)
            t = torch.where(searching, torch.minimum(torch.maximum(tq, 0.1 * t), 0.5 * t), t)
        stalled = searching  # line search failed: at the limit of float64 precision
        sv, yv = x_new - x, g_new - g
        sy = (sv * yv).sum(1)
        valid = accepted & (sy > 1e-10 * sv.norm(dim=1) * yv.norm(dim=1))
        slot = k % history
        S[slot] = torch.where(valid[:, None], sv, 0.0)
        Yh[slot] = torch.where(valid[:, None], yv, 0.0)
        rho[slot] = torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), 0.0)
        pending = (yv, sy, valid)  # gamma ← sᵀy / yᵀ·pc(y) at the next iteration
        has_hist |= valid
        k += 1
        n_iter += active.long()
        x, f, g = x_new, f_new, g_new
        conv = active & accepted & (g.abs().amax(1) <= tol)
        converged |= conv
        active &= ~(conv | stalled)
    return x, n_iter.numpy(), converged.numpy()
