"""Write a report folder from results: figures, source data, tables, report.md/.html.

Layout of a report folder::

    results.json            every number with its interval (schema-versioned)
    manifest.json           versions, model fingerprints + provenance, seeds, command line
    figures/<name>.{pdf,png,svg}
    data/<name>.csv         the source data of each figure
    tables/<name>.tex       LaTeX tables of the headline numbers (booktabs)
    report.md, report.html  captions say what was measured on which data; the HTML embeds
                            its figures and opens without the folder
    .transferlens-report    marks the folder as ours (we never write into other folders)

:func:`render_report` only reads ``results.json`` and ``manifest.json``; it never touches a
model, so ``transferlens report DIR`` re-renders a finished report in seconds.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TransferlensError, first_line
from ..results import AnalysisResult, atomic_write_text, load_results
from . import figures as F
from .style import Style, get_style, use_style

__all__ = ["FIGURES", "MARKER", "FigureSpec", "check_report_dir", "render_report"]

MARKER = ".transferlens-report"
FORMATS = ("pdf", "png", "svg")


@dataclass(frozen=True)
class FigureSpec:
    """A report figure: which results it draws, how, and what its caption says."""

    name: str
    title: str
    results: tuple[str, ...]  # result names; the first is required, others optional
    draw: Callable[..., Any]
    caption: str
    draws_intervals: bool = True  # heatmaps do not: their intervals are in the CSV


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "behaviour",
        "Behaviour: held-out loss and tokenizer fertility",
        ("behaviour_bpb", "behaviour_fertility"),
        lambda rs, st: F.behaviour_figure(rs[0], st, rs[1] if len(rs) > 1 else None),
        "Held-out loss in bits per byte (comparable across tokenizers) and tokens per "
        "word, per language, for both models.",
    ),
    FigureSpec(
        "probe_layers",
        "Probe accuracy per layer",
        ("probe_accuracy",),
        lambda rs, st: F.probe_layers_figure(rs[0], st),
        "Linear probe accuracy per layer (cross-validated by example), base vs adapted; "
        "dashed: the control task with the same probe (selectivity = task − control).",
    ),
    FigureSpec(
        "probe_transfer",
        "Cross-lingual probe transfer",
        ("probe_transfer",),
        lambda rs, st: F.probe_transfer_figure(rs[0], st),
        "Probe trained on one language (rows) and tested on another (columns).",
        draws_intervals=False,
    ),
    FigureSpec(
        "cka_heatmaps",
        "CKA between layers",
        ("cka_matrix",),
        lambda rs, st: F.cka_heatmaps_figure(rs[0], st),
        "{CKA} between every pair of layers within and across the two models.",
    ),
    FigureSpec(
        "cka_per_layer",
        "Base vs adapted similarity per language",
        ("cka_base_adapted",),
        lambda rs, st: F.cka_per_layer_figure(rs[0], st),
        "{CKA} between the base and adapted model at the same layer, per language.",
    ),
    FigureSpec(
        "crosslingual",
        "Cross-lingual alignment",
        ("crosslingual",),
        lambda rs, st: F.crosslingual_figure(rs[0], st),
        "Similarity of parallel paragraphs in two languages per layer: {cka} and "
        "translation retrieval (nearest neighbour after per-language mean centring).",
    ),
    FigureSpec(
        "patch_cross_model",
        "Cross-model activation patching",
        ("patch_cross_model",),
        lambda rs, st: F.patch_heatmap_figure(rs[0], st),
        "Normalised effect of inserting the other model's activation at one site "
        "(all positions): 0 = unchanged behaviour, 1 = the other model's behaviour "
        "(ratio of means over prompts).",
        draws_intervals=False,
    ),
    FigureSpec(
        "latent_language",
        "Latent language (logit lens)",
        ("latent_language",),
        lambda rs, st: F.latent_language_figure(rs[0], st),
        "Logit-lens probability of the answer word in each language per layer, on "
        "word-translation prompts.",
    ),
    FigureSpec(
        "weight_change",
        "Weight change per layer",
        ("weight_change",),
        lambda rs, st: F.weight_change_figure(rs[0], st),
        "Relative change of the attention (MLP) weights of each block, "
        "‖W_adapted − W_base‖_F / ‖W_base‖_F over the block's matrices together (squared "
        "Frobenius norms summed).",
    ),
)


def check_report_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is absent, empty, or a transferlens report; refuse otherwise."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise TransferlensError(f"{path} exists and is not a folder; choose another --out")
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise TransferlensError(
                f"{path} exists and is not a transferlens report; choose another --out "
                "(transferlens never writes into other folders)"
            )
    return path


def _caption(spec: FigureSpec, res: AnalysisResult) -> str:
    label = F._cka_label(res)
    parts = [spec.caption.replace("{CKA}", label[0].upper() + label[1:]).replace("{cka}", label)]
    desc = res.data.get("description")
    if desc:
        parts.append(str(desc))
    if any("ci_low" in r for r in res.records):
        level = res.config.get("ci_level", 0.95)
        unit = res.data.get("ci_unit", "examples")
        if spec.draws_intervals:
            parts.append(f"Intervals: {level * 100:g}% bootstrap over {unit}.")
        else:
            parts.append(
                f"{level * 100:g}% bootstrap intervals over {unit}: in data/{spec.name}.csv "
                "(not drawn in the heatmap)."
            )
    return " ".join(parts)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


_LATEX = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
}


def _latex_escape(s: str) -> str:
    """``s`` as LaTeX text (one pass, so that no replacement is escaped again)."""
    return "".join(_LATEX.get(c, c) for c in s)


def _md_cell(s: str) -> str:
    """``s`` in a Markdown table cell (a ``|`` would end the cell)."""
    return s.replace("|", "\\|")


def latex_table(res: AnalysisResult, rows: str, cols: str, caption: str) -> str:
    """A booktabs table: one row per ``rows`` value, one column per ``cols`` value,
    cells ``value [ci_low, ci_high]``."""
    rvals = F._uniq(res.records, rows)
    cvals = F._uniq(res.records, cols)
    names = res.config.get("display_names") or {}
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "c" * len(cvals) + "}",
        r"\toprule",
        _latex_escape(rows)
        + " & "
        + " & ".join(_latex_escape(str(names.get(c, c))) for c in cvals)
        + r" \\",
        r"\midrule",
    ]
    for rv in rvals:
        cells = []
        for cv in cvals:
            rec = next((r for r in res.records if r.get(rows) == rv and r.get(cols) == cv), None)
            if rec is None:
                cells.append("--")
            elif rec.get("ci_low") is not None:
                cells.append(
                    f"{_fmt(rec['value'])} [{_fmt(rec['ci_low'])}, {_fmt(rec['ci_high'])}]"
                )
            else:
                cells.append(_fmt(rec["value"]))
        lines.append(_latex_escape(str(rv)) + " & " + " & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + _latex_escape(caption) + "}",
        r"\end{table}",
        "",
    ]
    return "\n".join(lines)


def _save_figure(fig, path_stem: Path, formats: Sequence[str]) -> dict[str, Path]:
    out = {}
    for fmt in formats:
        target = path_stem.with_suffix(f".{fmt}")
        tmp = target.with_name(f".{target.name}.tmp")
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, target)
        out[fmt] = target
    return out


def _figure_csv(results: Sequence[AnalysisResult], path: Path) -> None:
    """The records a figure draws: one result's as they are; several results' (panels) in one
    table with a ``result`` column naming each record's result."""
    if len(results) == 1:
        results[0].to_csv(path)
        return
    merged = AnalysisResult(results[0].analysis, results[0].name, results[0].metric)
    for r in results:
        merged.records += [{"result": r.name, **rec} for rec in r.records]
    merged.to_csv(path)


