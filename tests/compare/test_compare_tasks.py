"""compare --tasks: any probe task (built-in token-level tasks, user task files) on both models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferlens.analysis.probe_methods import ProbeConfig
from transferlens.compare import CompareConfig, compare
from transferlens.compare.cache import stage_key
from transferlens.compare.tasks import (
    ROWS_PER_EXAMPLE,
    TaskSkipped,
    build_task_data,
    probe_task,
    task_key,
)
from transferlens.data.tasks import load_task
from transferlens.models import tiny_model
from transferlens.results import load_results

pytestmark = pytest.mark.slow

SMALL = dict(
    languages=["en", "sv"],
    max_examples=16,
    n_boot=50,
    batch_size=8,
    max_length=32,
    analyses=["probe"],
)
_FILLER = (
    "choose the format cells dialog to open table inserts a new document at cursor "
    "position quick brown fox jumps over lazy dog"
).split()
_SWEDISH = "välj format celler för att öppna dialogrutan infogar en ny tabell i dokumentet".split()


def _pair():
    base = tiny_model("llama", seed=0, n_ctx=128)
    adapted = tiny_model("llama", seed=0, n_ctx=128)
    with torch.no_grad():  # plant a change in the upper layer only
        adapted.model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    adapted._fingerprint = None
    return base, adapted


def _marked_task(folder, n=40, seed=0):
    """An example-level JSONL task whose label is planted in the text: marked texts are made
    of Swedish words, the others of English words (a label the mean embedding shows)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        marked = i % 2 == 0
        words = list(rng.choice(_SWEDISH if marked else _FILLER, size=12))
        lines.append(
            {
                "id": f"t{i}",
                "language": "en" if i % 4 < 2 else "sv",
                "text": " ".join(words),
                "marked": "yes" if marked else "no",
            }
        )
    data = folder / "marked.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    task = folder / "marked.yaml"
    task.write_text(
        "name: marked\nlevel: example\nsource: jsonl\nlabel: marked\npath: marked.jsonl\n"
        "selection: mean\ncontrol: example\n",
        encoding="utf-8",
    )
    return task


