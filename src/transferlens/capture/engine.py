"""The capture engine: one forward pass per batch, rows taken inside the site hooks.

Hooks are attached only through :func:`transferlens.models.site_hooks` (plain torch forward
hooks on the site map's modules), once per capture, and removed in ``finally``. Each hook
takes its site's rows straight from the activation (a gather, or a segment mean) and casts
them to the storage dtype, so the full ``(batch, pos, d)`` activation is never copied.

The forward pass runs under ``torch.inference_mode()`` unless gradients are asked for; both
are context managers, so no process-wide torch state changes. The model is put in eval mode
for the capture and its previous mode restored afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..models import ModelHandle, site_hooks
from ..models.sites import Site
from .select import BatchRows

__all__ = ["CaptureEngine", "STORAGE_DTYPES"]

STORAGE_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _check_float16(name: str, out: torch.Tensor, stored: torch.Tensor) -> None:
    """Refuse values that float16 turns into ±inf (beyond ±65504); inf/NaN the model itself
    produced pass through to the store's own checks."""
    over = torch.isinf(stored) & torch.isfinite(out)
    if bool(over.any()):
        peak = float(out[torch.isfinite(out)].abs().max())
        raise ValueError(
            f"{name}: {int(over.sum())} activation values reach {peak:.3g}, beyond float16's "
            "range (65504), and would be stored as inf; capture with dtype='bfloat16' or "
            "'float32' (--dtype), with overwrite=True (--overwrite) for this store"
        )


class CaptureEngine:
    """Runs batches through a model and returns the selected rows per site.

    Use as a context manager: hooks live exactly as long as the ``with`` block.

    Args:
        handle: the model.
        sites: validated sites.
        dtype: storage dtype name (``float32``, ``float16``, ``bfloat16``).
        grad: keep the autograd graph (no ``inference_mode``).
    """

    def __init__(self, handle: ModelHandle, sites: Sequence[Site], dtype: str, grad: bool = False):
        self.handle = handle
        self.sites = list(sites)
        self.dtype = STORAGE_DTYPES[dtype]
        self.grad = grad
        self._rows: BatchRows | None = None
        self._out: dict[str, torch.Tensor] = {}
        params = inspect.signature(handle.model.forward).parameters
        has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._pass_positions = "position_ids" in params or has_kwargs
        self._pass_use_cache = "use_cache" in params
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ hooks
    def _hook(self, name: str):
        def fn(act: torch.Tensor) -> None:
            rows = self._rows
            if rows is None:  # a forward pass outside run() (not ours)
                return None
            out = rows.take(act if self.grad else act.detach())
            stored = out.to(self.dtype)
            if self.dtype == torch.float16 and not bool(torch.isfinite(stored).all()):
                _check_float16(name, out, stored)
            self._out[name] = stored
            return None

        return fn

    def __enter__(self) -> CaptureEngine:
        stack = contextlib.ExitStack()
        try:
            fns = {s: self._hook(str(s)) for s in self.sites}
            stack.enter_context(site_hooks(self.handle.sitemap, fns))
            model = self.handle.model
            if model.training:
                model.eval()
                stack.callback(model.train)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    # ------------------------------------------------------------------ running
    def _grad_context(self) -> contextlib.AbstractContextManager:
        return torch.enable_grad() if self.grad else torch.inference_mode()

    def run(self, inputs: dict[str, torch.Tensor], rows: BatchRows) -> dict[str, torch.Tensor]:
        """One forward pass; returns site name -> rows ``(n_rows, ...)`` in the storage dtype
        (on the model's device)."""
        if self._stack is None:
            raise RuntimeError("CaptureEngine.run() must be called inside its `with` block")
        kwargs = dict(inputs)
        if not self._pass_positions:
            kwargs.pop("position_ids")
        if self._pass_use_cache:
            kwargs["use_cache"] = False
        self._rows, self._out = rows, {}
        try:
            with self._grad_context():
                self.handle.model(**kwargs)
            out = self._out
        finally:
            self._rows, self._out = None, {}
        missing = [str(s) for s in self.sites if str(s) not in out]
        if missing:
            raise RuntimeError(f"sites {', '.join(missing)} were not reached by the forward pass")
        return out


@contextlib.contextmanager
def engines(
    handles: Sequence[ModelHandle], sites: Sequence[Sequence[Site]], dtype: str, grad: bool
) -> Iterator[list[CaptureEngine]]:
    """Enter one engine per model (hooks of all removed on exit, also on errors)."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(CaptureEngine(h, s, dtype, grad))
            for h, s in zip(handles, sites, strict=True)
        ]
