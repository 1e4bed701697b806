"""scripts/device_check.py: the parts that run without a GPU (its comparison of two reports and
its refusal without a CUDA device). The GPU checks themselves run on a machine with a GPU;
their figures are in docs/benchmarks.md."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dc():
    spec = importlib.util.spec_from_file_location("device_check", REPO / "scripts/device_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results():
    return {
        "results": [
            {
                "name": "cka_base_adapted",
                "records": [
                    {"language": "sv", "layer": 0, "value": 0.9, "ci_low": 0.8, "ci_high": 1.0},
                    {"language": "sv", "layer": 1, "value": 0.7, "ci_low": None, "ci_high": 0.8},
                ],
            },
            {"name": "probe_accuracy", "records": [{"task": "t", "layer": 0, "value": 0.5}]},
        ]
    }


def test_identical_reports_have_no_differences(dc):
    d = dc.diff_results(_results(), _results())
    assert set(d) == {"cka_base_adapted", "probe_accuracy"}
    assert d["cka_base_adapted"]["max_abs_diff_value"] == 0.0
    assert d["cka_base_adapted"]["max_abs_diff_ci"] == 0.0  # null on both sides is equal
    assert d["cka_base_adapted"]["records"] == 2


def test_differences_are_measured_and_the_worst_named(dc):
    b = _results()
    a = copy.deepcopy(b)
    a["results"][0]["records"][1]["value"] = 0.7003
    a["results"][0]["records"][0]["ci_low"] = 0.79
    d = dc.diff_results(a, b)["cka_base_adapted"]
    assert d["max_abs_diff_value"] == pytest.approx(3e-4)
    assert d["max_abs_diff_ci"] == pytest.approx(0.01)
    assert d["values_over_1e-4"] == 1
    assert d["worst"]["layer"] == 1 and d["worst"]["gpu"] == 0.7003


def test_a_result_missing_on_either_side_is_a_mismatch(dc):
    full = _results()
    part = copy.deepcopy(full)
    del part["results"][1]
    assert "mismatch" in dc.diff_results(part, full)["probe_accuracy"]
    assert "mismatch" in dc.diff_results(full, part)["probe_accuracy"]
    other = copy.deepcopy(full)
    other["results"][0]["records"][1]["language"] = "en"
    assert "mismatch" in dc.diff_results(other, full)["cka_base_adapted"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_it_says_so_and_exits_2(dc, tmp_path, capsys):
    assert dc.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA device" in err
    assert not any(tmp_path.iterdir())
