"""The stage cache of ``compare``: a finished stage is reused, anything else is recomputed."""

from __future__ import annotations

import json

import pytest

from transferlens.compare.cache import StageCache
from transferlens.results import AnalysisResult


def _compute(calls: list[int]):
    def compute():
        calls.append(1)
        res = AnalysisResult("probe", "probe_accuracy", "accuracy")
        res.add(0.75, ci=(0.7, 0.8), n=40, layer=1)
        return [res], {"note": "fresh"}

    return compute


def test_a_finished_stage_is_reused(tmp_path):
    calls: list[int] = []
    first = StageCache(tmp_path).run("probe", {"base": "f"}, {"seed": 0}, _compute(calls))
    again = StageCache(tmp_path)
    second = again.run("probe", {"base": "f"}, {"seed": 0}, _compute(calls))
    assert len(calls) == 1 and again.reused == ["probe"]
    assert second[0][0].records == first[0][0].records and second[1] == {"note": "fresh"}
    other = StageCache(tmp_path)
    other.run("probe", {"base": "f"}, {"seed": 1}, _compute(calls))  # another config
    assert len(calls) == 2 and other.computed == ["probe"]


@pytest.mark.parametrize(
    "text",
    ['{"key": ', "[1]", '{"key": "k", "results": [5]}', '{"key": "k", "results": [{"x": 1}]}'],
)
def test_a_damaged_stage_file_is_recomputed(tmp_path, text):
    calls: list[int] = []
    cache = StageCache(tmp_path)
    cache.run("probe", {"base": "f"}, {"seed": 0}, _compute(calls))
    path = tmp_path / "probe.json"
    if '"k"' in text:  # damaged content under the right key
        key = json.loads(path.read_text())["key"]
        text = text.replace('"k"', json.dumps(key))
    path.write_text(text)
    again = StageCache(tmp_path)
    results, meta = again.run("probe", {"base": "f"}, {"seed": 0}, _compute(calls))
    assert len(calls) == 2 and again.computed == ["probe"]
    assert results[0].records[0]["value"] == 0.75
    assert StageCache(tmp_path).run("probe", {"base": "f"}, {"seed": 0}, _compute(calls))
    assert len(calls) == 2  # the rewritten file is whole again
