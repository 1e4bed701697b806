"""One function per figure: ``(result, style) -> matplotlib Figure``. No ``plt.show()``.

Each function reads one :class:`~transferlens.results.AnalysisResult` whose records have the
coordinates listed in its docstring (the ``compare`` stages write them in that shape). Error
bars and bands are the records' ``ci_low``/``ci_high``; scales are fixed where the measure has
a fixed range (accuracy, CKA in [0, 1]) so that figures are comparable across reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..results import AnalysisResult
from .style import LINESTYLES, MARKERS, MODEL_COLORS, PALETTE, Style

__all__ = [
    "behaviour_figure",
    "cka_heatmaps_figure",
    "cka_per_layer_figure",
    "crosslingual_figure",
    "latent_language_figure",
    "patch_heatmap_figure",
    "probe_layers_figure",
    "probe_transfer_figure",
    "weight_change_figure",
]


def _uniq(records: Sequence[dict], key: str) -> list:
    out: list = []
    for r in records:
        v = r.get(key)
        if v not in out:
            out.append(v)
    return out


def _label(result: AnalysisResult, model: str) -> str:
    names = result.config.get("display_names") or {}
    return str(names.get(model, model))


def _color(model: str, i: int) -> str:
    return MODEL_COLORS.get(model, PALETTE[i % len(PALETTE)])


def _line(
    ax, recs: list[dict], x: str, *, label: str, color: str, ls: str = "-", marker: str = "o"
) -> None:
    recs = sorted(recs, key=lambda r: r[x])
    xs = np.array([r[x] for r in recs], dtype=float)
    ys = np.array([np.nan if r["value"] is None else r["value"] for r in recs], dtype=float)
    ax.plot(xs, ys, ls=ls, marker=marker, color=color, label=label)
    lo = np.array([_num(r.get("ci_low")) for r in recs], dtype=float)
    hi = np.array([_num(r.get("ci_high")) for r in recs], dtype=float)
    has = np.isfinite(lo) & np.isfinite(hi)
    if has.any():  # the band where intervals are known, gaps where they are not
        ax.fill_between(xs, lo, hi, where=has, color=color, alpha=0.2, linewidth=0)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _legend_below(fig: Figure, ax, title: str | None = None) -> None:
    """One legend under the figure, with the entries of every panel (once each)."""
    handles, labels = [], []
    for a in fig.axes if fig.axes else [ax]:
        for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(len(labels), 4), title=title
        )


def _cka_label(result: AnalysisResult) -> str:
    """``"debiased linear CKA"`` or ``"linear CKA"``, from the result's metric or config."""
    debiased = "debiased" in result.metric or bool(result.config.get("debiased"))
    return "debiased linear CKA" if debiased else "linear CKA"


def _cka_floor(recs: list[dict]) -> float:
    """Lower axis limit for CKA: 0, or below it where a (debiased) value or interval is."""
    low = [r.get(k) for r in recs for k in ("value", "ci_low")]
    low = [v for v in low if isinstance(v, (int, float)) and np.isfinite(v)]
    m = min(low, default=0.0)
    return 0.0 if m >= 0 else float(np.floor(m * 10.0) / 10.0)


def _layer_axis(ax, layers: Sequence[Any]) -> None:
    ax.set_xlabel("layer")
    ticks = [v for v in layers if isinstance(v, (int, float))]
    if ticks and len(ticks) <= 16:
        ax.set_xticks(sorted(ticks))


