"""The demo end to end, smaller analysis settings: its numbers belong to the models it trained."""

from __future__ import annotations

import json

import pytest

from transferlens.models import load_model
from transferlens.results import load_results


@pytest.mark.slow
def test_demo_reports_on_the_models_it_trained(tmp_path):
    from transferlens.demo import run_demo

    html = run_demo(
        tmp_path,
        progress=False,
        max_examples=12,
        n_boot=50,
        patch_prompts=8,
        lens_items=20,
        languages=["en", "sv", "de"],
    )
    assert html == tmp_path / "report" / "report.html" and html.exists()
    base = load_model(tmp_path / "models" / "base.pt")
    adapted = load_model(tmp_path / "models" / "adapted.pt")
    results, _ = load_results(tmp_path / "report" / "results.json")
    assert results and all(
        r.models == {"base": base.fingerprint, "adapted": adapted.fingerprint} for r in results
    )
    manifest = json.loads((tmp_path / "report" / "manifest.json").read_text())
    assert manifest["models"]["adapted"]["provenance"]["parent"]["fingerprint"] == base.fingerprint
    # adaptation to Swedish lowers Swedish bits per byte (a real measurement, not a constant)
    diff = next(r for r in results if r.name == "behaviour_bpb_diff")
    sv = next(r for r in diff.records if r["language"] == "sv")
    assert sv["value"] < 0 and sv["ci_high"] < 0