def _word_task(folder, n=24):
    """A word-level JSONL task: each word is labelled ``num`` (digits) or ``alpha``."""
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        toks = [str(rng.integers(0, 999)) if rng.random() < 0.4 else w for w in _FILLER[:9]]
        lines.append(
            {
                "id": f"w{i}",
                "language": "en",
                "tokens": toks,
                "kind": ["num" if t.isdigit() else "alpha" for t in toks],
            }
        )
    (folder / "words.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = folder / "words.yaml"
    task.write_text(
        "name: numeric\nlevel: word\nsource: jsonl\nlabel: kind\npath: words.jsonl\n"
        "selection: first_subtoken\ncontrol: word_type\n"
    )
    return task


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    user = _marked_task(folder)
    base, adapted = _pair()
    cfg = CompareConfig(**SMALL, tasks=["language_id", "word_initial", str(user)])
    compare(base, adapted, folder / "report", cfg, progress=False)
    results, _ = load_results(folder / "report" / "results.json")
    return base, adapted, folder, cfg, {r.name: r for r in results}


def test_token_level_and_user_tasks_give_records_for_both_models(run):
    *_, by = run
    acc, best = by["probe_accuracy"], by["probe_best"]
    n_layers = 3  # embeddings + 2 blocks
    for task in ("language_id", "word_initial", "marked"):
        for model in ("base", "adapted"):
            for kind in ("task", "control"):
                rr = acc.where(task=task, model=model, kind=kind)
                assert sorted(r["layer"] for r in rr) == list(range(n_layers)), (task, model)
                for r in rr:
                    assert 0.0 <= r["value"] <= 1.0
                    assert r["ci_low"] <= r["value"] <= r["ci_high"]
            assert len(best.where(task=task, model=model)) == 1
        chance = acc.data["chance"][task]
        assert 0.0 < chance < 1.0
    # word_initial: token rows, at most ROWS_PER_EXAMPLE per text (2 languages x 16)
    rec = acc.where(task="word_initial", model="base", kind="task")[0]
    assert 32 < rec["rows"] <= ROWS_PER_EXAMPLE * 32
    assert rec["n"] == 16  # the units the interval resamples: the examples
    assert "word_initial" in acc.data["tasks"] and "marked" in acc.data["tasks"]
    assert not acc.notes


def test_planted_label_is_decoded_well_above_control_and_chance(run):
    *_, by = run
    acc = by["probe_accuracy"]
    chance = acc.data["chance"]["marked"]
    assert 0.5 <= chance <= 0.7  # 16 of 20 en + 16 of 20 sv texts drawn, half of them marked
    for model in ("base", "adapted"):
        task = {r["layer"]: r["value"] for r in acc.where(task="marked", model=model, kind="task")}
        ctl = {
            r["layer"]: r["value"] for r in acc.where(task="marked", model=model, kind="control")
        }
        top = max(task, key=task.get)
        assert task[top] >= 0.85, task
        assert task[top] - ctl[top] >= 0.25, (task, ctl)
        assert task[top] - chance >= 0.3


def test_fast_tasks_keep_their_numbers(run):
    """language_id is probed on the paragraph means exactly as without other tasks."""
    from transferlens.compare.data import sample_paragraphs
    from transferlens.compare.representations import capture_stage, probe_stage

    base, adapted, folder, cfg, by = run
    alone = CompareConfig(**SMALL, tasks=["language_id"])
    handles = {"base": base, "adapted": adapted}
    acts = capture_stage(handles, sample_paragraphs(alone), alone, folder / "report" / "stores")
    out, _ = probe_stage(handles, acts, alone)
    ref = {(r["model"], r["kind"], r["layer"]): r for r in out[0].records}
    got = by["probe_accuracy"].where(task="language_id")
    assert len(got) == len(ref) == 12
    for r in got:
        e = ref[(r["model"], r["kind"], r["layer"])]
        assert (r["value"], r["ci_low"], r["ci_high"]) == (e["value"], e["ci_low"], e["ci_high"])


def test_word_level_task_aligns_labels_with_words(tmp_path):
    base, adapted = _pair()
    task = load_task(_word_task(tmp_path))
    cfg = CompareConfig(**dict(SMALL, max_examples=20))
    data = build_task_data({"base": base, "adapted": adapted}, task, cfg)
    assert data.types is not None and len(data.types) == len(data.labels)
    # the label of each row is the label of the word the row stands for
    assert all(
        (lab == "num") == w.isdigit() for lab, w in zip(data.labels, data.types, strict=True)
    )
    assert len(set(data.groups.tolist())) == 20
    counts = np.unique(data.groups, return_counts=True)[1]
    assert counts.max() <= ROWS_PER_EXAMPLE
    again = build_task_data({"base": base, "adapted": adapted}, task, cfg)  # seeded
    assert (again.labels == data.labels).all() and (again.groups == data.groups).all()
    for role in ("base", "adapted"):
        for a, b in zip(again.stacks[role], data.stacks[role], strict=True):
            np.testing.assert_array_equal(a, b)


def test_different_tokenizers_skip_token_tasks_but_probe_example_tasks(tmp_path):
    from transferlens.models.tiny import tiny_tokenizer

    base = tiny_model("llama", seed=0, n_ctx=128)
    other = tiny_model("llama", seed=1, n_ctx=128, tokenizer=tiny_tokenizer(vocab_size=300))
    handles = {"base": base, "adapted": other}
    cfg = CompareConfig(**SMALL)
    pc = ProbeConfig(n_boot=20)
    with pytest.raises(TaskSkipped, match="tokenizers differ"):
        probe_task(handles, load_task("word_initial"), cfg, pc)
    res, data = probe_task(handles, load_task(_marked_task(tmp_path)), cfg, pc)
    assert len(data.labels) == 32
    assert {r["model"] for r in res.records} == {"base", "adapted"}


def test_single_class_task_is_skipped_with_a_note(tmp_path):
    from transferlens.compare.tasks import probe_into
    from transferlens.results import AnalysisResult

    (tmp_path / "one.jsonl").write_text(
        "".join(json.dumps({"text": f"the quick fox {i}", "y": "a"}) + "\n" for i in range(10))
    )
    (tmp_path / "one.yaml").write_text(
        "name: one\nlevel: example\nsource: jsonl\nlabel: y\npath: one.jsonl\n"
    )
    base, adapted = _pair()
    acc = AnalysisResult("probe", "probe_accuracy", "accuracy", data={"chance": {}})
    best = AnalysisResult("probe", "probe_best", "accuracy")
    notes: list[str] = []
    cfg = CompareConfig(**SMALL)
    handles = {"base": base, "adapted": adapted}
    probe_into(handles, str(tmp_path / "one.yaml"), cfg, ProbeConfig(n_boot=20), acc, best, notes)
    assert notes == ["probe task 'one' skipped: a single class in the sample"]
    assert not acc.records and "one" not in acc.data["chance"]


def test_unknown_task_names_the_valid_ones(tmp_path, capsys):
    from transferlens.cli import main

    with pytest.raises(ValueError, match=r"unknown probe task 'nope'; valid: .*word_initial"):
        CompareConfig(tasks=["language_id", "nope"])
    with pytest.raises(ValueError, match="path of a task file"):
        CompareConfig(tasks=["nope"])
    with pytest.raises(FileNotFoundError, match="no such probe task file"):
        CompareConfig(tasks=[str(tmp_path / "missing.yaml")])
    (tmp_path / "nodata.yaml").write_text(
        "name: nodata\nlevel: example\nsource: jsonl\nlabel: y\npath: absent.jsonl\n"
    )
    with pytest.raises(FileNotFoundError, match="no such data file"):
        CompareConfig(tasks=[tmp_path / "nodata.yaml"])
    twin = tmp_path / "t.yaml"
    twin.write_text("name: topic\nlevel: example\nsource: corpus\nlabel: topic\n")
    with pytest.raises(ValueError, match="both named 'topic'"):
        CompareConfig(tasks=["topic", str(twin)])
    assert main(["compare", "a.pt", "b.pt", "--tasks", "language_id,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown probe task 'nope'" in err and "position_bucket" in err
    assert len(err.strip().splitlines()) == 1


def test_changed_task_file_changes_the_probe_key(tmp_path):
    task = _marked_task(tmp_path)
    fps = {"base": "a", "adapted": "b"}
    k0 = task_key([str(task), "language_id"])
    assert [k["definition"]["name"] for k in k0] == ["marked"]
    assert task_key([str(task)]) == k0  # stable
    task.write_text(task.read_text().replace("control: example", "control: word_type"))
    k1 = task_key([str(task)])
    assert k1 != k0
    (tmp_path / "marked.jsonl").write_text(
        (tmp_path / "marked.jsonl").read_text().replace('"yes"', '"oui"')
    )
    k2 = task_key([str(task)])
    assert k2[0]["definition"] == k1[0]["definition"] and k2 != k1
    keys = {stage_key("probe", fps, {"task_files": k}) for k in (k0, k1, k2)}
    assert len(keys) == 3


def test_rerun_recomputes_probe_only_when_a_task_file_changes(tmp_path):
    task = _marked_task(tmp_path)
    base, adapted = _pair()
    cfg = CompareConfig(**dict(SMALL, max_examples=8), tasks=[str(task)])
    out = tmp_path / "report"
    compare(base, adapted, out, cfg, progress=False)
    compare(base, adapted, out, cfg, progress=False)
    assert json.loads((out / "manifest.json").read_text())["stages_reused"] == ["probe"]
    data = tmp_path / "marked.jsonl"
    data.write_text(data.read_text().replace('"yes"', '"oui"'))
    compare(base, adapted, out, cfg, progress=False)
    assert json.loads((out / "manifest.json").read_text())["stages_computed"] == ["probe"]
    results, _ = load_results(out / "results.json")
    acc = next(r for r in results if r.name == "probe_accuracy")
    assert 0.5 <= acc.data["chance"]["marked"] <= 0.75
    assert len(acc.where(task="marked")) == 12  # 2 models x 2 kinds x 3 layers


def test_language_id_folds_and_intervals_resample_whole_paragraphs():
    """The five translations of a paragraph share its difficulty: folds and the bootstrap
    take them together (a text-level unit gave intervals ≈ 40 % too narrow), while the
    control task still gives each text its own label."""
    from types import SimpleNamespace

    from transferlens.analysis.probe_methods import selectivity
    from transferlens.compare.representations import PairedStacks, probe_stage

    rng = np.random.default_rng(0)
    P, langs, d = 60, ["en", "sv", "da", "de", "fi"], 16
    ids = np.repeat(np.arange(P), 5)
    lang = np.tile(langs, P)
    topic = np.repeat(rng.integers(0, 3, P), 5)
    hard = np.repeat(rng.uniform(0, 1, P) ** 3 * 4, 5)  # a language signal per paragraph
    code = np.array([langs.index(x) for x in lang])
    base = [
        (np.eye(d)[code] * hard[:, None] + rng.normal(size=(P * 5, d))).astype(np.float32)
        for _ in range(2)
    ]
    acts = PairedStacks(
        {"base": base, "adapted": [b.copy() for b in base]}, [0, 1], ids, lang, topic, "synthetic"
    )
    cfg = CompareConfig(tasks=["language_id"], n_boot=200, seed=0)
    handles = {
        "base": SimpleNamespace(fingerprint="b"),
        "adapted": SimpleNamespace(fingerprint="a"),
    }
    acc = probe_stage(handles, acts, cfg)[0][0]
    assert acc.data["ci_unit"] == "paragraphs"
    got = [r for r in acc.records if r["model"] == "base" and r["kind"] == "task"]
    pc = ProbeConfig(n_folds=5, seeds=(0,), n_boot=200, boot_seed=0, C=1.0)
    per_text = np.char.add(ids.astype(str), np.char.add("|", lang.astype(str)))
    ref = selectivity(base, lang, ids, types=per_text, config=pc, layer_ids=[0, 1])
    want = ref.where(quantity="task_accuracy")
    assert [(r["value"], r["ci_low"], r["ci_high"]) for r in got] == [
        (r["value"], r["ci_low"], r["ci_high"]) for r in want
    ]
    assert {r["n_groups"] for r in want} == {P}


def test_unfinished_probe_fits_become_a_report_note():
    from transferlens.compare.tasks import add_probe_records
    from transferlens.results import AnalysisResult

    res = AnalysisResult("probe", "t_selectivity", "accuracy")
    res.data["probe_fits"] = {"total": 20, "unconverged": 3}
    for m in ("base", "adapted"):
        res.add(0.7, model=m, layer=0, quantity="task_accuracy")
        res.add(0.3, model=m, layer=0, quantity="control_accuracy")
    acc = AnalysisResult("probe", "probe_accuracy", "accuracy")
    best = AnalysisResult("probe", "probe_best", "accuracy")
    add_probe_records(acc, best, res, "t")
    assert acc.notes == [
        "probe task 't': 3 of 20 probe fits stopped at the iteration limit (max_iter); "
        "their accuracies come from unfinished fits"
    ]
    res.data["probe_fits"]["unconverged"] = 0
    add_probe_records(acc2 := AnalysisResult("probe", "a", "accuracy"), best, res, "t")
    assert acc2.notes == []


def test_language_dependent_example_labels_group_by_id_and_control_per_text(tmp_path):
    """Parallel texts whose label depends on the language (a language-identity task): folds
    and intervals keep an id's translations together; the control gives each text a label."""
    lines = []
    for i in range(12):
        for lang, words in (("en", _FILLER), ("sv", _SWEDISH)):
            text = " ".join(words[(i % 5) : (i % 5) + 8])
            lines.append({"id": f"p{i}", "language": lang, "text": text, "lang": lang})
    (tmp_path / "lid.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "lid.yaml").write_text(
        "name: lid\nlevel: example\nsource: jsonl\nlabel: lang\npath: lid.jsonl\n"
        "selection: mean\ncontrol: example\n"
    )
    base, adapted = _pair()
    cfg = CompareConfig(**SMALL)
    data = build_task_data(
        {"base": base, "adapted": adapted}, load_task(str(tmp_path / "lid.yaml")), cfg
    )
    assert set(data.groups.tolist()) == {f"p{i}" for i in range(12)}  # ids, not texts
    assert len(set(data.types.tolist())) == len(data.labels) == 24  # one control label per text
    assert "grouped by example id" in data.description
