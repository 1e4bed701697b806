"""``transferlens info MODEL``: describes a model from any file format, and fails cleanly."""

from __future__ import annotations

import json

import pytest

from transferlens.cli import main
from transferlens.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny):
    h = tiny("gpt2", n_layers=3)
    path = tmp_path_factory.mktemp("info") / "gpt2.pt"
    save_checkpoint(path, h.model, h.tokenizer, {"method": "random-init"})
    return path, h


def test_info_text(capsys, checkpoint):
    path, h = checkpoint
    assert main(["info", str(path)]) == 0
    out, err = capsys.readouterr()
    fields = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert fields["source"] == "checkpoint"
    assert fields["family"] == "gpt2"
    assert fields["n_layers"] == "3"
    assert fields["d_model"] == "32"
    assert fields["fingerprint"] == h.fingerprint
    assert fields["components"] == (
        "embed, resid_pre, resid_mid, resid_post, attn_out, mlp_out, head, final_norm, logits"
    )


def test_info_json_with_sites(capsys, checkpoint):
    path, h = checkpoint
    assert main(["info", str(path), "--json", "--sites"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["fingerprint"] == h.fingerprint
    assert desc["n_params"] == sum(p.numel() for p in h.model.parameters())
    assert desc["provenance"]["method"] == "random-init"
    assert desc["sites"] == [str(s) for s in h.sitemap.sites()]
    assert "resid_post.2" in desc["sites"] and "head.0" in desc["sites"]


def test_info_on_a_hugging_face_folder(capsys, tmp_path, tiny):
    h = tiny("bert")
    h.model.save_pretrained(tmp_path)
    h.tokenizer.save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["source"] == "hf" and desc["family"] == "bert"
    assert desc["components"] == ["embed", "resid_pre", "resid_post"]
    assert desc["fingerprint"] == h.fingerprint


def test_info_error_is_one_line(capsys, tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not weights\n")
    assert main(["info", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "not a transferlens checkpoint" in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["info", "m.pt", "--bogus"],
            "error: No such option: --bogus; see transferlens info --help",
        ),
        (["info"], "error: Missing argument 'model'; see transferlens info --help"),
        (["compare", "a.pt"], "error: Missing argument 'adapted'; see transferlens compare --help"),
        (
            ["train", "adapt", "a.pt", "b.pt", "--steps", "abc"],
            "error: Invalid value for '--steps'",
        ),
        (["nosuchcommand"], "error: No such command 'nosuchcommand'; see transferlens --help"),
    ],
)
def test_usage_mistakes_are_one_line(capsys, argv, expected):
    # typer raises its own copy of click's exceptions: they used to escape as a traceback
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(expected)


def test_a_group_without_its_subcommand_prints_its_help(capsys):
    assert main(["train"]) == 2
    out, err = capsys.readouterr()
    assert "pretrain" in out and "dpo" in out and err == ""


@pytest.mark.parametrize(
    "device, expected",
    [
        ("tpu", "unknown device 'tpu'; use cpu, cuda, cuda:N (the N-th GPU) or mps"),
        ("cuda:99", "device 'cuda:99': this machine has"),  # none, or fewer than 100 GPUs
    ],
)
def test_compare_on_a_device_this_machine_lacks(capsys, tmp_path, checkpoint, device, expected):
    path, _ = checkpoint
    out = tmp_path / "report"
    assert main(["compare", str(path), str(path), "--device", device, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize(
    "option, expected",
    [
        (["--n-boot", "0"], "--n-boot must be at least 1 (resamples per interval), not 0"),
        (["--seed", "-1"], "--seed must be a non-negative integer, not -1"),
    ],
)
def test_compare_options_out_of_range(capsys, tmp_path, checkpoint, option, expected):
    path, _ = checkpoint
    out = tmp_path / "report"
    assert main(["compare", str(path), str(path), "--out", str(out), *option]) == 2
    assert f"error: {expected}" in capsys.readouterr().err
    assert not out.exists()
