"""AnalysisResult: results built from one shared configuration stay independent."""

from transferlens.results import AnalysisResult


def test_results_from_a_shared_dict_do_not_see_each_others_changes():
    common = {"config": {"seed": 0}, "models": {"base": "a"}, "data": {"n": 3}}
    a = AnalysisResult("probe", "a", "accuracy", **common)
    b = AnalysisResult("probe", "b", "accuracy", **common)
    a.config["layer"] = 1  # e.g. the transfer layer of one result
    a.data["chance"] = 0.2
    a.models["adapted"] = "b"
    a.notes.append("x")
    assert b.config == {"seed": 0} and b.data == {"n": 3} and b.models == {"base": "a"}
    assert b.notes == [] and common["config"] == {"seed": 0}
