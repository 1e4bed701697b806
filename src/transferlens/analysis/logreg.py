"""The batched logistic-regression solver behind the linear probes.

The objective is scikit-learn's ``LogisticRegression`` objective, written per problem as

    mean_i −log softmax(W·z_i + b)[y_i]  +  λ/2 ‖W‖²,     λ = 1 / (C · n_train),

where ``z_i`` are the inputs standardised with the mean and (population) standard deviation of
the training rows and the intercept ``b`` is not penalised. With two classes scikit-learn fits a
binomial model (one weight vector, penalty ½‖v‖²); the multinomial model with penalty λ·‖W‖²
(twice as strong) has the same solution, which is what is used here, so the probabilities agree
for any number of classes.

The solver is a batched L-BFGS in float64 on torch that fits many independent problems at once:
every layer of a stack of activations (``L × n × d``) and, per layer, several problems that share
the same rows but differ in labels and in which rows they train on (cross-validation folds, task
and control labels). One matrix product per layer serves all its problems, which is what makes a
full probing protocol fast. Each problem has its own L-BFGS memory, line search and stopping test
(max |gradient| ≤ ``tol``, scikit-learn's ``tol`` for lbfgs; a problem whose line search can no
longer decrease the objective stops there and counts as not converged). L-BFGS is preconditioned
with the inverse of ``Σ/K + λ`` (Σ: the correlation of the standardised features, from a
subsample of rows): the same solution in far fewer iterations on the strongly correlated features
of language-model activations.

:mod:`~transferlens.analysis.probing` wraps it as a scikit-learn estimator (``LinearProbe``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from transferlens.analysis.lbfgs import minimize_batched
from transferlens.analysis.logreg_objective import _Objective

logger = logging.getLogger(__name__)

__all__ = ["LogisticFit", "PreparedLayers", "check_finite", "fit_logistic"]

_CHUNK_BYTES = 256 * 2**20
_F32_TOL = 1e-6  # the tightest tolerance solved with float32 products before the polish
_F32_PATIENCE = 30  # float32 iterations without a better gradient before the polish


def _site(name: str | None) -> str:
    return f"probe input {name!r}" if name else "probe input"


def check_finite(X: Any, name: str | None = None) -> None:
    """Raise ``ValueError`` if ``X`` holds NaN or inf values.

    Args:
        X: array or tensor of activations, any shape.
        name: the site the activations come from (``"layer 3 resid_post"``), used in the message.
    """
    if isinstance(X, torch.Tensor):
        bad = int((~torch.isfinite(X)).sum().item()) if X.is_floating_point() else 0
        total = X.numel()
    else:
        arr = np.asarray(X)
        bad = int((~np.isfinite(arr)).sum()) if np.issubdtype(arr.dtype, np.inexact) else 0
        total = arr.size
    if bad:
        raise ValueError(
            f"{_site(name)} has {bad} non-finite values (NaN or inf) out of {total}; "
            "check the capture (overflow in float16?) or drop those rows before probing"
        )


def _as_stack(X: Any) -> Any:
    """View a list of ``(n, d)`` arrays, an ``(n, d)`` or an ``(L, n, d)`` array as a stack."""
    if isinstance(X, (list, tuple)):
        return X
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if len(X.shape) == 2:
        return X[None]
    if len(X.shape) != 3:
        raise ValueError(f"activations must be (n, d) or (L, n, d), got shape {tuple(X.shape)}")
    return X


def _layer_tensor(X: Any, i: int) -> torch.Tensor:
    x = X[i]
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.detach().to("cpu", torch.float64)


class PreparedLayers:
    """Layers as centred float64 tensors with cached preconditioners, reused across fits.

    Args:
        X: ``(L, n, d)`` activations (array, tensor, memmap, list of ``(n, d)``) or ``(n, d)``.
        name: the site, for messages.
        layers: the layer numbers of ``X``, for messages.
    """

    def __init__(
        self, X: Any, *, name: str | None = None, layers: Sequence[int] | None = None
    ) -> None:
        X = _as_stack(X)
        self.name = name
        self.xs: list[torch.Tensor] = []
        self.refs: list[torch.Tensor] = []
        for li in range(len(X)):
            lid = li if layers is None else layers[li]
            site = f"{name + ', ' if name else ''}layer {lid}"
            x = _layer_tensor(X, li)
            if x.ndim != 2 or (self.xs and x.shape != self.xs[0].shape):
                raise ValueError(
                    f"{_site(site)} has shape {tuple(x.shape)}, "
                    "expected the same (n, d) for every layer"
                )
            ref = x.mean(0)
            if not bool(torch.isfinite(ref).all()):  # a finite column sum holds no NaN/inf
                check_finite(x, site if len(X) > 1 or layers is not None or not name else name)
            self.xs.append(x - ref)
            self.refs.append(ref)
        self._gram: list[torch.Tensor | None] = [None] * len(self.xs)
        self._xs32: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.xs)

    @property
    def n(self) -> int:
        return int(self.xs[0].shape[0])

    @property
    def d(self) -> int:
        return int(self.xs[0].shape[1])

    def layer(self, j: int) -> PreparedLayers:
        """Layer ``j`` alone (a view, no copy)."""
        new = object.__new__(PreparedLayers)
        new.name, new.xs, new.refs = self.name, [self.xs[j]], [self.refs[j]]
        new._gram = [self._gram[j]]
        new._xs32 = None if self._xs32 is None else [self._xs32[j]]
        return new

    def rows(self, idx: Any) -> PreparedLayers:
        """The same layers restricted to rows ``idx`` (preconditioners from all rows)."""
        arr = np.asarray(idx)
        new = object.__new__(PreparedLayers)
        new.name, new.refs, new._gram = (
            self.name,
            self.refs,
            [self.gram(j) for j in range(len(self))],
        )
        ranged = arr.ndim == 1 and arr.size and np.issubdtype(arr.dtype, np.integer)
        if ranged and bool((np.diff(arr) == 1).all()):  # a range of rows: views, no copy
            new.xs = [x[int(arr[0]) : int(arr[-1]) + 1] for x in self.xs]
        else:
            new.xs = [x[torch.as_tensor(arr)] for x in self.xs]
        new._xs32 = None
        return new

    def xs32(self) -> list[torch.Tensor]:
        """The centred layers in float32 (cached): the solver's matrix products read these."""
        if self._xs32 is None:
            self._xs32 = [x.float() for x in self.xs]
        return self._xs32

    def gram(self, li: int, max_rows: int = 2048) -> torch.Tensor:
        """Feature correlation ``(d, d)`` of layer ``li`` from up to ``max_rows`` evenly spaced rows
        (cached; float32 products: it only shapes the preconditioner, never the solution)."""
        if self._gram[li] is None:
            x = self.xs[li]
            z = x[:: max(1, x.shape[0] // max_rows)]
            z = (z / z.std(0, correction=0).clamp_min(1e-12)).float()
            self._gram[li] = (z.T @ z).double() / z.shape[0]
        return self._gram[li]


def _constant(x: torch.Tensor, row_group: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``(P, d)``: whether each feature takes one value on each problem's training rows
    (``member``: ``(groups, P)``, nonzero where a row group trains the problem)."""
    idx = row_group[:, None].expand_as(x)
    G = member.shape[0]
    lo = torch.full((G, x.shape[1]), math.inf, dtype=x.dtype).scatter_reduce_(0, idx, x, "amin")
    hi = torch.full((G, x.shape[1]), -math.inf, dtype=x.dtype).scatter_reduce_(0, idx, x, "amax")
    used = (member > 0).T[:, :, None]  # (P, groups, 1)
    pmin = torch.where(used, lo[None], math.inf).amin(1)
    pmax = torch.where(used, hi[None], -math.inf).amax(1)
    return pmax <= pmin


@dataclass
class LogisticFit:
    """Fitted parameters of a batch of problems (``L`` layers × ``P`` problems).

    Attributes:
        coef: ``(L, P, d, K)`` weights on the standardised inputs.
        intercept: ``(L, P, K)``.
        mean: ``(L, P, d)`` training-row means.
        scale: ``(L, P, d)`` training-row standard deviations (1 where a feature is constant).
        class_mask: ``(P, K)`` classes each problem was fitted on (others get probability 0).
        n_iter: ``(L, P)`` L-BFGS iterations.
        converged: ``(L, P)`` whether the stopping test was met within ``max_iter``.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    class_mask: torch.Tensor
    n_iter: np.ndarray
    converged: np.ndarray

    def select(self, problems: slice) -> LogisticFit:
        """The fits of some problems only (views)."""
        return LogisticFit(
            self.coef[:, problems],
            self.intercept[:, problems],
            self.mean[:, problems],
            self.scale[:, problems],
            self.class_mask[problems],
            self.n_iter[:, problems],
            self.converged[:, problems],
        )

    def log_proba(self, X: Any, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Log-probabilities ``(L, P, n, K)`` (float64) of every problem's model on rows ``X``.

        Args:
            X: ``(L, n, d)`` inputs or :class:`PreparedLayers`, one layer per fitted layer
                (or per entry of ``layers``).
            layers: which fitted layers ``X`` holds (default: all).
        """
        prep = X if isinstance(X, PreparedLayers) else PreparedLayers(X)
        idx = list(range(self.coef.shape[0])) if layers is None else list(layers)
        if len(prep) != len(idx):
            raise ValueError(f"X holds {len(prep)} layers but {len(idx)} were requested")
        out = []
        for j, li in enumerate(idx):
            W, sd = self.coef[li], self.scale[li]
            P, d, K = W.shape
            c = self.intercept[li] + torch.einsum(
                "pd,pdk->pk", (prep.refs[j] - self.mean[li]) / sd, W
            )
            Vt = (W / sd[:, :, None]).transpose(1, 2).reshape(P * K, d)
            Z = (Vt @ prep.xs[j].T).view(P, K, -1) + c[:, :, None]
            Z = Z.masked_fill(~self.class_mask[:, :, None], -math.inf)
            out.append(torch.log_softmax(Z, dim=1).transpose(1, 2))
        return torch.stack(out)


def _polish(
    obj: _Objective,
    theta: torch.Tensor,
    n_iter: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    precond: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Check a solve done with float32 products against the float64 gradient, and continue in
    float64 the problems that do not meet ``tol`` there (so the stopping test always holds
    in float64)."""

    def exact(blocked: bool | None) -> _Objective:
        return _Objective(
            obj.prep,
            obj.Y,
            obj.M,
            obj.mean,
            obj.scale,
            obj.lam,
            obj.class_mask,
            obj.pen_b,
            products=torch.float64,
            blocked=blocked,
        )

    # the check reads blocks where that needs no copy of the rows (MDL prefixes), all rows
    # otherwise (cross-validation folds)
    _, g = exact(None)(theta, torch.ones(theta.shape[0], dtype=torch.bool))
    ok = g.abs().amax(1) <= tol
    budget = torch.from_numpy(np.maximum(max_iter - n_iter, 0)).long()  # each its own rest
    redo = ~ok & (budget > 0)
    if not bool(redo.any()):
        return theta, n_iter, ok.numpy()
    theta2, it2, cv2 = minimize_batched(
        exact(True),
        theta,
        max_iter=int(budget[redo].max()),
        tol=tol,
        precond=precond,
        active=redo,
        budget=budget,
    )
    return theta2, n_iter + it2, ok.numpy() | cv2


def fit_logistic(
    X: Any,
    y: Any,
    *,
    train_mask: Any = None,
    n_classes: int | None = None,
    C: float = 1.0,
    standardize: bool = True,
    penalize_intercept: Any = False,
    all_classes: Any = False,
    tol: float = 1e-6,
    max_iter: int = 1000,
    history: int = 10,
    precondition: bool | None = None,
    products: torch.dtype = torch.float32,
    name: str | None = None,
) -> LogisticFit:
    """Fit ``L × P`` L2-regularised multinomial logistic regressions at once.

    Args:
        X: ``(L, n, d)`` activations (array, tensor, memmap, list of ``(n, d)``), ``(n, d)``, or
            :class:`PreparedLayers`. Raw inputs are converted in chunks of layers (≈256 MiB).
        y: ``(n,)`` or ``(P, n)`` integer class codes in ``[0, K)``, one row per problem.
        train_mask: ``(P, n)`` or ``(n,)`` booleans, the rows each problem trains on
            (default: all rows).
        n_classes: ``K`` (default: largest code + 1).
        C: inverse regularisation strength, as in scikit-learn.
        standardize: standardise inputs with each problem's training-row mean and std.
        penalize_intercept: also penalise the intercept (not scikit-learn's objective); a
            bool, or ``(P,)`` booleans, one per problem.
        all_classes: fit every problem on all ``K`` classes, even those absent from its
            training rows (needs ``penalize_intercept`` to stay finite); default: only the
            classes present, as scikit-learn does. A bool, or ``(P,)`` booleans.
        tol: stop when max |gradient| of the mean-loss objective is at most ``tol``.
        max_iter: L-BFGS iterations per problem.
        history: L-BFGS memory.
        precondition: precondition L-BFGS with the feature correlation (same solution, far
            fewer iterations on correlated activations); None (default): for the problems
            with at least ``d`` training rows (below that the penalty dominates the curvature).
        products: dtype of the two large matrix products per evaluation (logits and
            gradient); softmax, losses and all sums stay in float64. ``torch.float32`` (the
            default) is faster (gradients within ~1e-8 of float64 ones); the solution is checked
            against the float64 gradient and the problems that miss ``tol`` there go on in
            float64, so the stopping test always holds in float64.
        name: the site, for messages.

    Returns:
        A :class:`LogisticFit` with ``L × P`` fitted problems.
    """
    if isinstance(X, PreparedLayers):
        chunks: list[Any] = [X]
        n = X.n
    else:
        X = _as_stack(X)
        n = int(X[0].shape[0])
        per_layer = n * int(X[0].shape[1]) * 8
        step = max(1, min(len(X), _CHUNK_BYTES // max(per_layer, 1)))
        chunks = [range(s, min(len(X), s + step)) for s in range(0, len(X), step)]
    Y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    Y = Y[None] if Y.ndim == 1 else Y
    if Y.ndim != 2 or Y.shape[1] != n:
        raise ValueError(f"{_site(name)}: {n} rows but labels of shape {tuple(Y.shape)}")
    P = Y.shape[0]
    Mb = (
        torch.ones(P, n, dtype=torch.bool)
        if train_mask is None
        else torch.as_tensor(np.asarray(train_mask), dtype=torch.bool)
    )
    Mb = Mb.expand(P, n) if Mb.ndim == 1 else Mb
    if tuple(Mb.shape) != (P, n):
        raise ValueError(
            f"{_site(name)}: train_mask must have shape {(P, n)}, got {tuple(Mb.shape)}"
        )
    if products not in (torch.float32, torch.float64):
        raise ValueError(f"products must be torch.float32 or torch.float64, not {products}")
    pen_b = torch.as_tensor(np.broadcast_to(np.asarray(penalize_intercept, bool), (P,)).copy())
    every = torch.as_tensor(np.broadcast_to(np.asarray(all_classes, bool), (P,)).copy())
    if bool((every & ~pen_b).any()):
        raise ValueError("all_classes=True needs penalize_intercept=True (finite intercepts)")
    K = int(n_classes) if n_classes is not None else int(Y.max()) + 1
    if int(Y.min()) < 0 or int(Y.max()) >= K:
        raise ValueError(f"{_site(name)}: label codes must lie in [0, {K})")
    n_p = Mb.sum(1)
    present = torch.zeros(P, K, dtype=torch.bool)
    for p in range(P):
        present[p, Y[p][Mb[p]]] = True
    if bool((n_p == 0).any()) or bool(((present.sum(1) < 2) & ~every).any()):
        raise ValueError(
            f"{_site(name)}: training rows hold only 1 class (or none); "
            "a probe needs at least 2 classes"
        )
    class_mask = present | every[:, None]
    # scikit-learn fits two classes as one binomial vector: same solution as a doubled penalty
    lam = torch.where(class_mask.sum(1) == 2, 2.0, 1.0).double() / (C * n_p.double())
    M = Mb.double() / n_p.double()[:, None]
    # rows grouped by which problems train on them: each problem's training-row sums are sums
    # of a few group sums (one pass over the rows instead of one per problem)
    packed = np.packbits(Mb.numpy().T, axis=1)
    _, first, inv = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    row_group = torch.as_tensor(inv.reshape(-1))
    member = Mb[:, torch.as_tensor(first)].T.double() / n_p.double()  # (groups, P)
    parts = []
    for chunk in chunks:
        prep = (
            chunk
            if isinstance(chunk, PreparedLayers)
            else PreparedLayers([X[i] for i in chunk], name=name)
        )
        mus, sds = [], []
        for x in prep.xs:
            if standardize:
                sums = torch.zeros(2, member.shape[0], prep.d, dtype=torch.float64)
                sums[0].index_add_(0, row_group, x)
                sums[1].index_add_(0, row_group, x * x)
                mu, ex2 = member.T @ sums  # per problem: mean and mean square
                sd = (ex2 - mu * mu).clamp_min(0.0).sqrt()
                # a feature constant on a problem's training rows gets scale 1 (as in
                # scikit-learn): decided exactly from the rows' range, not from the variance,
                # whose rounding leaves ≈ 1e-9 there
                # (only where the variance is near its rounding: elsewhere it cannot be)
                near = sd <= 1e-6 * ex2.sqrt()
                if bool(near.any()):
                    sd = torch.where(near & _constant(x, row_group, member), 1.0, sd)
                sd = torch.where(sd == 0, 1.0, sd)
            else:
                mu, sd = (
                    torch.zeros(P, prep.d, dtype=torch.float64),
                    torch.ones(P, prep.d, dtype=torch.float64),
                )
            mus.append(mu)
            sds.append(sd)
        mu_t, sd_t = torch.stack(mus), torch.stack(sds)
        if not standardize:  # the model sees raw inputs: undo the centring in the parametrisation
            mu_t = -torch.stack(prep.refs)[:, None, :].expand(len(prep), P, prep.d).clone()
        obj = _Objective(prep, Y, M, mu_t, sd_t, lam, class_mask, pen_b, products)
        theta0 = torch.zeros(len(prep) * P, prep.d * K + K, dtype=torch.float64)
        use = n_p >= prep.d if precondition is None else torch.full((P,), bool(precondition))
        use &= standardize
        pc = obj.preconditioner(use) if bool(use.any()) else None
        # float32 gradients are good to ~1e-8: tighter tolerances are reached in the polish
        tol1 = tol if products == torch.float64 else max(tol, _F32_TOL)
        # float32 gradients are inexact: a problem that stops improving goes to the polish
        theta, it, cv = minimize_batched(
            obj,
            theta0,
            max_iter=max_iter,
            tol=tol1,
            history=history,
            precond=pc,
            patience=None if products == torch.float64 else _F32_PATIENCE,
        )
        if products != torch.float64:
            theta, it, cv = _polish(obj, theta, it, max_iter=max_iter, tol=tol, precond=pc)
        theta = theta.view(len(prep), P, -1)
        refs = torch.stack(prep.refs)[:, None, :]
        parts.append(
            (
                theta[:, :, : prep.d * K].reshape(len(prep), P, prep.d, K),
                theta[:, :, prep.d * K :],
                mu_t + refs,
                sd_t,
                it.reshape(len(prep), P),
                cv.reshape(len(prep), P),
            )
        )
    conv = np.concatenate([p[5] for p in parts])
    if not conv.all():
        logger.info(
            "%s: %d of %d fits stopped at max_iter=%d",
            _site(name),
            int((~conv).sum()),
            conv.size,
            max_iter,
        )
    return LogisticFit(
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
        torch.cat([p[3] for p in parts]),
        class_mask,
        np.concatenate([p[4] for p in parts]),
        conv,
    )