def render_report(
    report_dir: str | os.PathLike,
    *,
    style: str | Style = "paper",
    formats: Sequence[str] = ("pdf", "png"),
) -> Path:
    """Render every figure, table and the report pages from ``report_dir/results.json``.

    Returns the path of ``report.html``.
    """
    report_dir = Path(report_dir)
    st = get_style(style)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise TransferlensError(f"unknown figure format {bad[0]!r}; use {', '.join(FORMATS)}")
    if not (report_dir / "results.json").exists():
        raise TransferlensError(f"{report_dir}: no results.json; is this a transferlens report?")
    results, meta = load_results(report_dir / "results.json")
    by_name = {r.name: r for r in results}
    manifest = _read_manifest(report_dir / "manifest.json")
    for sub in ("figures", "data", "tables"):
        (report_dir / sub).mkdir(exist_ok=True)
    fmts = list(dict.fromkeys(list(formats) + ["png"]))  # the HTML embeds PNGs

    import matplotlib

    matplotlib.use("Agg", force=False)
    rendered = []
    written: set[Path] = set()
    with use_style(st):
        for spec in FIGURES:
            rs = [by_name.get(n) for n in spec.results]
            if rs[0] is None or not rs[0].records:
                continue
            rs = [r for r in rs if r is not None]
            fig = spec.draw(rs, st)
            files = _save_figure(fig, report_dir / "figures" / spec.name, fmts)
            _figure_csv(rs, report_dir / "data" / f"{spec.name}.csv")
            rendered.append((spec, rs[0], files))
            written |= set(files.values()) | {report_dir / "data" / f"{spec.name}.csv"}
    tables = _write_tables(report_dir, by_name)
    written |= {report_dir / "tables" / f"{t[0]}.tex" for t in tables}
    for sub in ("figures", "data", "tables"):  # what an earlier render left and this one did not
        for f in (report_dir / sub).iterdir():
            if f.is_file() and f not in written and not f.name.startswith("."):
                f.unlink()
    md = _markdown(rendered, tables, meta, manifest, by_name)
    atomic_write_text(report_dir / "report.md", md)
    page = _html(rendered, tables, meta, manifest, by_name)
    atomic_write_text(report_dir / "report.html", page)
    (report_dir / MARKER).touch()
    return report_dir / "report.html"


