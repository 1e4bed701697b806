"""Fixtures for the model tests: one tiny Llama written in every format, once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modeltools import TEXTS, lora_model


@pytest.fixture(scope="session")
def llama_files(tmp_path_factory, tiny_tok):
    """A tiny Llama (2 layers, GQA) saved as HF folder, .pt, GGUF and PEFT adapter folder.

    Returns a dict: model (the live HF model), tok (the tokenizer read back from the HF folder),
    ids (token ids of TEXTS[0]), hf, pt, gguf, peft (paths), peft_model (the live LoRA model).
    """
    from gguf_writer import write_llama_gguf
    from transformers import AutoTokenizer

    from transferlens.models import save_checkpoint, tiny_model

    root = tmp_path_factory.mktemp("llama")
    h = tiny_model("llama", tokenizer=tiny_tok, seed=3)
    hf = root / "hf"
    h.model.save_pretrained(hf)
    tiny_tok.save_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    pt = save_checkpoint(root / "tiny.pt", h.model, tok, {"method": "random-init", "seed": 3})
    gguf = write_llama_gguf(h.model, tok, root / "tiny.gguf")
    peft_model = lora_model(h.model)
    peft_dir = root / "peft"
    peft_model.save_pretrained(peft_dir)
    cfg_path = peft_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(hf)
    cfg_path.write_text(json.dumps(cfg))
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    return {
        "model": h.model,
        "fingerprint": h.fingerprint,
        "tok": tok,
        "ids": ids,
        "hf": hf,
        "pt": Path(pt),
        "gguf": Path(gguf),
        "peft": peft_dir,
        "peft_model": peft_model,
    }
