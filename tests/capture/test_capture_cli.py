"""``transferlens capture``: the bundled corpus or a JSONL file into a store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlens.capture import ActivationStore, capture
from transferlens.cli import main
from transferlens.models import save_checkpoint


@pytest.fixture
def model_path(tiny, tmp_path):
    h = tiny("llama")
    return save_checkpoint(tmp_path / "model.pt", h.model, h.tokenizer, {"note": "test"})


def test_capture_jsonl(model_path, records, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    lines = [
        json.dumps(dict(r, split="test" if i != 1 else "train")) for i, r in enumerate(records)
    ]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "store"
    code = main(
        [
            "capture",
            str(model_path),
            "--sites",
            "resid_post",
            "--data",
            str(data),
            "--languages",
            "en,sv",
            "--split",
            "test",
            "--select",
            "mean",
            "--out",
            str(out),
            "--max-examples",
            "2",
            "--dtype",
            "float16",
            "--batch-size",
            "2",
            "--padding-side",
            "left",
        ]
    )
    assert code == 0, capsys.readouterr()
    st = ActivationStore(out)
    assert st.n_rows == 2 and st.dtype == "float16"
    assert st.rows["example_id"].tolist() == ["ex0", "ex2"]  # ex1 is sv but train
    assert st.manifest["tokenization"]["padding_side"] == "left"
    assert st.manifest["data"]["name"] == str(data)
    err = capsys.readouterr().err
    assert "will need" in err and "on disk" in err
    from transferlens.models import load_model

    direct = capture(
        load_model(model_path),
        [records[0], records[2]],
        "resid_post",
        select="mean",
        dtype="float16",
        batch_size=2,
    )
    np.testing.assert_array_equal(np.asarray(st.read("resid_post.1")), direct.read("resid_post.1"))


def test_capture_bundled_corpus(model_path, tmp_path):
    from transferlens.data import load_corpus_long

    out = tmp_path / "store"
    code = main(
        [
            "capture",
            str(model_path),
            "--sites",
            "resid_post.1",
            "--languages",
            "sv,en",
            "--select",
            "last",
            "--out",
            str(out),
            "--max-examples",
            "6",
        ]
    )
    assert code == 0
    st = ActivationStore(out)
    # without --split the bundled corpus gives its test split (text no training run saw)
    want = load_corpus_long(languages=["sv", "en"], split="test").select(range(6))
    assert st.rows["example_id"].tolist() == want["id"]
    assert st.rows["language"].tolist() == want["language"]
    assert set(st.rows.columns) >= {"topic", "kind", "page", "split"}
    assert set(st.rows["split"]) == {"test"}


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sites", "resid_post.7"], "out of range"),
        (["--select", "median"], "unknown select"),
        (["--data", "missing.jsonl"], "no such file"),
        (["--split", "dev"], "--split must be train, test or all"),
    ],
)
def test_capture_cli_errors(model_path, tmp_path, capsys, args, words):
    code = main(
        ["capture", str(model_path), "--out", str(tmp_path / "s"), "--max-examples", "2", *args]
    )
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1
