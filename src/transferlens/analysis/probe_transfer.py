"""Probing baselines and transfer: the linear context baseline, extrapolation splits,
cross-lingual transfer and base→adapted transfer of probes (Kunz & Kuhlmann 2020, 2021).
Conventions as in :mod:`~transferlens.analysis.probe_methods`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transferlens.analysis.probe_common import (
    ProbeConfig,
    _cv,
    _predict,
    _result,
    _setup,
    _Table,
)
from transferlens.analysis.probe_fits import tallied
from transferlens.analysis.probe_labels import (
    _random_split_like,
    context_labels,
    extrapolation_split,
    group_folds,
)
from transferlens.results import AnalysisResult

__all__ = [
    "base_to_adapted_transfer",
    "cross_lingual_transfer",
    "extrapolation_probe",
    "linear_context_baseline",
]


@tallied
def linear_context_baseline(
    acts: Any,
    token_ids: Any,
    groups: Any,
    *,
    offsets: Sequence[int] = (-1, 1),
    top_k: int = 50,
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
) -> AnalysisResult:
    """Probe token vectors for their neighbours' identity (Kunz & Kuhlmann 2020).

    High accuracy means the vectors carry their linear context, so a task probe may succeed
    without structure. Labels: :func:`context_labels` (``top_k`` ids plus "other"); rows whose
    neighbour lies outside the example are left out.

    Args:
        acts: stack or ``{model: stack}`` of token rows, each example's rows contiguous, in order.
        token_ids: ``(n,)`` token id of each row.
        groups: ``(n,)`` example ids.
        offsets: neighbour positions (-1 previous, +1 next).
        top_k: classes kept besides "other".
        config, layer_ids: as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``model, layer, offset, quantity="accuracy"`` and per
        offset one ``quantity="majority"`` record (the most frequent class: chance level).
    """
    y0 = np.zeros(np.asarray(token_ids).size, np.int64)
    y0[0] = 1  # placeholder labels: only the shared input checks run on them
    cfg, models, _, _, g, ids = _setup(acts, y0, groups, config, layer_ids, "context")
    tab = _Table(g, cfg)
    for off in offsets:
        y = context_labels(token_ids, g, offset=off, top_k=top_k)
        den = (y >= 0).astype(np.float64)
        sc = _cv(models, y[None], g, int(y.max()) + 1, cfg, cfg.seeds, name="context")
        for m in models:
            for li, i in enumerate(ids):
                tab.add(sc[m][li, 0], den, model=m, layer=i, offset=off, quantity="accuracy")
        hit = (y == np.bincount(y[y >= 0]).argmax()).astype(np.float64)
        tab.add(
            np.broadcast_to(hit, (len(cfg.seeds), y.size)),
            den,
            model=None,
            layer=None,
            offset=off,
            quantity="majority",
        )
    return tab.into(
        _result(
            "linear_context",
            cfg,
            {"offsets": list(offsets), "top_k": top_k},
            {"n_rows": int(g.size)},
        )
    )


@tallied
def extrapolation_probe(
    acts: Any,
    labels: Any,
    scores: Any,
    groups: Any = None,
    *,
    train_fraction: float = 0.5,
    easy: str = "low",
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Train on easy rows, test on hard rows, against random splits of the same sizes
    (Kunz & Kuhlmann 2021).

    Args:
        scores: ``(n,)`` difficulty of each row (length, distance, frequency); see
            :func:`extrapolation_split` for ``train_fraction`` and ``easy``.
        Others as :func:`probe_accuracy`; ``config.seeds`` seed the random splits.

    Returns:
        metric ``accuracy``; records ``model, layer, split`` with split ``extrapolation``,
        ``random`` (mean ± std over seeds) or ``gap`` (random − extrapolation), and ``n_train``.
    """
    cfg, models, y, classes, g, ids = _setup(acts, labels, groups, config, layer_ids, task)
    lab = y >= 0
    ex = extrapolation_split(scores, train_fraction=train_fraction, easy=easy) & lab
    splits = {
        "extrapolation": [ex],
        "random": [_random_split_like(ex, g, s) & lab for s in cfg.seeds],
    }
    S = len(cfg.seeds)
    tab = _Table(g, cfg)
    for m, st in models.items():
        q = {}
        for sp, trains in splits.items():
            num, den = np.zeros((len(ids), S, y.size)), np.zeros((S, y.size))
            for si, tr in enumerate(trains):
                test = lab & ~tr
                pred = _predict(
                    st,
                    y[None],
                    tr[None],
                    len(classes),
                    [(st, np.where(test, 0, -1))],
                    cfg,
                    name=task,
                )[0][:, 0]
                num[:, si], den[si] = (pred == y) & test, test
            if sp == "extrapolation":  # deterministic: the same split for every seed
                num[:], den[:] = num[:, :1], den[:1]
            q[sp] = [
                tab.add(
                    num[li],
                    den,
                    model=m,
                    layer=i,
                    split=sp,
                    extra={"n_train": int(trains[0].sum())},
                )
                for li, i in enumerate(ids)
            ]
        for li, i in enumerate(ids):
            tab.diff(q["random"][li], q["extrapolation"][li], model=m, layer=i, split="gap")
    extra = {"train_fraction": train_fraction, "easy": easy}
    return tab.into(_result(f"{task}_extrapolation", cfg, extra, {"n_rows": int(lab.sum())}))


