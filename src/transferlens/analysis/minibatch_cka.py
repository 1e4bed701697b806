"""Streaming CKA over minibatches (Nguyen, Raghu & Kornblith, ICLR 2021).

For ``n`` too large to hold (100k examples and more): each batch adds its unbiased HSIC values
(Song et al. 2012) for every layer pair to running sums, and CKA is formed from the sums.
Memory is one batch plus ``L × M`` numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from transferlens.analysis.cka_matrix import Layers, _layer_list, _normalise, hsic_matrix
from transferlens.analysis.similarity import Kind
from transferlens.analysis.validate import _where

__all__ = ["MinibatchCKA"]


class MinibatchCKA:
    """Streaming CKA over minibatches (Nguyen, Raghu & Kornblith, ICLR 2021).

    Each :meth:`update` adds the batch's unbiased HSIC values (Song et al.) to running sums
    for every layer pair; :meth:`compute` returns
    ``Σ_b HSIC₁(K_b,L_b) / √(Σ_b HSIC₁(K_b,K_b) · Σ_b HSIC₁(L_b,L_b))``. This is not the
    mean of per-batch CKA values, which is strongly biased upwards for small batches. Memory
    is that of one batch plus ``L × M`` numbers. For ``kind="rbf"`` the bandwidth is set from
    each batch's own median distance.

    Example:
        >>> acc = MinibatchCKA()
        >>> for xs, ys in batches:          # xs: L arrays (b × p), ys: M arrays
        ...     acc.update(xs, ys)
        >>> acc.compute()                   # L × M array

    Args:
        kind: ``"linear"`` or ``"rbf"``.
        threshold: RBF bandwidth factor.
        dtype: dtype of the large products (see :func:`cka_matrix`).
        device: compute device (``None``: the batch's).
        name: label of the data for error messages.
    """

    def __init__(
        self,
        kind: Kind = "linear",
        *,
        threshold: float = 1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        if kind not in ("linear", "rbf"):
            raise ValueError(f"kind must be 'linear' or 'rbf'; got {kind!r}")
        self.kind, self.threshold, self.dtype, self.device, self.name = (
            kind,
            threshold,
            dtype,
            device,
            name,
        )
        self.reset()

    def reset(self) -> None:
        """Forget all batches."""
        self.hsic_xy_: torch.Tensor | None = None
        self.hsic_xx_: torch.Tensor | None = None
        self.hsic_yy_: torch.Tensor | None = None
        self.n_batches_ = 0
        self.n_examples_ = 0
        self._layout: tuple[Any, ...] | None = None

    def update(self, X: Layers, Y: Layers | None = None) -> None:
        """Add one batch.

        Args:
            X: the batch's activations for model X: one ``b × p`` array (scalar CKA), an
                ``L × b × p`` array or a sequence of ``L`` arrays.
            Y: the same ``b`` examples for model Y (``M`` layers), or ``None`` to compare the
                layers of X with each other.
        """
        sym = Y is None or Y is X
        scalar = (not sym and _is_single(X) and _is_single(Y)) or (sym and _is_single(X))
        la = _layer_list(X, "X", self.name)
        lb = None if sym else _layer_list(Y, "Y", self.name)
        layout = (sym, scalar, len(la), None if lb is None else len(lb))
        if self._layout is not None and layout != self._layout:
            raise ValueError(
                f"{_where(self.name)}this batch has layout (symmetric, scalar, L, M)={layout} but "
                f"earlier batches had {self._layout}; pass the same layers every batch"
            )
        b = int(la[0].shape[0])
        if b < 4:
            raise ValueError(
                f"{_where(self.name)}a batch of {b} examples is too small: the unbiased HSIC "
                "needs at least 4 per batch"
            )
        cross, sa, sb, _ = hsic_matrix(
            la,
            lb,
            kind=self.kind,
            unbiased=True,
            threshold=self.threshold,
            dtype=self.dtype,
            device=self.device,
            name=self.name,
        )
        if self.hsic_xy_ is None:
            self.hsic_xy_, self.hsic_xx_, self.hsic_yy_ = cross, sa, sb
        else:
            self.hsic_xy_ = self.hsic_xy_ + cross
            self.hsic_xx_ = self.hsic_xx_ + sa
            self.hsic_yy_ = self.hsic_yy_ + sb
        self._layout = layout
        self.n_batches_ += 1
        self.n_examples_ += b

    def compute(self) -> float | np.ndarray:
        """Minibatch CKA: a float for single arrays, else an ``L × M`` array."""
        if self.hsic_xy_ is None or self._layout is None:
            raise ValueError("no batches yet; call update() with at least one batch first")
        out = _normalise(self.hsic_xy_, self.hsic_xx_, self.hsic_yy_, self.name)
        return float(out[0, 0]) if self._layout[1] else out


def _is_single(X: Any) -> bool:
    return isinstance(X, (np.ndarray, torch.Tensor)) and X.ndim == 2
