"""Report rendering from results alone: files, captions, tables, formats, refusal rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import synthetic_results  # noqa: E402

from transferlens.report import FIGURES, check_report_dir, render_report  # noqa: E402
from transferlens.results import load_results, save_results  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    save_results(
        out / "results.json",
        synthetic_results(5),
        meta={
            "title": "Synthetic",
            "warnings": ["a warning to show"],
            "skipped": [{"analysis": "lens", "reason": "no unembedding"}],
        },
    )
    (out / "manifest.json").write_text(
        json.dumps({"command": "transferlens compare a b", "models": {}})
    )
    html = render_report(out, formats=["pdf", "png", "svg"])
    return out, html


def test_every_figure_written_in_every_format(report):
    out, _ = report
    for spec in FIGURES:
        for fmt in ("pdf", "png", "svg"):
            f = out / "figures" / f"{spec.name}.{fmt}"
            assert f.exists() and f.stat().st_size > 1000, f
        assert (out / "data" / f"{spec.name}.csv").exists()


def test_pdf_fonts_are_embedded(report):
    out, _ = report
    pdf = (out / "figures" / "behaviour.pdf").read_bytes()
    assert b"/FontFile2" in pdf  # TrueType font program embedded (pdf.fonttype 42)
    assert b"/Subtype /Type3" not in pdf


def test_csv_holds_the_figure_numbers(report):
    out, _ = report
    results, _ = load_results(out / "results.json")
    bpb = next(r for r in results if r.name == "behaviour_bpb")
    fert = next(r for r in results if r.name == "behaviour_fertility")
    lines = (out / "data" / "behaviour.csv").read_text().splitlines()
    head = ["result", "model", "language", "value", "ci_low", "ci_high", "n"]
    assert lines[0].split(",") == head
    assert len(lines) == 1 + len(bpb.records) + len(fert.records)  # both panels
    first = lines[1].split(",")
    assert first[0] == "behaviour_bpb" and float(first[3]) == pytest.approx(bpb.records[0]["value"])
    per = next(r for r in results if r.name == "cka_per_layer" or r.name == "cka_base_adapted")
    lines = (out / "data" / "cka_per_layer.csv").read_text().splitlines()
    assert len(lines) == 1 + len(per.records) and not lines[0].startswith("result")


def test_latex_table_and_notes(report):
    out, html = report
    tex = (out / "tables" / "behaviour_bpb.tex").read_text()
    assert "\\toprule" in tex and "Swedish-adapted" in tex and "[" in tex
    page = html.read_text()
    assert "a warning to show" in page and "Skipped lens: no unembedding" in page
    assert page.count("data:image/png;base64,") == len(FIGURES)
    md = (out / "report.md").read_text()
    assert "Intervals: 95% bootstrap over paragraphs." in md


def test_rerender_is_deterministic_in_its_data(report):
    out, _ = report
    before = (out / "data" / "cka_heatmaps.csv").read_text()
    render_report(out, style="slides", formats=["png"])
    assert (out / "data" / "cka_heatmaps.csv").read_text() == before


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(Exception, match="not a transferlens report"):
        check_report_dir(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_unknown_style_and_format(report):
    out, _ = report
    with pytest.raises(ValueError, match="unknown style"):
        render_report(out, style="poster")
    with pytest.raises(Exception, match="unknown figure format"):
        render_report(out, formats=["gif"])


def test_figures_are_not_blank(report):
    from PIL import Image

    out, _ = report
    for spec in FIGURES:
        img = np.asarray(Image.open(out / "figures" / f"{spec.name}.png").convert("L"), float)
        assert img.std() > 10, spec.name


def test_cli_report_rerenders_and_rejects_bad_input(tmp_path, capsys):
    from transferlens.cli import main

    save_results(tmp_path / "results.json", synthetic_results(3), meta={"title": "CLI"})
    assert main(["report", str(tmp_path), "--style", "slides", "--format", "svg"]) == 0
    assert (tmp_path / "figures" / "behaviour.svg").exists()
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no results.json" in err and "Traceback" not in err
    assert main(["report", str(tmp_path), "--format", "gif"]) == 2
    assert "unknown figure format" in capsys.readouterr().err


def _damaged(doc: dict, how: str) -> None:
    first = doc["results"][0]
    rec = first["records"][0]
    if how == "results not a list":
        doc["results"] = {}
    elif how == "result not an object":
        doc["results"][0] = 5
    elif how == "no name":
        del first["name"]
    elif how == "records not a list":
        first["records"] = "x"
    elif how == "no value":
        del rec["value"]
    elif how == "value a string":
        rec["value"] = "abc"
    elif how == "layer a string":
        rec["layer"] = "x"
    elif how == "n a bool":
        rec["n"] = True
    elif how == "interval upside down":
        rec["ci_low"], rec["ci_high"] = 9.0, -9.0
    elif how == "meta a list":
        doc["meta"] = []


_DAMAGE = {
    "results not a list": "'results' must be a list of results",
    "result not an object": "result 0 must be an object, not int",
    "no name": "result 0 needs a string 'name'",
    "records not a list": "'records' must be a list",
    "no value": "record 0: no 'value'",
    "value a string": "record 0: 'value' must be a number or null, not 'abc'",
    "layer a string": "record 0: 'layer' must be an integer or null, not 'x'",
    "n a bool": "record 0: 'n' must be an integer or null, not True",
    "interval upside down": "record 0: ci_low 9.0 is above ci_high -9.0",
    "meta a list": "'meta' must be an object",
}


@pytest.mark.parametrize("how", sorted(_DAMAGE))
def test_damaged_results_json_is_one_clear_error(tmp_path, how):
    # results.json is plain JSON that people edit (names, notes): a wrong type anywhere is
    # refused with where it is, before anything is drawn
    path = tmp_path / "results.json"
    save_results(path, synthetic_results(2))
    doc = json.loads(path.read_text())
    doc["results"][0]["records"][0].setdefault("layer", 0)
    _damaged(doc, how)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as info:
        load_results(path)
    msg = str(info.value)
    assert _DAMAGE[how] in msg and "\n" not in msg
    assert msg.endswith("restore the file or re-run the analysis that wrote it")


def test_cli_report_on_a_damaged_results_json(tmp_path, capsys):
    from transferlens.cli import main

    save_results(tmp_path / "results.json", synthetic_results(2))
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["results"][0]["records"][0]["value"] = "abc"  # used to end in a TypeError traceback
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'value' must be a number or null" in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"models": ', "manifest.json: not valid JSON ("),
        ("[1]", "manifest.json: not a report manifest"),
        ('{"models": {"base": "x"}}', "manifest.json: not a report manifest"),
    ],
)
def test_cli_report_on_a_damaged_manifest(tmp_path, capsys, text, expected):
    from transferlens.cli import main

    save_results(tmp_path / "results.json", synthetic_results(2))
    (tmp_path / "manifest.json").write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert "delete it to render without the provenance lines" in err


def test_results_json_that_is_not_utf8(tmp_path):
    path = tmp_path / "results.json"
    path.write_bytes('{"results": [], "meta": {"title": "Göteborg"}}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"results\.json:1: not UTF-8 text \(byte 0xf6\)"):
        load_results(path)


def _rendered_markdown(results, folder) -> str:
    save_results(folder / "results.json", results, meta={"title": "t"})
    render_report(folder, formats=["png"])
    return (folder / "report.md").read_text()


def test_cka_captions_axes_and_range_follow_the_estimator(tmp_path):
    from transferlens.report import figures as F
    from transferlens.report.style import get_style

    results = synthetic_results(3)
    by = {r.name: r for r in results}
    text = _rendered_markdown(results, tmp_path / "biased")
    assert "Linear CKA between every pair of layers" in text
    assert "per layer: linear CKA and translation retrieval" in text
    # debiased CKA can be negative: the axis extends below 0 instead of hiding it
    for name in ("cka_matrix", "cka_base_adapted"):
        by[name].metric = "debiased_linear_cka"
    by["crosslingual"].config["debiased"] = True
    by["cka_base_adapted"].records[0].update(value=-0.04, ci_low=-0.13, ci_high=0.05)
    fig = F.cka_per_layer_figure(by["cka_base_adapted"], get_style("paper"))
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == pytest.approx(-0.2) and "debiased linear CKA" in ax.get_ylabel()
    fig = F.crosslingual_figure(by["crosslingual"], get_style("paper"))
    assert "debiased linear CKA" in fig.axes[0].get_ylabel()
    for r in results:  # a 90 % level is named as such in captions and tables
        r.config["ci_level"] = 0.9
    text = _rendered_markdown(results, tmp_path / "debiased")
    assert "Debiased linear CKA between every pair of layers" in text
    assert "Debiased linear CKA between the base and adapted model" in text
    assert "per layer: debiased linear CKA and translation retrieval" in text
    assert "Intervals: 90% bootstrap" in text and "Intervals: 95%" not in text
    assert "Held-out bits per byte per language (90% CI)." in text


def test_rerender_removes_what_the_results_no_longer_hold_and_csv_holds_every_panel(tmp_path):
    results = synthetic_results(3)
    save_results(tmp_path / "results.json", results, meta={"title": "t"})
    render_report(tmp_path, formats=["png"])
    assert (tmp_path / "figures" / "cka_heatmaps.png").exists()
    (tmp_path / "tables" / ".keep").write_text("")  # hidden files are not the report's own
    rows = (tmp_path / "data" / "behaviour.csv").read_text().splitlines()
    assert rows[0].startswith("result,")
    assert {r.split(",")[0] for r in rows[1:]} == {"behaviour_bpb", "behaviour_fertility"}
    # results without the CKA matrix: its figure, data and any table go
    kept = [r for r in results if r.name != "cka_matrix"]
    save_results(tmp_path / "results.json", kept, meta={"title": "t"})
    render_report(tmp_path, formats=["png"])
    assert not list((tmp_path / "figures").glob("cka_heatmaps.*"))
    assert not (tmp_path / "data" / "cka_heatmaps.csv").exists()
    assert (tmp_path / "figures" / "cka_per_layer.png").exists()
    assert (tmp_path / "tables" / ".keep").exists()


def test_legends_gaps_nulls_and_escaping(tmp_path):
    from transferlens.report import figures as F
    from transferlens.report.render import _latex_escape, latex_table
    from transferlens.report.style import get_style

    results = synthetic_results(3)
    by = {r.name: r for r in results}
    st = get_style("paper")
    # the retrieval panel's chance line is in the legend, though the first panel has none
    fig = F.crosslingual_figure(by["crosslingual"], st)
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "chance" in labels and len(labels) == len(set(labels))
    # one unknown interval leaves a gap in the band, not a figure without any band
    per = by["cka_base_adapted"]
    per.records[0]["ci_low"] = None
    fig = F.cka_per_layer_figure(per, st)
    assert fig.axes[0].collections  # bands drawn
    # a null weight-change value is left out of its bar, not a TypeError
    by["weight_change"].records[0]["value"] = None
    F.weight_change_figure(by["weight_change"], st)
    # display names with LaTeX and Markdown syntax are escaped
    assert _latex_escape("a^b_{c}~%") == r"a\textasciicircum{}b\_\{c\}\textasciitilde{}\%"
    res = by["behaviour_bpb"]
    res.config["display_names"] = {"base": "base | en+de", "adapted": "adapted^2"}
    tex = latex_table(res, "language", "model", "cap")
    assert r"adapted\textasciicircum{}2" in tex
    for r in by["probe_transfer"].records:
        r.update(ci_low=r["value"] - 0.1, ci_high=r["value"] + 0.1)
    save_results(tmp_path / "results.json", results, meta={"title": "t"})
    render_report(tmp_path, formats=["png"])
    md = (tmp_path / "report.md").read_text()
    assert "base \\| en+de" in md
    assert "not drawn in the heatmap" in md  # the transfer and patching heatmaps' intervals
