"""The probe solver's objective: losses and gradients of many logistic regressions at once.

:func:`_loss_grad` evaluates ``p`` problems on a stack of layers, reading rows in blocks
(:func:`_row_blocks`) so that each problem reads only the rows it trains on;
:class:`_Objective` feeds the batched L-BFGS (:mod:`~transferlens.analysis.lbfgs`) with them,
layer by layer for the problems still running, and supplies its preconditioner. The solver
that uses them is :func:`transferlens.analysis.logreg.fit_logistic`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from transferlens.analysis.blas import matmul as _blas_matmul

if TYPE_CHECKING:
    from transferlens.analysis.logreg import PreparedLayers

_SMALL = 2**21  # inputs (rows × d × layers) evaluated for all layers and problems at once


def _row_blocks(train: np.ndarray, min_rows: int = 256) -> tuple[np.ndarray, list[Any]]:
    """Rows grouped by the problems that train on them.

    Args:
        train: ``(P, n)`` booleans, the rows each problem trains on.
        min_rows: consecutive groups smaller than this are merged (their problems read a few
            rows they give weight 0), so that each block's products stay efficient.

    Returns:
        ``rows``: the rows some problem trains on, block after block (in order of first
        row); ``blocks``: ``(lo, hi, problems)`` — positions ``lo..hi`` of ``rows`` enter only
        ``problems`` (sorted indices). Cross-validation folds give one block per fold (each
        fold's problems skip its held-out rows), MDL prefixes one block per prefix step (steps
        under ``min_rows`` merged).
    """
    used = np.flatnonzero(train.any(0))
    if used.size == 0:
        return used, []
    sig = np.packbits(train[:, used].T, axis=1)
    _, first, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    grp = rank[inv.reshape(-1)]
    order = np.argsort(grp, kind="stable")
    sizes = np.bincount(grp, minlength=first.size)
    blocks, lo, start = [], 0, 0
    for gi, size in enumerate(sizes):
        hi = start + size
        if hi - lo >= min_rows or gi == sizes.size - 1:
            probs = np.flatnonzero(train[:, used[order[lo:hi]]].any(1))
            blocks.append((lo, hi, torch.as_tensor(probs)))
            lo = hi
        start = hi
    return used[order], blocks


def _loss_grad(
    x: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    mu: torch.Tensor,
    sd: torch.Tensor,
    lam: torch.Tensor,
    Y: torch.Tensor,
    M: torch.Tensor,
    cmask: torch.Tensor,
    pen_b: bool | torch.Tensor,
    blocks: Sequence[tuple[int, int, torch.Tensor | None]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objectives and gradients of ``p`` problems on ``Lb`` layers sharing rows.

    Shapes: x ``(Lb, n, d)``, W ``(Lb, p, d, K)``, b ``(Lb, p, K)``, mu/sd ``(Lb, p, d)``,
    lam ``(p,)``, Y/M ``(n, p)`` (codes, weights 1/n_p on training rows; one column per
    problem), cmask ``(p, K)``, pen_b: whether the intercept is penalised (a bool, or ``(p,)``
    booleans). ``blocks``: ``(lo, hi, idx)``, rows ``lo..hi`` enter problems ``idx`` only (None:
    all; the others must give those rows weight 0); default: all rows, all problems.
    Logits are row-major, ``(Lb, rows, K, p)``: the two products are then ``x Vᵀ`` and
    ``Gᵀ x`` with ``G`` row-major, the fastest layouts for few columns. If ``x`` is float32 the
    two products run in float32 and everything else (softmax, loss, sums) in float64.
    """
    Lb, n, d = x.shape
    p, K = W.shape[1], W.shape[3]
    # one intra-op thread (the probing worker threads): NumPy's BLAS is faster on these thin
    # products; with more, its thread pool and torch's would contend (analysis/blas.py)
    mm = _blas_matmul if torch.get_num_threads() == 1 else torch.bmm
    c0 = b - torch.einsum("lpd,lpdk->lpk", mu / sd, W)
    Vt = (W / sd[..., None]).transpose(2, 3).to(x.dtype)  # (Lb, p, K, d)
    loss = torch.zeros(Lb, p, dtype=torch.float64)
    GX = torch.zeros(Lb, p, K, d, dtype=torch.float64)
    Gs = torch.zeros(Lb, p, K, dtype=torch.float64)
    for lo, hi, idx in [(0, n, None)] if blocks is None else blocks:
        r, xs = hi - lo, x[:, lo:hi]
        if idx is None:
            c, V, cb, cm, Ms, Ys = p, Vt, c0, cmask, M[lo:hi], Y[lo:hi]
        else:
            c, V, cb, cm = idx.numel(), Vt[:, idx], c0[:, idx], cmask[idx]
            Ms, Ys = M[lo:hi, idx], Y[lo:hi, idx]
        # class-major columns (k, problem): the softmax runs over a strided axis of K, several
        # times faster than over a contiguous axis of K
        Vk = V.transpose(1, 2).reshape(Lb, K * c, d)
        Z = mm(xs, Vk.transpose(1, 2)).double().view(Lb, r, K, c)
        Z += cb.transpose(1, 2)[:, None]
        logp = torch.log_softmax(Z.masked_fill_(~cm.T, -math.inf), dim=2)
        ii = Ys[None, :, None, :].expand(Lb, r, 1, c)
        lt = logp.gather(2, ii)[:, :, 0]
        ls = torch.where(Ms > 0, lt, 0.0).mul(Ms).sum(1)
        G = logp.exp_()
        G.scatter_add_(2, ii, -torch.ones_like(G[:, :, :1]))
        G.mul_(Ms[:, None, :])
        gx = mm(G.view(Lb, r, K * c).transpose(1, 2).to(x.dtype), xs)
        gx = gx.view(Lb, K, c, d).transpose(1, 2)
        gs = G.sum(1).transpose(1, 2)
        if idx is None:
            loss -= ls
            GX += gx
            Gs += gs
        else:
            loss.index_add_(1, idx, ls, alpha=-1.0)
            GX.index_add_(1, idx, gx.double())
            Gs.index_add_(1, idx, gs)
    gW = (
        GX.transpose(2, 3) / sd[..., None]
        - (mu / sd)[..., None] * Gs[:, :, None, :]
        + lam[:, None, None] * W
    )
    pen = (W * W).sum((2, 3))
    lam_b = lam * torch.as_tensor(pen_b, dtype=torch.float64)
    Gs, pen = Gs + lam_b[:, None] * b, pen + torch.as_tensor(pen_b) * (b * b).sum(2)
    return loss + 0.5 * lam * pen, gW, Gs


