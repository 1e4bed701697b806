"""The checkpoint format: round trips, dtypes, LoRA adapters, atomic writes, fingerprints."""

from __future__ import annotations

import copy
import hashlib
import os

import pytest
import torch
from modeltools import logits_of

from transferlens.errors import CheckpointError
from transferlens.models import (
    fingerprint,
    load_model,
    read_checkpoint,
    save_checkpoint,
    tiny_model,
)
from transferlens.models.checkpoint import FORMAT, FORMAT_VERSION


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3", "bert"])
def test_round_trip_every_family(tiny, tmp_path, family):
    h = tiny(family)
    path = save_checkpoint(tmp_path / f"{family}.pt", h.model, h.tokenizer, {"method": "test"})
    back = load_model(path)
    assert type(back.model) is type(h.model)
    assert back.fingerprint == h.fingerprint
    ids = h.tokenizer("Välj Format - Celler", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(logits_of(back.model, ids), logits_of(h.model, ids), atol=0, rtol=0)
    assert back.tokenizer("Välj Format")["input_ids"] == h.tokenizer("Välj Format")["input_ids"]


def test_layout_is_plain_data(tiny, tmp_path):
    h = tiny("llama")
    path = save_checkpoint(
        tmp_path / "m.pt", h.model, h.tokenizer, {"seed": 7, "data": {"languages": ("sv", "en")}}
    )
    doc = torch.load(path, weights_only=True)  # loads without allowing any global
    assert doc["format"] == FORMAT and doc["format_version"] == FORMAT_VERSION
    assert doc["config"]["model_type"] == "llama"
    assert doc["config"]["architectures"] == ["LlamaForCausalLM"]
    assert doc["provenance"]["seed"] == 7
    assert doc["provenance"]["data"]["languages"] == ["sv", "en"]
    assert "transformers" in doc["provenance"]["versions"]
    assert "tokenizer.json" in doc["tokenizer"]["files"]
    assert doc["adapter"] is None
    assert set(doc["state_dict"]) == set(h.model.state_dict())


def test_tokenizer_files_and_chat_template_round_trip(tmp_path):
    from transferlens.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    assert not tok.chat_template  # the template below is what the checkpoint must carry
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    h = tiny_model("llama", tokenizer=tok)
    path = save_checkpoint(tmp_path / "chat.pt", h.model, tok)
    files = read_checkpoint(path)["tokenizer"]["files"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert any("<|{{ m['role'] }}|>" in text for text in files.values())
    back = load_model(path).tokenizer
    assert back.chat_template == tok.chat_template
    chat = [{"role": "user", "content": "Välj Format - Celler"}]
    want = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert want == "<|user|>Välj Format - Celler\n<|assistant|>"
    assert back.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == want


def test_bfloat16_is_kept(tiny_tok, tmp_path):
    h = tiny_model("llama", tokenizer=tiny_tok)
    h.model.to(torch.bfloat16)
    path = save_checkpoint(tmp_path / "bf16.pt", h.model, tiny_tok)
    back = load_model(path)
    assert back.dtype == torch.bfloat16
    assert back.fingerprint == fingerprint(h.model)
    assert load_model(path, dtype="float32").dtype == torch.float32


def test_refuses_to_overwrite_and_leaves_the_file(tiny, tmp_path):
    h = tiny("gpt2")
    path = save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(path, h.model, h.tokenizer)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
    save_checkpoint(path, h.model, h.tokenizer, {"again": True}, overwrite=True)
    assert read_checkpoint(path)["provenance"]["again"] is True


def test_failed_write_keeps_old_file_and_no_temp(tiny, tmp_path, monkeypatch):
    h = tiny("gpt2")
    path = save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer, {"n": 1})

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, h.model, h.tokenizer, {"n": 2}, overwrite=True)
    monkeypatch.undo()
    assert read_checkpoint(path)["provenance"]["n"] == 1
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_provenance_must_be_plain_data(tiny, tmp_path):
    h = tiny("gpt2")
    with pytest.raises(ValueError, match="provenance"):
        save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer, {"f": object()})
    assert not (tmp_path / "m.pt").exists()