def _write_tables(
    report_dir: Path, by_name: dict[str, AnalysisResult]
) -> list[tuple[str, str, AnalysisResult, str, str]]:
    out = []
    specs = [
        ("behaviour_bpb", "language", "model", "Held-out bits per byte per language (95% CI)."),
        (
            "behaviour_fertility",
            "language",
            "model",
            "Tokenizer fertility (tokens per word; 95% CI).",
        ),
        ("probe_best", "task", "model", "Best-layer probe accuracy (95% CI)."),
        ("cka_summary", "language", "model", "Mean base–adapted {cka} over layers (95% CI)."),
        ("task_accuracy", "task", "model", "Task accuracy by label log-likelihood (95% CI)."),
    ]
    for name, rows, cols, cap in specs:
        res = by_name.get(name)
        if res is None or not res.records:
            continue
        level = res.config.get("ci_level", 0.95)
        cap = cap.replace("{cka}", F._cka_label(res)).replace("95%", f"{level * 100:g}%")
        tex = latex_table(res, rows, cols, cap)
        atomic_write_text(report_dir / "tables" / f"{name}.tex", tex)
        out.append((name, cap, res, rows, cols))
    return out


def _table_rows(res: AnalysisResult, rows: str, cols: str) -> tuple[list, list, list[list[str]]]:
    rvals, cvals = F._uniq(res.records, rows), F._uniq(res.records, cols)
    names = res.config.get("display_names") or {}
    body = []
    for rv in rvals:
        line = [str(rv)]
        for cv in cvals:
            rec = next((r for r in res.records if r.get(rows) == rv and r.get(cols) == cv), None)
            if rec is None:
                line.append("–")
            elif rec.get("ci_low") is not None:
                line.append(f"{_fmt(rec['value'])} [{_fmt(rec['ci_low'])}, {_fmt(rec['ci_high'])}]")
            else:
                line.append(_fmt(rec["value"]))
        body.append(line)
    return [rows] + [str(names.get(c, c)) for c in cvals], rvals, body


def _notes(meta: dict, by_name: dict[str, AnalysisResult]) -> list[str]:
    notes = list(meta.get("warnings", []))
    for s in meta.get("skipped", []):
        notes.append(f"Skipped {s.get('analysis')}: {s.get('reason')}")
    seen = set(notes)
    for r in by_name.values():
        for n in r.notes:
            if n not in seen and not n.startswith("0 "):  # "0 items dropped: ..." is no news
                seen.add(n)
                notes.append(f"{r.name}: {n}")
    return notes