def behaviour_figure(
    bpb: AnalysisResult, style: Style, fertility: AnalysisResult | None = None
) -> Figure:
    """Held-out bits per byte per language (records: model, language, value, ci), and
    tokenizer fertility (records: model, language, value, ci) if given."""
    panels = 2 if fertility is not None else 1
    fig = Figure(
        layout="constrained",
        figsize=style.size(wide=panels > 1, aspect=0.42 if panels > 1 else None),
    )
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, res, ylabel in zip(
        axes, [bpb, fertility], ["bits per byte (lower is better)", "tokens per word"], strict=False
    ):
        if res is None:
            continue
        langs = _uniq(res.records, "language")
        models = _uniq(res.records, "model")
        width = 0.8 / max(1, len(models))
        x = np.arange(len(langs))
        for i, m in enumerate(models):
            vals, lo, hi = [], [], []
            for lang in langs:
                rec = next(
                    (r for r in res.records if r["model"] == m and r["language"] == lang), None
                )
                v = np.nan if rec is None or rec["value"] is None else rec["value"]
                vals.append(v)
                lo.append(v - rec["ci_low"] if rec and rec.get("ci_low") is not None else 0.0)
                hi.append(rec["ci_high"] - v if rec and rec.get("ci_high") is not None else 0.0)
            ax.bar(
                x + (i - (len(models) - 1) / 2) * width,
                vals,
                width,
                yerr=[lo, hi],
                color=_color(m, i),
                label=_label(res, m),
                error_kw={"elinewidth": 0.8},
            )
        ax.set_xticks(x, [str(v) for v in langs])
        ax.set_xlabel("language")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels))
    return fig


def probe_layers_figure(result: AnalysisResult, style: Style) -> Figure:
    """Probe accuracy per layer, base vs adapted, with the control task.

    Records: task, model, kind (``task``/``control``), layer, value, ci. ``data["chance"]``
    (per task) draws the majority/chance line.
    """
    tasks = _uniq(result.records, "task")
    n = len(tasks)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = Figure(
        layout="constrained", figsize=style.size(wide=n > 1, aspect=0.45 * rows if n > 1 else None)
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    chance = result.data.get("chance", {})
    for ax, task in zip(axes, tasks, strict=False):
        recs = result.where(task=task)
        for i, m in enumerate(_uniq(recs, "model")):
            for kind, ls, mk in (("task", "-", "o"), ("control", "--", "s")):
                rr = [r for r in recs if r["model"] == m and r.get("kind", "task") == kind]
                if rr:
                    lab = _label(result, m) + (" (control)" if kind == "control" else "")
                    _line(ax, rr, "layer", label=lab, color=_color(m, i), ls=ls, marker=mk)
        if task in chance:
            ax.axhline(chance[task], color="0.5", lw=0.8, ls=":", label="majority class")
        ax.set_title(str(task))
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
        _layer_axis(ax, _uniq(recs, "layer"))
    for ax in axes[n:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 3 if n > 1 else 2)
    )
    return fig


def _heat(
    ax,
    mat: np.ndarray,
    xt: Sequence,
    yt: Sequence,
    *,
    vmin: float,
    vmax: float,
    cmap: str,
    annotate: bool,
) -> Any:
    im = ax.imshow(
        mat, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto", interpolation="nearest"
    )
    step_x = max(1, len(xt) // 10)
    step_y = max(1, len(yt) // 10)
    ax.set_xticks(range(0, len(xt), step_x), [str(v) for v in xt][::step_x])
    ax.set_yticks(range(0, len(yt), step_y), [str(v) for v in yt][::step_y])
    if annotate and mat.size <= 64:
        for (i, j), v in np.ndenumerate(mat):
            if np.isfinite(v):
                if vmin < 0:  # diverging: dark at both ends
                    dark = abs(v) / max(abs(vmin), abs(vmax)) > 0.6
                else:  # viridis: dark at the low end
                    dark = (v - vmin) / (vmax - vmin + 1e-12) < 0.5
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if dark else "black",
                )
    return im


def probe_transfer_figure(result: AnalysisResult, style: Style) -> Figure:
    """Cross-lingual probe transfer matrices (train language × test language), one panel per
    model. Records: model, train_language, test_language, value (accuracy); ``config['layer']``."""
    models = _uniq(result.records, "model")
    langs = sorted(
        set(_uniq(result.records, "train_language")) | set(_uniq(result.records, "test_language"))
    )
    fig = Figure(layout="constrained", figsize=style.size(wide=len(models) > 1, aspect=0.45))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    im = None
    for ax, m in zip(axes, models, strict=False):
        mat = np.full((len(langs), len(langs)), np.nan)
        for r in result.where(model=m):
            mat[langs.index(r["train_language"]), langs.index(r["test_language"])] = r["value"]
        im = _heat(ax, mat, langs, langs, vmin=0, vmax=1, cmap="viridis", annotate=True)
        ax.set_title(_label(result, m))
        ax.set_xlabel("test language")
        ax.set_ylabel("train language")
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="accuracy", shrink=0.9)
    return fig