def test_peft_model_without_adapter_is_refused(llama_files, tmp_path):
    with pytest.raises(ValueError, match="merge_and_unload"):
        save_checkpoint(tmp_path / "m.pt", llama_files["peft_model"], llama_files["tok"])
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------- LoRA
def _lora_checkpoint(tmp_path, parent_path, parent_fp, peft_model, tok):
    from peft import get_peft_model_state_dict

    adapter = {
        "state_dict": get_peft_model_state_dict(peft_model),
        "peft_config": peft_model.peft_config["default"].to_dict(),
        "parent": {"path": str(parent_path), "fingerprint": parent_fp},
    }
    return save_checkpoint(
        tmp_path / "lora.pt", peft_model, tok, {"method": "lora"}, adapter=adapter
    )


@pytest.mark.parametrize("merge", [False, True])
def test_lora_checkpoint_matches_live_peft_model(llama_files, tmp_path, merge):
    live = llama_files["peft_model"]
    path = _lora_checkpoint(
        tmp_path, llama_files["pt"], llama_files["fingerprint"], live, llama_files["tok"]
    )
    doc = read_checkpoint(path)
    assert doc["state_dict"] is None
    assert all("lora_" in k for k in doc["adapter"]["state_dict"])
    assert os.path.getsize(path) < os.path.getsize(llama_files["pt"])
    h = load_model(path, merge=merge)
    ids = llama_files["ids"]
    want = logits_of(live, ids)
    assert (want - logits_of(llama_files["model"], ids)).abs().max() > 1e-2
    torch.testing.assert_close(logits_of(h.model, ids), want, atol=1e-5, rtol=0)
    # the same adapter read from a PEFT folder is the same model, merged or not
    assert h.fingerprint == load_model(llama_files["peft"], merge=merge).fingerprint


def test_lora_checkpoint_refuses_a_changed_parent(llama_files, tiny_tok, tmp_path):
    parent = save_checkpoint(tmp_path / "parent.pt", llama_files["model"], llama_files["tok"])
    path = _lora_checkpoint(
        tmp_path, parent, llama_files["fingerprint"], llama_files["peft_model"], llama_files["tok"]
    )
    load_model(path)  # fine while the parent is unchanged
    other = tiny_model("llama", tokenizer=tiny_tok, seed=4)
    save_checkpoint(parent, other.model, tiny_tok, overwrite=True)
    with pytest.raises(CheckpointError, match="the parent changed since training"):
        load_model(path)
    parent.unlink()
    with pytest.raises(FileNotFoundError, match="parent model .* is missing"):
        load_model(path)


def test_lora_checkpoint_finds_parent_next_to_it(llama_files, tmp_path):
    import shutil

    shutil.copy(llama_files["pt"], tmp_path / "parent.pt")
    live = llama_files["peft_model"]
    path = _lora_checkpoint(tmp_path, "parent.pt", llama_files["fingerprint"], live, None)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path.parent)  # "parent.pt" is not relative to the working folder
        h = load_model(path)
    finally:
        os.chdir(cwd)
    ids = llama_files["ids"]
    torch.testing.assert_close(logits_of(h.model, ids), logits_of(live, ids), atol=1e-5, rtol=0)


def test_incomplete_adapter_is_refused(llama_files, tmp_path):
    with pytest.raises(ValueError, match="parent"):
        save_checkpoint(
            tmp_path / "x.pt",
            llama_files["peft_model"],
            llama_files["tok"],
            adapter={"state_dict": {}, "peft_config": {}, "parent": {"path": "p.pt"}},
        )


# ----------------------------------------------------------------------------- fingerprint
def _reference_fingerprint(model: torch.nn.Module) -> str:
    """The documented recipe, written out independently."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_fingerprint_recipe_and_golden_value():
    m = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4)
        m.bias.copy_(torch.tensor([-1.0, 0.5]))
    assert fingerprint(m) == _reference_fingerprint(m)
    # pinned: a change here invalidates every cache keyed by fingerprints
    assert fingerprint(m) == "13866f76e001b281f12983de63680bd590397e70a2e51b52d3e7a2c14b6b2499"


def test_fingerprint_same_weights_same_hex_else_different(tiny_tok):
    a = tiny_model("llama", tokenizer=tiny_tok, seed=0).model
    b = tiny_model("llama", tokenizer=tiny_tok, seed=0).model
    c = tiny_model("llama", tokenizer=tiny_tok, seed=1).model
    assert fingerprint(a) == fingerprint(b) == _reference_fingerprint(a)
    assert fingerprint(a) != fingerprint(c)
    with torch.no_grad():
        p = b.model.layers[1].mlp.up_proj.weight
        p[0, 0] = torch.nextafter(p[0, 0], torch.tensor(float("inf")))
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) != fingerprint(copy.deepcopy(a).double())  # same values, other dtype