@tallied
def cross_lingual_transfer(
    acts: Mapping[str, Any],
    labels: Mapping[str, Any],
    groups: Mapping[str, Any] | None = None,
    *,
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    model: str = "model",
    task: str = "task",
) -> AnalysisResult:
    """Train on language A, test on language B: the full A×B matrix per layer.

    Folds are drawn over the parallel example ids shared by all languages, so every cell, the
    diagonal included, tests on examples whose translations were not trained on.

    Args:
        acts: ``{language: stack}``; stacks with the same layers (row counts may differ).
        labels: ``{language: (n_lang,) labels}`` from one label set.
        groups: ``{language: (n_lang,) parallel example ids}``; default: row ``i`` of every
            language is example ``i``.
        model: the ``model`` coordinate of the records.
        config, layer_ids, task: as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``model, layer, train_language, test_language``.
    """
    langs = list(acts)
    if set(labels) != set(langs) or (groups is not None and set(groups) != set(langs)):
        raise ValueError(
            f"acts, labels and groups need the same languages; got {langs}, {list(labels)}"
        )
    setups = {
        lg: _setup(
            acts[lg],
            labels[lg],
            None if groups is None else groups[lg],
            config,
            layer_ids,
            f"{task} {lg}",
        )
        for lg in langs
    }
    cfg, ids = setups[langs[0]][0], setups[langs[0]][5]
    classes = np.unique(np.concatenate([s[3] for s in setups.values()]))
    stacks, ys, gs = {}, {}, {}
    for lg, (_, mods, y, cl, g, lids) in setups.items():
        if len(lids) != len(ids):
            raise ValueError("every language needs the same number of layers")
        stacks[lg], gs[lg] = mods["model"], g
        ys[lg] = np.where(y >= 0, np.searchsorted(classes, cl[y.clip(min=0)]), -1)
    bounds = np.cumsum([0] + [ys[lg].size for lg in langs])
    sc = {(a, b): np.zeros((len(ids), len(cfg.seeds), ys[b].size)) for a in langs for b in langs}
    for si, s in enumerate(cfg.seeds):
        f_all = group_folds(np.concatenate([gs[lg] for lg in langs]), cfg.n_folds, seed=s)
        folds = {lg: f_all[bounds[k] : bounds[k + 1]] for k, lg in enumerate(langs)}
        for a in langs:
            masks = np.stack([folds[a] != f for f in range(cfg.n_folds)])
            targets = [(stacks[b], np.where(ys[b] >= 0, folds[b], -1)) for b in langs]
            for b, pred in zip(
                langs,
                _predict(stacks[a], ys[a][None], masks, len(classes), targets, cfg, name=task),
                strict=True,
            ):
                sc[(a, b)][:, si] = (pred[:, 0] == ys[b]) & (ys[b] >= 0)
    data = {
        "languages": langs,
        "classes": [str(c) for c in classes],
        "n_rows": {lg: int((ys[lg] >= 0).sum()) for lg in langs},
    }
    res = _result(f"{task}_cross_lingual", cfg, {}, data)
    for b in langs:
        tab = _Table(gs[b], cfg)
        for li, i in enumerate(ids):
            for a in langs:
                tab.add(
                    sc[(a, b)][li],
                    (ys[b] >= 0).astype(np.float64),
                    model=model,
                    layer=i,
                    train_language=a,
                    test_language=b,
                )
        tab.into(res)
    return res


@tallied
def base_to_adapted_transfer(
    base: Any,
    adapted: Any,
    labels: Any,
    groups: Any = None,
    *,
    names: tuple[str, str] = ("base", "adapted"),
    config: ProbeConfig | None = None,
    layer_ids: Sequence[Any] | None = None,
    task: str = "task",
) -> AnalysisResult:
    """Representation drift: train on one model's activations, test on the other's (same rows).

    Each probe is tested on the held-out fold of its own model and of the other model; the
    ``drop`` (own − other, paired over the same test rows) is exactly 0 where the layers are
    identical.

    Args:
        base, adapted: stacks with the same layers and rows.
        names: the two models' names in the records.
        Others as :func:`probe_accuracy`.

    Returns:
        metric ``accuracy``; records ``train_model, test_model, layer, quantity`` with quantity
        ``accuracy`` or ``drop``.
    """
    cfg, models, y, classes, g, ids = _setup(
        {names[0]: base, names[1]: adapted}, labels, groups, config, layer_ids, task
    )
    sc = {(a, b): np.zeros((len(ids), len(cfg.seeds), y.size)) for a in names for b in names}
    for si, s in enumerate(cfg.seeds):
        folds = group_folds(g, cfg.n_folds, seed=s)
        masks = np.stack([folds != f for f in range(cfg.n_folds)])
        for a in names:
            preds = _predict(
                models[a],
                y[None],
                masks,
                len(classes),
                [(models[b], folds) for b in names],
                cfg,
                name=task,
            )
            for b, pred in zip(names, preds, strict=True):
                sc[(a, b)][:, si] = (pred[:, 0] == y) & (y >= 0)
    tab = _Table(g, cfg)
    den = (y >= 0).astype(np.float64)
    for li, i in enumerate(ids):
        for a, o in (names, names[::-1]):
            own = tab.add(
                sc[(a, a)][li], den, train_model=a, test_model=a, layer=i, quantity="accuracy"
            )
            other = tab.add(
                sc[(a, o)][li], den, train_model=a, test_model=o, layer=i, quantity="accuracy"
            )
            tab.diff(own, other, train_model=a, test_model=o, layer=i, quantity="drop")
    return tab.into(
        _result(
            f"{task}_base_to_adapted", cfg, {"names": list(names)}, {"n_rows": int((y >= 0).sum())}
        )
    )
