"""Independent groups of layers fitted side by side on the CPU cores.

The probe solver's work per layer is a long chain of small tensor operations (a batched
L-BFGS iteration, two thin matrix products); torch's intra-op threads speed such operations up
far less than the number of cores. Groups of layers are independent problems, so
:func:`run_groups` runs them on ``torch.get_num_threads()`` worker threads, each running its
operations on one intra-op thread (torch releases the GIL inside its operations). Every group
is computed the same way whatever thread runs it and writes its own results, so the numbers do
not depend on scheduling; they may differ in the last bits from a run with several intra-op
threads (another BLAS, other blocking). torch's thread count is process-wide: while groups
run, other threads of the process see one intra-op thread too.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["layer_groups", "run_groups", "run_jobs", "workers"]

T = TypeVar("T")


def workers() -> int:
    """How many groups run at once: torch's intra-op thread count (at least 1)."""
    return max(1, torch.get_num_threads())


def layer_groups(n_layers: int, per_group: int) -> list[range]:
    """``range`` s of at most ``per_group`` layers (memory bound per group), and at least as many
    groups as :func:`workers` where there are enough layers, so that every core has work."""
    step = max(1, min(per_group, -(-n_layers // workers())))
    return [range(s, min(n_layers, s + step)) for s in range(0, n_layers, step)]


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    from transferlens.analysis.blas import blas_threads

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads(1):
            yield
    finally:
        torch.set_num_threads(prev)


def run_groups(fn: Callable[[T], None], groups: Iterable[T]) -> None:
    """Call ``fn(group)`` for every group: in order on this thread if there is one worker or one
    group, else on :func:`workers` threads with one intra-op thread each (restored after). An
    exception from a group is raised here (the first failing group's, in order); groups not
    started by then are cancelled.
    """
    groups = list(groups)
    n = min(workers(), len(groups))
    if n <= 1:
        for g in groups:
            fn(g)
        return
    with _one_intra_op_thread(), ThreadPoolExecutor(n) as pool:
        # each job runs in a copy of the caller's context (its context variables, e.g. the
        # probe-fit tallies of :mod:`transferlens.analysis.probe_fits`)
        futures = [pool.submit(contextvars.copy_context().run, fn, g) for g in groups]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _call(job: Callable[[], None]) -> None:
    job()


def run_jobs(jobs: Iterable[Callable[[], None]]) -> None:
    """:func:`run_groups` for jobs that take no argument (one per layer group, possibly of
    several models: they share the workers)."""
    run_groups(_call, jobs)