class _Objective:
    """Objectives and gradients of ``L × P`` problems; the problems of a layer share its rows.

    Small inputs are evaluated for all layers and problems in one batched pass; large ones
    layer by layer, for the problems still running only. Rows are read in blocks
    (:func:`_row_blocks`), each by the problems that train on it only: a cross-validation
    fold's problems skip its held-out rows, an MDL prefix's problems the rows after it.
    ``blocked=False`` reads all rows for every problem; ``None`` reads blocks only where their
    rows come in order (no copy of the inputs), all rows otherwise.
    """

    def __init__(
        self,
        prep: PreparedLayers,
        Y: torch.Tensor,
        M: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        lam: torch.Tensor,
        class_mask: torch.Tensor,
        penalize_intercept: torch.Tensor,
        products: torch.dtype = torch.float64,
        blocked: bool | None = True,
    ) -> None:
        self.prep, self.Y, self.M = prep, Y, M  # (P, n)
        self.mean, self.scale, self.lam = mean, scale, lam  # (L,P,d) (L,P,d) (P,), centred data
        self.class_mask, self.pen_b = class_mask, penalize_intercept  # (P, K), (P,)
        self.P, self.K = class_mask.shape
        self.d = prep.d
        rows, self.blocks = _row_blocks((M > 0).numpy()) if blocked is not False else (None, [])
        # the blocks' rows in order from the first: a view, no copy of the inputs
        prefix = rows is not None and bool((rows == np.arange(rows.size)).all())
        if blocked is False or (blocked is None and not prefix):
            # every row for every problem: no copy either (for one evaluation's worth)
            rows, self.blocks = np.arange(prep.n), [(0, prep.n, torch.arange(self.P))]
            prefix = True
        m = rows.size
        take = (lambda t: t[:m]) if prefix else (lambda t: t[torch.as_tensor(rows)])
        xs = prep.xs32() if products == torch.float32 else prep.xs
        self.xs = [take(x) for x in xs]  # rows in block order
        self.YT, self.MT = take(Y.T).contiguous(), take(M.T).contiguous()  # (rows, P)
        self.X = torch.stack(self.xs) if rows.size * prep.d * len(prep) <= _SMALL else None
        self._cache: dict[Any, tuple[Any, ...]] = {}

    def preconditioner(
        self, use: torch.Tensor
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Approximate inverse Hessian ``(Σ/K + λ̄)⁻¹`` (Σ: feature correlation, λ̄: the median
        penalty of the problems in ``use`` with about the same penalty, so problems trained on
        different numbers of rows each get their own) for those problems; identity for the
        others. It applies to vectors ``(b, D)`` or a stack ``(m, b, D)`` of them, of the
        flat problems ``rows`` (``layer · P + problem``).

        It is applied in the eigenbasis of Σ (``Q diag(1/(s/K + λ̄)) Qᵀ``): two products per
        layer serve all of that layer's problems, whatever their penalties.
        """
        L, P, K, d, lam = len(self.prep), self.P, self.K, self.d, self.lam
        dK = d * K
        ui = use.nonzero().flatten()
        # penalties within a factor √2 share a λ̄: one per MDL block, one for CV folds
        key = torch.round(torch.log2(lam[ui]) * 2).long()
        keys = torch.unique(key)
        group = torch.full((P,), -1, dtype=torch.long)
        group[ui] = torch.searchsorted(keys, key)
        lam_g = torch.stack([lam[group == gi].median() for gi in range(keys.numel())])
        # in float32: Q diag(·) Qᵀ is symmetric positive definite whatever the rounding, and the
        # preconditioner only shapes the search direction (the line search and the float64
        # objective decide the steps)
        evals, Q = torch.linalg.eigh(torch.stack([self.prep.gram(li) for li in range(L)]).float())
        scale = 1.0 / (evals.double().clamp_min(0.0)[:, :, None] / K + lam_g)
        scale = scale.float()  # (L, d, groups)
        div_b = 1.0 / K + lam * self.pen_b.double()

        def apply(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            m, nb = (v.shape[0], v.shape[1]) if v.ndim == 3 else (1, v.shape[0])
            v3 = v.reshape(m, nb, dK + K)
            out = v3.clone()
            pr, lr_ = rows % P, rows // P
            grp = group[pr]
            for li in torch.unique(lr_[grp >= 0]).tolist():
                u = ((lr_ == li) & (grp >= 0)).nonzero().flatten()
                vw = v3[:, u, :dK].float().reshape(m, -1, d, K).permute(2, 0, 1, 3)
                t = (Q[li].T @ vw.reshape(d, -1)).view(vw.shape)  # (d, m, u, K)
                t *= scale[li][:, grp[u]][:, None, :, None]
                res = (Q[li] @ t.view(d, -1)).view(vw.shape)
                out[:, u, :dK] = res.permute(1, 2, 0, 3).reshape(m, -1, dK).double()
                out[:, u, dK:] = v3[:, u, dK:] / div_b[pr[u], None]
            return out.reshape(v.shape)

        return apply

    def _problems(self, li: int | None, pi: torch.Tensor) -> tuple[Any, ...]:
        """Inputs of problems ``pi`` of layer ``li`` and, per row block, which of them read it
        (cached: the running set changes only when problems stop)."""
        key = (li, pi.numpy().tobytes())
        hit = self._cache.get(key)
        if hit is None:
            pos = torch.full((self.P,), -1, dtype=torch.long)
            pos[pi] = torch.arange(pi.numel())
            blocks = []
            for lo, hi, probs in self.blocks:
                idx = pos[probs]
                idx = idx[idx >= 0]
                if idx.numel():
                    blocks.append((lo, hi, None if idx.numel() == pi.numel() else idx))
            mean = self.mean[:, pi] if li is None else self.mean[li, pi][None]
            scale = self.scale[:, pi] if li is None else self.scale[li, pi][None]
            hit = (
                blocks,
                mean,
                scale,
                self.lam[pi],
                self.YT[:, pi],
                self.MT[:, pi],
                self.class_mask[pi],
                self.pen_b[pi],
            )
            if len(self._cache) >= 2 * max(1, len(self.prep)):
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _eval(self, x: torch.Tensor, li: int | None, pi: torch.Tensor, W, b):
        """``_loss_grad`` of problems ``pi`` on layer ``li`` (None: all layers stacked in
        ``x``), each row block read by the problems that train on it only."""
        blocks, mean, scale, lam, YT, MT, cmask, pen_b = self._problems(li, pi)
        Wp, bp = (W[:, pi], b[:, pi]) if li is None else (W[li, pi][None], b[li, pi][None])
        return _loss_grad(x, Wp, bp, mean, scale, lam, YT, MT, cmask, pen_b, blocks)

    def __call__(
        self, theta: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        L, P, K, d = len(self.prep), self.P, self.K, self.d
        theta = theta.view(L, P, d * K + K)
        W, b = theta[..., : d * K].reshape(L, P, d, K), theta[..., d * K :]
        if self.X is not None:  # small: everything at once
            f, gW, gb = self._eval(self.X, None, torch.arange(P), W, b)
            return f.reshape(-1), torch.cat([gW.reshape(L, P, d * K), gb], dim=2).view(L * P, -1)
        f = torch.zeros(L, P, dtype=torch.float64)
        g = torch.zeros(L, P, d * K + K, dtype=torch.float64)
        act = active.view(L, P)
        for li in range(L):
            pi = act[li].nonzero().flatten()
            if pi.numel() == 0:
                continue
            fl, gW, gb = self._eval(self.xs[li][None], li, pi, W, b)
            f[li, pi] = fl[0]
            g[li, pi] = torch.cat([gW[0].reshape(len(pi), d * K), gb[0]], dim=1)
        return f.view(-1), g.view(L * P, -1)