def cka_heatmaps_figure(result: AnalysisResult, style: Style) -> Figure:
    """Layer × layer CKA heatmaps. Records: pair (e.g. ``base-base``), layer_a, layer_b, value.
    Colour scale fixed to [0, 1] (extended below 0 where debiased CKA is negative)."""
    pairs = _uniq(result.records, "pair")
    fig = Figure(layout="constrained", figsize=style.size(wide=True, aspect=0.34))
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    im = None
    names = result.config.get("display_names") or {}
    for ax, pair in zip(axes, pairs, strict=False):
        recs = result.where(pair=pair)
        la = sorted(_uniq(recs, "layer_a"), key=str)
        lb = sorted(_uniq(recs, "layer_b"), key=str)
        la = sorted(la, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0))
        lb = sorted(lb, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0))
        mat = np.full((len(la), len(lb)), np.nan)
        for r in recs:
            mat[la.index(r["layer_a"]), lb.index(r["layer_b"])] = r["value"]
        vmin = _cka_floor(result.records)
        im = _heat(ax, mat, lb, la, vmin=vmin, vmax=1, cmap="viridis", annotate=False)
        a, b = str(pair).split("-", 1)
        ax.set_title(f"{names.get(a, a)} (rows)\nvs {names.get(b, b)} (columns)")
        ax.set_xlabel("layer")
        ax.set_aspect("equal")
    axes[0].set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=list(axes), label=_cka_label(result), shrink=0.9)
    return fig


def cka_per_layer_figure(result: AnalysisResult, style: Style) -> Figure:
    """CKA between base and adapted at the same layer, one line per language.
    Records: language, layer, value, ci."""
    fig = Figure(layout="constrained", figsize=style.size())
    ax = fig.subplots()
    for i, lang in enumerate(_uniq(result.records, "language")):
        _line(
            ax,
            result.where(language=lang),
            "layer",
            label=str(lang),
            color=PALETTE[i % 8],
            marker=MARKERS[i % len(MARKERS)],
            ls=LINESTYLES[i % len(LINESTYLES)],
        )
    ax.set_ylim(_cka_floor(result.records), 1.02)
    ax.set_ylabel(f"{_cka_label(result)}, base vs adapted")
    _layer_axis(ax, _uniq(result.records, "layer"))
    _legend_below(fig, ax, title="language")
    return fig


def crosslingual_figure(result: AnalysisResult, style: Style) -> Figure:
    """Cross-lingual similarity per layer (e.g. Swedish–English CKA and translation retrieval),
    base vs adapted. Records: metric (``cka``/``retrieval``), model, layer, value, ci."""
    metrics = _uniq(result.records, "metric")
    fig = Figure(layout="constrained", figsize=style.size(wide=len(metrics) > 1, aspect=0.38))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    ylabels = {"cka": _cka_label(result), "retrieval": "retrieval accuracy (top-1)"}
    pair = result.config.get("languages", ["sv", "en"])
    for ax, met in zip(axes, metrics, strict=False):
        recs = result.where(metric=met)
        for i, m in enumerate(_uniq(recs, "model")):
            _line(
                ax,
                [r for r in recs if r["model"] == m],
                "layer",
                label=_label(result, m),
                color=_color(m, i),
            )
        if met == "retrieval" and "chance" in result.data:
            ax.axhline(result.data["chance"], color="0.5", lw=0.8, ls=":", label="chance")
        ax.set_ylim(_cka_floor(recs) if met == "cka" else 0, 1.02)
        ax.set_ylabel(ylabels.get(met, met))
        ax.set_title(f"{'–'.join(map(str, pair))}: {ylabels.get(met, met)}")
        _layer_axis(ax, _uniq(recs, "layer"))
    _legend_below(fig, axes[0])
    return fig


