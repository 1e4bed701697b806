"""pretrain on in-memory text with a micro config: architectures, provenance, log, metrics."""

from __future__ import annotations

import json

import pytest

from transferlens.models import load_model, read_checkpoint
from transferlens.training import pretrain

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("arch, family", [("llama", "llama"), ("gpt2", "gpt2")])
def test_pretrain_writes_a_described_checkpoint(arch, family, micro_cfg, texts, tmp_path):
    train = {"en": texts.train["en"], "de": texts.train["de"]}
    held = {"en": texts.held["en"], "sv": texts.held["sv"]}
    res = pretrain(
        tmp_path / "m.pt", micro_cfg(arch=arch, eval_every=3), texts=train, eval_texts=held
    )
    handle = load_model(res.path)
    assert handle.family == family
    assert len(handle.tokenizer) == 320
    prov = read_checkpoint(res.path)["provenance"]
    assert prov["method"] == "pretrain" and prov["parent"] is None
    assert prov["config"]["arch"] == arch and prov["seed"] == 0
    assert prov["data"]["languages"] == ["en", "de"]
    assert prov["data"]["n_texts"] == {"en": len(train["en"]), "de": len(train["de"])}
    assert prov["data"]["n_tokens"] == prov["data"]["n_blocks"] * 32
    assert prov["training"]["steps"] == 6 and prov["training"]["processes"] == 1
    assert set(res.metrics) == {
        f"{k}_{lang}" for k in ("bpb", "loss", "unigram_bpb", "unigram_loss") for lang in held
    }
    lines = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert "eval/bpb_sv" in lines[2] and "eval/bpb_sv" in lines[5]
    assert lines[5]["eval/bpb_en"] == pytest.approx(res.metrics["bpb_en"])
