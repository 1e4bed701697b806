"""Bad input gives one-line errors that say what is wrong and how to fix it."""

from __future__ import annotations

import json

import pytest

from transferlens.errors import TransferlensError
from transferlens.models import save_checkpoint, tiny_model
from transferlens.training import (
    AdaptConfig,
    SFTConfig,
    adapt,
    load_jsonl,
    pretrain,
    sft,
    topic_task,
)
from transferlens.training.datasets import check_languages
from transferlens.training.lora import check_target_modules

pytestmark = pytest.mark.usefixtures("single_thread")


def _one_line(info):
    assert "\n" not in str(info.value), str(info.value)


def test_existing_output_is_refused_without_overwrite(tmp_path, micro_cfg, texts):
    out = tmp_path / "m.pt"
    out.write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"m\.pt exists; pass overwrite=True \(--overwrite\)"):
        pretrain(out, micro_cfg(), texts={"en": texts.train["en"]})
    with pytest.raises(ValueError, match="must be a .pt checkpoint path") as info:
        pretrain(tmp_path / "m.bin", micro_cfg(), texts={"en": texts.train["en"]})
    _one_line(info)


def test_empty_or_too_little_data(tmp_path, micro_cfg):
    with pytest.raises(ValueError, match="no training texts") as info:
        pretrain(tmp_path / "a.pt", micro_cfg(), texts={"en": ["", "  "]}, eval_texts={"en": ["x"]})
    _one_line(info)
    with pytest.raises(ValueError, match="too little") as info:
        pretrain(
            tmp_path / "b.pt",
            micro_cfg(),
            texts={"en": ["Just one short sentence."] * 3},
            eval_texts={"en": ["x"]},
        )
    _one_line(info)


def test_unknown_language_and_topic():
    with pytest.raises(
        ValueError, match="unknown language 'xx'; the corpus has en, sv, da, de, fi"
    ):
        check_languages(["en", "xx"])
    with pytest.raises(ValueError, match="unknown topic 'swiper'; the topic task knows"):
        topic_task("test", topics=["swiper"])
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        adapt("nowhere.pt", "x.pt", AdaptConfig(language="klingon"))


def test_unknown_lora_targets_list_the_linear_modules(tiny):
    model = tiny("llama").model
    with pytest.raises(
        ValueError,
        match=r"unknown LoRA target module\(s\) qkv; this model's "
        r"linear modules are down_proj, gate_proj, k_proj, "
        r"o_proj, q_proj, up_proj, v_proj",
    ) as info:
        check_target_modules(model, ["q_proj", "qkv"])
    _one_line(info)
    assert check_target_modules(tiny("gpt2").model, None) == ["c_attn", "c_fc", "c_proj"]


def test_parent_that_is_not_a_causal_lm(tmp_path, tiny_tok):
    bert = tiny_model("bert", tokenizer=tiny_tok)
    path = save_checkpoint(tmp_path / "bert.pt", bert.model, tiny_tok, {})
    with pytest.raises(
        TransferlensError, match="the parent is a BertForMaskedLM, not a causal language model"
    ) as info:
        adapt(path, tmp_path / "out.pt", AdaptConfig(steps=1))
    _one_line(info)
    with pytest.raises(FileNotFoundError):
        adapt(tmp_path / "missing.pt", tmp_path / "out.pt", AdaptConfig(steps=1))


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:3: missing field 'response'"):
        load_jsonl(p, ["prompt", "response"])
    p.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: not valid JSON"):
        load_jsonl(p, ["prompt", "response"])
    p.write_text('{"prompt": "a", "response": 3}\n')
    with pytest.raises(ValueError, match="field 'response' must be a non-empty string"):
        load_jsonl(p, ["prompt", "response"])
    p.write_text("\n\n")
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl(p, ["prompt", "response"])
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        load_jsonl(tmp_path / "nope.jsonl", ["prompt"])
    rows = [{"prompt": f"q{i}", "response": "yes" if i % 2 else "no"} for i in range(20)]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(load_jsonl(p, ["prompt", "response"])) == 20


def test_unknown_sft_task(tmp_path, tiny_tok):
    with pytest.raises(ValueError, match="unknown SFT task 'summarise'; use topic, translation"):
        sft("nowhere.pt", tmp_path / "o.pt", SFTConfig(task="summarise"))
