"""``transferlens train ...`` in-process, on a micro base model and user JSONL files."""

from __future__ import annotations

import json

import pytest

from transferlens.cli import main
from transferlens.models import load_model, read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

MICRO = ["--set", "seq_len=32", "--set", "eval_texts=4", "--set", "save_every=0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from transferlens.training import PretrainConfig, pretrain
    from transferlens.training.datasets import corpus_texts

    out = tmp_path_factory.mktemp("cli") / "base.pt"
    texts = corpus_texts(["en", "sv"], "train", max_texts=300)
    cfg = PretrainConfig(
        steps=4,
        batch_size=4,
        seq_len=48,
        vocab_size=400,
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_ff=64,
        eval_every=0,
        eval_texts=4,
        save_every=0,
    )
    pretrain(out, cfg, texts=texts, eval_texts={"en": texts["en"][:4]})
    return out


def test_pretrain_command_writes_a_checkpoint_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "p.pt"
    args = [
        "train",
        "pretrain",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--set",
        "max_texts=100",
        "--set",
        "eval_languages=en",
        *MICRO,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "unigram_bpb_en" in printed
    prov = read_checkpoint(out)["provenance"]
    assert prov["preset"] == "tiny" and prov["config"]["steps"] == 2
    assert prov["command"].startswith("transferlens train pretrain")
    assert main(args) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_adapt_command_lora_and_bad_targets(base, tmp_path, capsys):
    out = tmp_path / "a.pt"
    assert (
        main(
            [
                "train",
                "adapt",
                str(base),
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--tuning",
                "lora",
                "--target-modules",
                "q_proj,nope",
                *MICRO,
            ]
        )
        == 2
    )
    assert "unknown LoRA target module(s) nope" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "adapt",
                str(base),
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--tuning",
                "lora",
                "--set",
                "max_examples=100",
                *MICRO,
            ]
        )
        == 0
    )
    assert read_checkpoint(out)["adapter"] is not None
    assert load_model(out, merge=True).fingerprint != load_model(base).fingerprint


def test_sft_on_a_user_jsonl_file(base, tmp_path):
    rows = [
        {"prompt": f"Is {w} a colour?", "response": "yes" if i % 3 else "no"}
        for i, w in enumerate(["red", "cat", "blue", "dog", "green", "tree"] * 6)
    ]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "s.pt"
    assert (
        main(
            [
                "train",
                "sft",
                str(base),
                str(out),
                "--task",
                str(path),
                "--steps",
                "3",
                "--batch-size",
                "4",
                *MICRO,
            ]
        )
        == 0
    )
    prov = read_checkpoint(out)["provenance"]
    assert prov["data"]["labels"] == ["no", "yes"]
    assert prov["data"]["n_examples"] + prov["data"]["eval"]["n_examples"] == len(rows)
    assert {"accuracy", "majority_accuracy", "accuracy_margin", "response_loss"} <= set(
        prov["metrics"]
    )


def test_dpo_on_a_user_jsonl_file_with_swap(base, tmp_path):
    rows = [
        {"prompt": f"Say hello #{i}", "chosen": "Hej!", "rejected": "Hallo!"} for i in range(24)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "d.pt"
    assert (
        main(
            [
                "train",
                "dpo",
                str(base),
                str(out),
                "--pairs",
                str(path),
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--swap",
                "--beta",
                "0.2",
                *MICRO,
            ]
        )
        == 0
    )
    prov = read_checkpoint(out)["provenance"]
    assert prov["data"]["swapped"] is True and prov["config"]["beta"] == 0.2
    assert prov["reference"]["fingerprint"] == load_model(base).fingerprint
    assert {"preference_accuracy", "reward_margin", "parent_preference_accuracy"} <= set(
        prov["metrics"]
    )
