"""End to end: compare two tiny models into a report folder; reuse; refusals; sanity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferlens.compare import CompareConfig, applicable_analyses, compare
from transferlens.models import tiny_model
from transferlens.results import load_results

pytestmark = pytest.mark.slow

SMALL = dict(
    languages=["en", "sv", "de"],
    max_examples=12,
    n_boot=50,
    patch_prompts=8,
    lens_items=20,
    batch_size=8,
    max_length=32,
)


def _pair():
    base = tiny_model("llama", seed=0, n_ctx=128)
    adapted = tiny_model("llama", seed=0, n_ctx=128)
    with torch.no_grad():  # plant a change in the upper layer only
        adapted.model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    adapted._fingerprint = None
    return base, adapted


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base, adapted = _pair()
    out = tmp_path_factory.mktemp("cmp") / "report"
    html = compare(base, adapted, out, CompareConfig(**SMALL), progress=False)
    return base, adapted, out, html


def test_report_folder_is_complete_and_matches_the_models(report):
    base, adapted, out, html = report
    assert html.exists() and (out / "report.md").exists()
    results, meta = load_results(out / "results.json")
    names = {r.name for r in results}
    for name in (
        "behaviour_bpb",
        "probe_accuracy",
        "cka_matrix",
        "cka_base_adapted",
        "crosslingual",
        "patch_cross_model",
        "latent_language",
        "weight_change",
    ):
        assert name in names, name
    for r in results:
        assert r.models == {"base": base.fingerprint, "adapted": adapted.fingerprint}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["base"]["fingerprint"] == base.fingerprint
    assert manifest["complete"] is True and manifest["seed"] == 0
    assert (out / "figures" / "cka_heatmaps.pdf").exists()
    assert (out / "tables" / "behaviour_bpb.tex").exists()
    # one layer numbering in the representation and lens figures: 0 = embeddings
    by = {r.name: r for r in results}
    n_layers = base.n_layers
    for name in ("probe_accuracy", "cka_base_adapted", "crosslingual", "latent_language"):
        assert sorted({r["layer"] for r in by[name].records}) == list(range(n_layers + 1)), name
    full = by["latent_language_full"]
    assert sorted({r["layer"] for r in full.records if "layer" in r}) == list(
        range(-1, n_layers)
    )  # the lens API's own convention, kept in the full result
    text = (out / "report.md").read_text()
    assert "Layer 0 is the embeddings, layer l the residual stream after the l-th block." in text
    assert "'overlap'" not in text  # the item filter in words, not a dict


def test_planted_change_shows_where_it_was_planted(report):
    _, _, out, _ = report
    results, _ = load_results(out / "results.json")
    by = {r.name: r for r in results}
    wc = by["weight_change"]
    assert all(r["value"] == 0.0 for r in wc.records if r["layer"] == 0)
    assert any(r["value"] > 0.1 for r in wc.records if r["layer"] == 1 and r["module"] == "mlp")
    # layers below the change are identical: base-adapted CKA exactly 1 there
    per = by["cka_base_adapted"]
    for r in per.records:
        if r["layer"] in (0, 1):  # embeddings and block 0 output
            assert r["value"] == pytest.approx(1.0, abs=1e-9)
    # CKA is debiased, with intervals from the tie-free bootstrap (centred on the value)
    assert {by[n].metric for n in ("cka_matrix", "cka_base_adapted", "cka_summary")} == {
        "debiased_linear_cka"
    }
    assert by["crosslingual"].config["debiased"] is True
    for r in per.records + by["crosslingual"].where(metric="cka"):
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    for r in by["cka_summary"].records:  # the mean over layers carries its interval too
        vals = [p["value"] for p in per.records if p["language"] == r["language"]]
        assert r["value"] == pytest.approx(np.mean(vals))
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ci_low"] < r["ci_high"]


def test_rerun_reuses_finished_stages(report):
    base, adapted, out, _ = report
    compare(base, adapted, out, CompareConfig(**SMALL), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages_computed"] == []
    assert "behaviour" in manifest["stages_reused"]


def test_same_model_twice_is_a_sanity_check(tmp_path):
    base = tiny_model("gpt2", seed=3)
    cfg = CompareConfig(
        **dict(SMALL, languages=["en", "sv"]), analyses=["similarity", "patch", "weights"]
    )
    compare(base, base, tmp_path / "r", cfg, progress=False)
    results, meta = load_results(tmp_path / "r" / "results.json")
    by = {r.name: r for r in results}
    assert any("same model was given twice" in w for w in meta["warnings"])
    assert np.allclose([r["value"] for r in by["cka_base_adapted"].records], 1.0)
    kl = [r["value"] for r in by["patch_cross_model_full"].records if r["metric"] == "kl"]
    assert kl and np.allclose(kl, 0.0, atol=1e-6)
    assert all(r["value"] == 0.0 for r in by["weight_change"].records)


def test_different_tokenizers_skip_patching_with_reason():
    from transferlens.models.tiny import tiny_tokenizer

    a = tiny_model("llama", seed=0)
    b = tiny_model("llama", seed=0, tokenizer=tiny_tokenizer(vocab_size=300))
    can, cannot = applicable_analyses(a, b)
    assert "patch" not in can and "tokenizers differ" in cannot["patch"]
    enc = tiny_model("bert")
    can, cannot = applicable_analyses(enc, enc)
    assert "lens" in cannot and "unembedding" in cannot["lens"]


def test_refuses_foreign_output_folder(tmp_path, capsys):
    from transferlens.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    base = tiny_model("gpt2")
    with pytest.raises(Exception, match="not a transferlens report"):
        compare(base, base, tmp_path, CompareConfig(**SMALL), progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["compare", "a.pt", "b.pt", "--analyses", "probe,magic"]) == 2
    assert "unknown analysis 'magic'" in capsys.readouterr().err
    assert main(["compare", "missing.pt", "b.pt"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_task_accuracy_asks_in_the_format_of_the_sft_topic_task(monkeypatch):
    """A model tuned on the built-in topic task is measured on what it learned: the same
    prompt, and module names (not corpus ids) as the candidate answers."""
    from types import SimpleNamespace

    from transferlens.compare import behaviour as B
    from transferlens.compare.data import Sample
    from transferlens.training.datasets import TOPIC_LABELS, topic_task

    row = topic_task("test", language="sv", max_examples=1)[0]
    seen = {}

    def fake(handle, prompts, candidates, gold, batch_size=16):
        seen.update(prompts=prompts, candidates=candidates, gold=gold)
        return SimpleNamespace(correct=np.array([g == candidates[0] for g in gold]))

    monkeypatch.setattr(B, "label_loglik_accuracy", fake)
    text = row["prompt"].removeprefix("Text: ").removesuffix("\nModule:")
    sample = Sample(
        ids=["a", "b", "c"],
        topics=[row["label"], "other", "swriter" if row["label"] != "swriter" else "scalc"],
        texts={"sv": [text, "Allmänt", "Infoga en tabell i dokumentet."]},
        split="test",
    )
    cfg = SimpleNamespace(batch_size=4, seed=0)
    res = B._topic_task({"base": None}, sample, cfg, {}, {"n_boot": 10, "seed": 0})
    assert seen["prompts"][0] == row["prompt"] and len(seen["prompts"]) == 2  # "other": out
    assert seen["candidates"] == sorted(TOPIC_LABELS.values())  # the full 8-way task
    assert seen["gold"][0] == row["response"]
    # the majority class is the most frequent *training* module, scored on these paragraphs
    from collections import Counter

    from transferlens.data import load_corpus

    train = Counter(
        TOPIC_LABELS[t] for t in load_corpus(split="train")["topic"] if t in TOPIC_LABELS
    )
    top = max(train, key=train.get)
    want = np.mean([g == top for g in seen["gold"]])
    assert res.where(model="majority class")[0]["value"] == pytest.approx(want)
    assert top in res.data["description"]


def test_task_accuracy_draws_its_paragraphs_from_every_module(monkeypatch):
    """The sample is in corpus order (sorted by module); the first 100 were the alphabetically
    first modules only. A seeded draw covers them all."""
    from types import SimpleNamespace

    from transferlens.compare import behaviour as B
    from transferlens.compare.data import sample_paragraphs

    seen = {}

    def fake(handle, prompts, candidates, gold, batch_size=16):
        seen["gold"] = gold
        return SimpleNamespace(correct=np.zeros(len(gold), dtype=bool))

    monkeypatch.setattr(B, "label_loglik_accuracy", fake)
    sample = sample_paragraphs(CompareConfig(max_examples=400, seed=0))
    B._topic_task({"m": None}, sample, SimpleNamespace(batch_size=4, seed=0), {}, {"n_boot": 5})
    assert len(seen["gold"]) == 100
    assert {"Writer", "Impress", "Math", "General", "Basic"} <= set(seen["gold"])


def test_sample_does_not_depend_on_the_requested_languages():
    from transferlens.compare.data import sample_paragraphs

    two = sample_paragraphs(CompareConfig(languages=["en", "sv"], max_examples=50, seed=3))
    five = sample_paragraphs(CompareConfig(max_examples=50, seed=3))
    assert two.ids == five.ids and two.texts["sv"] == five.texts["sv"]
    assert list(two.texts) == ["en", "sv"] and two.key() != five.key()  # other languages


def test_rerun_with_other_paragraphs_replaces_stores_and_stale_outputs(tmp_path):
    base, adapted = _pair()
    out = tmp_path / "r"
    first = dict(SMALL, analyses=["behaviour", "similarity"])
    compare(base, adapted, out, CompareConfig(**first), progress=False)
    assert (out / "tables" / "cka_summary.tex").exists()
    # other paragraphs (the stores hold the old ones) and no similarity stage this time
    again = dict(SMALL, max_examples=10, analyses=["behaviour", "probe"])
    compare(base, adapted, out, CompareConfig(**again), progress=False)
    results, _ = load_results(out / "results.json")
    by = {r.name: r for r in results}
    assert "cka_matrix" not in by and by["probe_accuracy"].records
    assert {r["n"] for r in by["behaviour_bpb"].records} == {10}
    # nothing of the first run's similarity stage is left to be mistaken for this run's
    assert not (out / "tables" / "cka_summary.tex").exists()
    assert (
        not list((out / "figures").glob("cka_*"))
        and not (out / "data" / "cka_heatmaps.csv").exists()
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["max_examples"] == 10 and manifest["complete"] is True
