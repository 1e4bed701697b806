"""The methods end to end at ``tiny`` scale on the real corpus: pretrain + adapt (timing,
held-out loss against a unigram model, Swedish gain), SFT against the majority class, DPO
against the reference with a swapped-pairs negative control, LoRA and vocabulary extension."""

from __future__ import annotations

import pytest
import torch

from transferlens.models import load_model, read_checkpoint
from transferlens.training import adapt, dpo, preset_config, sft, train_pair

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def test_tiny_pretrain_and_adapt_within_90_s_and_learn(tiny_pair):
    # one thread's CPU time: the work done, whatever else the machine is running
    assert tiny_pair.cpu_s <= 90, f"tiny pretrain + adapt took {tiny_pair.cpu_s:.0f} s CPU"
    base = tiny_pair.base_metrics
    for lang in ("en", "de"):
        assert base[f"bpb_{lang}"] < 0.9 * base[f"unigram_bpb_{lang}"], base
    ad = tiny_pair.adapted_metrics
    assert ad["bpb_sv"] < ad["parent_bpb_sv"] - 0.5, ad  # a large gain on Swedish
    assert {"bpb_en", "bpb_de", "parent_bpb_en", "parent_bpb_de"} <= set(ad)  # forgetting
    prov = read_checkpoint(tiny_pair.adapted)["provenance"]
    assert prov["parent"]["fingerprint"] == load_model(tiny_pair.base).fingerprint
    assert prov["method"] == "adapt" and prov["data"]["language"] == "sv"
    assert prov["data"]["split"] == "train" and prov["seed"] == 0
    base_prov = read_checkpoint(tiny_pair.base)["provenance"]
    assert base_prov["data"]["languages"] == ["en", "de"] and base_prov["parent"] is None
    assert not (tiny_pair.dir / "base.run" / "state.pt").exists()
    assert (tiny_pair.dir / "base.run" / "log.jsonl").read_text().strip()


def test_train_pair_reuses_valid_checkpoints(tiny_pair):
    before = (tiny_pair.base.stat().st_mtime_ns, tiny_pair.adapted.stat().st_mtime_ns)
    base, adapted = train_pair(tiny_pair.dir, preset="tiny", seed=0)
    assert (base.stat().st_mtime_ns, adapted.stat().st_mtime_ns) == before


def test_sft_beats_the_majority_class_on_held_out_topics(tiny_pair, tmp_path):
    cfg = preset_config("sft", "tiny", topics=["scalc", "sbasic", "smath", "swriter"])
    res = sft(tiny_pair.base, tmp_path / "sft.pt", cfg)
    m = res.metrics
    assert m["accuracy"] > m["majority_accuracy"] + 0.1, m
    assert m["accuracy_margin"] == pytest.approx(m["accuracy"] - m["majority_accuracy"])
    assert m["response_loss"] < m["parent_response_loss"]
    prov = read_checkpoint(res.path)["provenance"]
    assert prov["data"]["labels"] == ["Basic", "Calc", "Math", "Writer"]
    assert prov["method"] == "sft"


def test_dpo_raises_preference_and_the_swapped_control_lowers_it(tiny_pair, tmp_path):
    cfg = preset_config("dpo", "tiny")
    good = dpo(tiny_pair.adapted, tmp_path / "dpo.pt", cfg).metrics
    bad = dpo(tiny_pair.adapted, tmp_path / "swap.pt", cfg.replace(swap=True)).metrics
    ref = good["parent_preference_accuracy"]
    assert bad["parent_preference_accuracy"] == ref
    assert good["preference_accuracy"] > ref and good["reward_margin"] > 0, good
    assert good["reward_accuracy"] > 0.6
    assert bad["preference_accuracy"] < ref and bad["reward_margin"] < 0, bad
    assert bad["reward_accuracy"] < 0.4


def test_lora_adapt_stores_only_the_adapter_and_loads_merged_or_not(tiny_pair, tmp_path):
    cfg = preset_config(
        "adapt",
        "tiny",
        tuning="lora",
        steps=4,
        max_examples=200,
        target_modules=["q_proj", "v_proj"],
        lr=1e-2,
        eval_texts=4,
    )
    res = adapt(tiny_pair.base, tmp_path / "lora.pt", cfg)
    doc = read_checkpoint(res.path)
    assert doc["state_dict"] is None
    ad = doc["adapter"]
    assert set(ad["peft_config"]["target_modules"]) == {"q_proj", "v_proj"}
    assert all("lora_" in k for k in ad["state_dict"])
    base = load_model(tiny_pair.base)
    assert ad["parent"]["fingerprint"] == base.fingerprint
    assert doc["provenance"]["tuning"] == "lora"
    plain, merged = load_model(res.path), load_model(res.path, merge=True)
    assert type(plain.model).__name__.startswith("Peft")
    assert not type(merged.model).__name__.startswith("Peft")
    x = torch.tensor([base.tokenizer("Hej och välkommen")["input_ids"]])
    with torch.no_grad():
        a, b, c = plain.model(x).logits, merged.model(x).logits, base.model(x).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - c).abs().max() > 1e-3  # the adapter changed the model


def test_adapt_with_vocabulary_extension_records_it(tiny_pair, tmp_path):
    cfg = preset_config("adapt", "tiny", extend_vocab=64, steps=4, max_examples=400, eval_texts=8)
    res = adapt(tiny_pair.base, tmp_path / "ext.pt", cfg)
    prov = read_checkpoint(res.path)["provenance"]
    ext = prov["vocab_extension"]
    assert ext["n_new"] == 64 and ext["new_size"] == ext["old_size"] + 64
    assert res.metrics["fertility"] < res.metrics["parent_fertility"]
    loaded = load_model(res.path)
    assert len(loaded.tokenizer) == ext["new_size"]
    assert loaded.model.get_input_embeddings().weight.shape[0] == ext["new_size"]


def test_lora_start_weights_follow_the_seed_not_the_callers_random_state():
    from transferlens.models.tiny import tiny_model
    from transferlens.training.config import AdaptConfig
    from transferlens.training.lora import apply_lora

    def adapter(seed: int, caller_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(caller_seed)
        before = torch.random.get_rng_state()
        model = tiny_model("llama", seed=0).model
        peft_model, _ = apply_lora(model, AdaptConfig(tuning="lora", seed=seed))
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's state kept
        return {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_A" in k}

    a, b = adapter(0, caller_seed=1), adapter(0, caller_seed=2)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    c = adapter(1, caller_seed=1)
    assert not all(torch.equal(a[k], c[k]) for k in a)