def patch_heatmap_figure(result: AnalysisResult, style: Style) -> Figure:
    """Cross-model patching: normalised effect per component × layer, one panel per direction.
    Records: direction, component, layer, value, ci. Diverging scale centred on 0."""
    directions = _uniq(result.records, "direction")
    fig = Figure(
        layout="constrained",
        figsize=style.size(wide=True, aspect=0.3 + 0.04 * len(_uniq(result.records, "component"))),
    )
    axes = fig.subplots(1, len(directions), squeeze=False)[0]
    vals = [abs(r["value"]) for r in result.records if r["value"] is not None]
    lim = max(1.0, max(vals) if vals else 1.0)
    im = None
    for ax, d in zip(axes, directions, strict=False):
        recs = result.where(direction=d)
        comps = _uniq(recs, "component")
        layers = sorted(_uniq(recs, "layer"))
        mat = np.full((len(comps), len(layers)), np.nan)
        for r in recs:
            if r["value"] is not None:
                mat[comps.index(r["component"]), layers.index(r["layer"])] = r["value"]
        im = _heat(
            ax, mat, layers, comps, vmin=-lim, vmax=lim, cmap="RdBu_r", annotate=mat.size <= 40
        )
        ax.set_title(str(d).replace("_", " "))
        ax.set_xlabel("block (resid_pre b: the input of block b)")
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="normalised effect", shrink=0.9)
    return fig


def latent_language_figure(result: AnalysisResult, style: Style) -> Figure:
    """Per-layer probability mass on the answer in each language (logit lens), base (solid)
    vs adapted (dashed). Records: model, language, layer, value, ci."""
    fig = Figure(layout="constrained", figsize=style.size())
    ax = fig.subplots()
    models = _uniq(result.records, "model")
    for i, lang in enumerate(_uniq(result.records, "language")):
        for j, m in enumerate(models):
            rr = [r for r in result.records if r["model"] == m and r["language"] == lang]
            _line(
                ax,
                rr,
                "layer",
                label=f"{lang} ({_label(result, m)})",
                color=PALETTE[i % 8],
                ls=LINESTYLES[j % len(LINESTYLES)],
                marker=MARKERS[j % len(MARKERS)],
            )
    tops = [
        r.get("ci_high") if r.get("ci_high") is not None else r["value"]
        for r in result.records
        if r["value"] is not None
    ]
    ax.set_ylim(0, min(1.02, max(0.01, 1.15 * max(tops, default=1.0))))
    ax.set_ylabel("probability of answer (logit lens)")
    _layer_axis(ax, _uniq(result.records, "layer"))
    _legend_below(fig, ax)
    return fig


def weight_change_figure(result: AnalysisResult, style: Style) -> Figure:
    """Relative weight change ‖ΔW‖/‖W‖ per layer, one bar group per module kind.
    Records: layer, module, value."""
    kinds = _uniq(result.records, "module")
    layers = sorted(v for v in _uniq(result.records, "layer") if isinstance(v, int))
    fig = Figure(layout="constrained", figsize=style.size())
    ax = fig.subplots()
    width = 0.8 / max(1, len(kinds))
    x = np.arange(len(layers))
    for i, k in enumerate(kinds):
        vals = []
        for layer in layers:
            rr = [
                r["value"]
                for r in result.records
                if r["module"] == k and r["layer"] == layer and r["value"] is not None
            ]
            vals.append(float(np.mean(rr)) if rr else np.nan)
        ax.bar(
            x + (i - (len(kinds) - 1) / 2) * width, vals, width, label=str(k), color=PALETTE[i % 8]
        )
    ax.set_xticks(x, [str(v) for v in layers])
    ax.set_xlabel("block")
    ax.set_ylabel(r"relative change $\|\Delta W\|_F / \|W\|_F$")
    ax.set_ylim(bottom=0)
    _legend_below(fig, ax, title="module")
    return fig
