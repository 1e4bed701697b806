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
