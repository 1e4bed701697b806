"""Which probe fits stopped at ``max_iter``: counted during a probing method, reported after it.

The batched probes of one method call are fitted in many jobs on worker threads
(:mod:`~transferlens.analysis.workers`, which carry the caller's context variables into them).
:func:`note_fits` adds each batch's convergence flags to the tallies open in the context, and
the methods wrapped by :func:`tallied` put the counts into their result's ``data``
(``probe_fits``) and warn (:class:`sklearn.exceptions.ConvergenceWarning`) when any fit
stopped at the iteration limit: its accuracy or codelength comes from an unfinished optimum.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np

__all__: list[str] = []

F = TypeVar("F", bound=Callable[..., Any])


class _Tally:
    def __init__(self) -> None:
        self.total = 0
        self.unconverged = 0
        self._lock = threading.Lock()

    def add(self, converged: np.ndarray) -> None:
        with self._lock:
            self.total += int(converged.size)
            self.unconverged += int((~converged).sum())


_TALLIES: ContextVar[tuple[_Tally, ...]] = ContextVar("probe_fit_tallies", default=())


@contextmanager
def fit_tally() -> Iterator[_Tally]:
    """Count the fits noted inside the block (and in the jobs it runs)."""
    tally = _Tally()
    token = _TALLIES.set((*_TALLIES.get(), tally))
    try:
        yield tally
    finally:
        _TALLIES.reset(token)


def note_fits(converged: Any) -> None:
    """Add a batch of fits' convergence flags to every open tally."""
    flags = np.asarray(converged, dtype=bool)
    for tally in _TALLIES.get():
        tally.add(flags)


def tallied(fn: F) -> F:
    """Run a probing method with a fit tally; record it in the result and warn if needed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with fit_tally() as tally:
            out = fn(*args, **kwargs)
        data = getattr(out, "data", None)
        if isinstance(data, dict):
            data["probe_fits"] = {"total": tally.total, "unconverged": tally.unconverged}
        if tally.unconverged:
            from sklearn.exceptions import ConvergenceWarning

            warnings.warn(
                f"{fn.__name__}: {tally.unconverged} of {tally.total} probe fits stopped at "
                "the iteration limit (their results come from an unfinished fit); raise "
                "ProbeConfig.max_iter or regularise more (a smaller C)",
                ConvergenceWarning,
                stacklevel=2,
            )
        return out

    return wrapper  # type: ignore[return-value]