def _read_manifest(path: Path) -> dict:
    """The report's ``manifest.json`` (provenance shown on the page), or ``{}`` if absent."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path}: not valid JSON ({first_line(e)}); restore it, or delete it to render "
            "without the provenance lines"
        ) from None
    models = (manifest.get("models") or {}) if isinstance(manifest, dict) else None
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise ValueError(
            f"{path}: not a report manifest (an object with 'models', 'command', ...); restore "
            "it, or delete it to render without the provenance lines"
        )
    return manifest


def _models_line(manifest: dict) -> list[str]:
    out = []
    for role, m in (manifest.get("models") or {}).items():
        out.append(
            f"{role}: {m.get('name', '?')} ({m.get('spec', '?')}), {m.get('family', '?')}, "
            f"{m.get('n_layers', '?')} layers, fingerprint {str(m.get('fingerprint', ''))[:12]}"
        )
    return out


def _markdown(rendered, tables, meta, manifest, by_name) -> str:
    lines = [f"# {meta.get('title', 'transferlens report')}", ""]
    lines += [f"- {m}" for m in _models_line(manifest)]
    if manifest.get("command"):
        lines.append(f"- command: `{manifest['command']}`")
    lines.append("")
    notes = _notes(meta, by_name)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for _name, cap, res, rows, cols in tables:
        header, _, body = _table_rows(res, rows, cols)
        header = [_md_cell(h) for h in header]
        body = [[_md_cell(c) for c in b] for b in body]
        lines += [f"**{cap}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(b) + " |" for b in body] + [""]
    for spec, res, _files in rendered:
        lines += [
            f"## {spec.title}",
            "",
            f"![{spec.title}](figures/{spec.name}.png)",
            "",
            _caption(spec, res),
            f"Source data: `data/{spec.name}.csv`.",
            "",
        ]
    samples = meta.get("samples") or []
    if samples:
        lines += ["## Generated samples", ""]
        for s in samples:
            lines.append(
                f"- **{s.get('model')}**, {s.get('language')}: prompt "
                f"“{s.get('prompt')}” → “{s.get('text')}”"
            )
        lines.append("")
    return "\n".join(lines)


def _html(rendered, tables, meta, manifest, by_name) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(meta.get('title', 'transferlens report'))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem;line-height:1.45;color:#222}figure{margin:2rem 0}img{max-width:100%;"
        "height:auto}figcaption{font-size:.9rem;color:#444}table{border-collapse:collapse;"
        "margin:1rem 0;font-size:.9rem}td,th{border-bottom:1px solid #ccc;padding:.2rem .6rem;"
        "text-align:right}td:first-child,th:first-child{text-align:left}.note{color:#8a4b00}"
        "code{font-size:.85rem}</style></head><body>",
        f"<h1>{e(meta.get('title', 'transferlens report'))}</h1><ul>",
    ]
    parts += [f"<li>{e(m)}</li>" for m in _models_line(manifest)]
    if manifest.get("command"):
        parts.append(f"<li>command: <code>{e(manifest['command'])}</code></li>")
    parts.append("</ul>")
    notes = _notes(meta, by_name)
    if notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{e(n)}</li>" for n in notes) + "</ul>"
        )
    for name, cap, res, rows, cols in tables:
        header, _, body = _table_rows(res, rows, cols)
        parts.append(
            f"<table id='table-{e(name)}'><caption>{e(cap)}</caption><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in header)
            + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in b) + "</tr>" for b in body]
        parts.append("</table>")
    for spec, res, files in rendered:
        data = base64.b64encode(files["png"].read_bytes()).decode("ascii")
        parts.append(
            f"<figure id='fig-{e(spec.name)}'><h2>{e(spec.title)}</h2>"
            f"<img alt='{e(spec.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(_caption(spec, res))} Source data: <code>data/{e(spec.name)}.csv"
            "</code>.</figcaption></figure>"
        )
    samples = meta.get("samples") or []
    if samples:
        parts.append("<h2>Generated samples</h2><ul>")
        parts += [
            f"<li><b>{e(str(s.get('model')))}</b>, {e(str(s.get('language')))}: "
            f"“{e(str(s.get('prompt')))}” → “{e(str(s.get('text')))}”</li>"
            for s in samples
        ]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
