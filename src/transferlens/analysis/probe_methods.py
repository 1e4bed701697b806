"""Probing methodology: cross-validation by example, control tasks, MDL, baselines, transfer.

Every function returns an :class:`~transferlens.results.AnalysisResult` whose records carry a
percentile-bootstrap interval over *examples*: ``groups`` gives one example (paragraph,
sentence) id per row; tokens of one example are never split between training and test folds
and are resampled together. With several ``seeds`` (fold assignment, control labels, MDL
order, random splits) a record's value is the mean over seeds, ``seed_std`` their standard
deviation, and the interval is the bootstrap of the seed-averaged statistic.

References: Hewitt & Liang 2019 (control tasks, selectivity); Voita & Titov 2020 (MDL, online
code); Kunz & Kuhlmann 2020 (linear context), 2021 (extrapolation splits).

The methods are spread over small modules and all re-exported here: settings, folds and
control labels (:mod:`~transferlens.analysis.probe_common`), accuracy and selectivity (this
module), MDL (:mod:`~transferlens.analysis.probe_mdl`), baselines and transfer
(:mod:`~transferlens.analysis.probe_transfer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transferlens.analysis.probe_common import (
    MDL_FRACTIONS,
    ProbeConfig,
    _control_codes,
    _cv,
    _result,
    _setup,
    _Table,
)
from transferlens.analysis.probe_fits import tallied
from transferlens.analysis.probe_labels import (
    context_labels,
    control_labels,
    extrapolation_split,
    group_folds,
)
from transferlens.analysis.probe_mdl import MDLCode, mdl_codelength, mdl_probe
from transferlens.analysis.probe_transfer import (
    base_to_adapted_transfer,
    cross_lingual_transfer,
    extrapolation_probe,
    linear_context_baseline,
)
from transferlens.results import AnalysisResult

__all__ = [
    "MDL_FRACTIONS",
    "MDLCode",
    "ProbeConfig",
    "base_to_adapted_transfer",
    "context_labels",
    "control_labels",
    "cross_lingual_transfer",
    "extrapolation_probe",
    "extrapolation_split",
    "group_folds",
    "linear_context_baseline",
    "mdl_codelength",
    "mdl_probe",
    "probe_accuracy",
    "selectivity",
]

# --------------------------------------------------------------------------- accuracy


@tallied
def probe_accuracy(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    config: ProbeConfig | None = None,
    probe: Any = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Cross-validated probe accuracy per layer, for one model or several on the same rows.

    Args:
        acts: ``(L, n, d)`` stack (array, tensor, memmap, list of ``(n, d)``), or a mapping
            ``{"base": stack, "adapted": stack}`` of stacks on the same rows.
        labels: ``(n,)`` labels.
        groups: ``(n,)`` example ids (default: each row is its own example).
        config: :class:`ProbeConfig`.
        probe: a scikit-learn classifier to clone per fold instead of the linear probe.
        layer_ids: layer numbers for the records (default ``0..L-1``).
        task: the task's name (result name ``{task}_accuracy``).

    Returns:
        metric ``accuracy``; records ``model, layer, quantity="accuracy"``, and for two models
        ``quantity="difference"`` (second − first, paired over the same rows and folds).
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    sc = _cv(models, y[None], g, len(classes), cfg, cfg.seeds, probe, task)
    tab = _Table(g, cfg)
    den = (y >= 0).astype(np.float64)
    q = {
        m: [
            tab.add(sc[m][li, 0], den, model=m, layer=i, quantity="accuracy")
            for li, i in enumerate(ids)
        ]
        for m in models
    }
    if len(models) == 2:
        a, b = list(models)
        for li, i in enumerate(ids):
            tab.diff(q[b][li], q[a][li], model=f"{b}-{a}", layer=i, quantity="difference")
    majority = float(np.bincount(y[y >= 0]).max() / (y >= 0).sum())
    data = {
        "n_rows": int((y >= 0).sum()),
        "classes": [str(c) for c in classes],
        "majority_accuracy": majority,
    }
    return tab.into(
        _result(
            f"{task}_accuracy", cfg, {"probe": repr(probe) if probe is not None else "linear"}, data
        )
    )


@tallied
def selectivity(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    types: Any = None,
    config: ProbeConfig | None = None,
    probe: Any = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Task accuracy, control-task accuracy and selectivity per layer (Hewitt & Liang 2019).

    For each seed a control task is drawn by :func:`control_labels`, one label per word type
    (``types`` given: a word-level task) or per example (``groups``: an example-level task),
    and probed with the same probe, hyperparameters, rows and folds as the task.

    Args:
        types: ``(n,)`` word type of each row (word-level tasks).
        Others as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``model, layer, quantity`` with quantity
        ``task_accuracy``, ``control_accuracy`` or ``selectivity`` (their paired difference).
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    sc = {m: np.zeros((len(ids), 2, len(cfg.seeds), y.size)) for m in models}
    for si, s in enumerate(cfg.seeds):
        Y = np.stack([y, _control_codes(labels, types, g, s, cfg, classes, y)])
        for m, v in _cv(models, Y, g, len(classes), cfg, [s], probe, task).items():
            sc[m][:, :, si] = v[:, :, 0]
    tab = _Table(g, cfg)
    den = (y >= 0).astype(np.float64)
    for m in models:
        for li, i in enumerate(ids):
            a = tab.add(sc[m][li, 0], den, model=m, layer=i, quantity="task_accuracy")
            b = tab.add(sc[m][li, 1], den, model=m, layer=i, quantity="control_accuracy")
            tab.diff(a, b, model=m, layer=i, quantity="selectivity")
    extra = {
        "control": "word type" if types is not None else "example",
        "probe": repr(probe) if probe is not None else "linear",
    }
    data = {"n_rows": int((y >= 0).sum()), "classes": [str(c) for c in classes]}
    return tab.into(_result(f"{task}_selectivity", cfg, extra, data))
