"""Weight differences: exact planted changes, LoRA ΔW, vocabulary extension, CKA pairing."""

from __future__ import annotations

import copy
import math
from itertools import permutations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from transferlens.analysis.weights import (
    effective_rank,
    energy_rank,
    lora_delta_weights,
    lora_rank_usage,
    weight_change_vs_cka,
    weight_diff,
)
from transferlens.models import load_model, save_checkpoint, tiny_model
from transferlens.results import AnalysisResult

LORA_TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}


def _lora(model, family, r=2, alpha=8, seed=0):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=LORA_TARGETS[family], fan_in_fan_out=family == "gpt2"
    )
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B is zero at init: give it values so that ΔW != 0
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    return pm, cfg


def _modules(model):
    return dict(model.named_modules())


# --------------------------------------------------------------------------- spectra
def test_effective_rank_and_energy_rank_by_hand():
    s = torch.tensor([3.0, 1.0])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(s) == pytest.approx(math.exp(h), rel=1e-12)
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert effective_rank(torch.zeros(4)) == 0.0
    # energies 9 and 1 of 10: 90 % needs one value, 99 % needs both
    assert energy_rank(s, 0.9) == 1 and energy_rank(s, 0.99) == 2
    assert energy_rank(torch.zeros(3), 0.9) == 0
    with pytest.raises(ValueError):
        energy_rank(s, 0.0)


# --------------------------------------------------------------------------- full weights
def test_identical_models_have_zero_change(tiny):
    h = tiny("llama", n_layers=2)
    res = weight_diff(h, copy.deepcopy(h.model))
    assert res["modules"].records
    for r in res["modules"].records:
        assert r["value"] == 0.0 and r["delta_norm"] == 0.0 and r["effective_rank"] == 0.0
        assert r["rank90"] == 0
    for r in res["layers"].records:
        assert r["value"] == 0.0


def test_planted_change_is_exact(tiny_tok):
    base = tiny_model("gpt2", tokenizer=tiny_tok, n_layers=2)
    adapted = copy.deepcopy(base.model)
    g = torch.Generator().manual_seed(1)
    mod = _modules(adapted)["transformer.h.1.mlp.c_proj"]
    u, v = (
        torch.randn(mod.weight.shape[0], 1, generator=g),
        torch.randn(1, mod.weight.shape[1], generator=g),
    )
    with torch.no_grad():
        mod.weight += 0.3 * u @ v  # a rank-1 update
    w = _modules(base.model)["transformer.h.1.mlp.c_proj"].weight.detach().double()
    dw = mod.weight.detach().double() - w
    res = weight_diff(base, adapted)
    rec = res["modules"].where(module="transformer.h.1.mlp.c_proj")[0]
    assert rec["value"] == pytest.approx(float(dw.norm() / w.norm()), rel=1e-12)
    # float32 storage of W + ΔW adds rounding noise at the 1e-7 level of ‖W‖: the effective
    # rank of the exact stored difference is 1 to within 1e-4, not to 1e-12
    assert rec["layer"] == 1 and rec["effective_rank"] == pytest.approx(1.0, abs=1e-4)
    assert rec["effective_rank"] == pytest.approx(
        effective_rank(torch.linalg.svdvals(dw)), rel=1e-12
    )
    assert rec["rank90"] == 1 and rec["rank99"] == 1
    assert rec["n"] == w.numel()
    others = [r for r in res["modules"].records if r["module"] != rec["module"]]
    assert all(r["value"] == 0.0 for r in others)
    # per layer: sqrt(Σ‖ΔW‖² / Σ‖W‖²) over the layer's matrices
    layer1 = [r for r in res["modules"].records if r["layer"] == 1]
    want = math.sqrt(
        sum(r["delta_norm"] ** 2 for r in layer1) / sum(r["base_norm"] ** 2 for r in layer1)
    )
    assert res["layers"].where(layer=1)[0]["value"] == pytest.approx(want, rel=1e-12)
    assert res["layers"].where(layer=0)[0]["value"] == 0.0
    sv = res["singular_values"].where(module="transformer.h.1.mlp.c_proj")
    assert sv[0]["value"] == pytest.approx(float(torch.linalg.svdvals(dw)[0]), rel=1e-9)
    # deterministic
    again = weight_diff(base, adapted)
    assert again["modules"].records == res["modules"].records


def test_tied_weights_counted_once(tiny):
    h = tiny("llama", n_layers=2)  # tie_word_embeddings=True
    names = [r["module"] for r in weight_diff(h, h.model, spectra=False)["modules"].records]
    assert "model.embed_tokens" in names and "lm_head" not in names


# --------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_delta_equals_merged_minus_base_and_has_rank_le_r(tiny_tok, family):
    base = tiny_model(family, tokenizer=tiny_tok, n_layers=2)
    pm, _ = _lora(copy.deepcopy(base.model), family, r=2)
    deltas = lora_delta_weights(pm)
    assert len(deltas) == 2 * len(LORA_TARGETS[family])
    merged = _modules(copy.deepcopy(pm).merge_and_unload())
    bm = _modules(base.model)
    for name, d in deltas.items():
        want = merged[name].weight.detach().double() - bm[name].weight.detach().double()
        torch.testing.assert_close(d, want, atol=2e-6, rtol=1e-5)
        assert int(torch.linalg.matrix_rank(d)) <= 2
    res = weight_diff(base, pm)
    for name, d in deltas.items():
        rec = res["modules"].where(module=name)[0]
        assert rec["lora_r"] == 2
        assert rec["value"] == pytest.approx(
            float(d.norm() / bm[name].weight.detach().double().norm()), rel=1e-12
        )
        assert rec["rank99"] <= 2 and rec["effective_rank"] <= 2 + 1e-9
    untouched = [r for r in res["modules"].records if r["module"] not in deltas]
    assert untouched and all(r["value"] == 0.0 for r in untouched)
    usage = lora_rank_usage(pm)
    assert {r["module"] for r in usage.records} == set(deltas)
    for r in usage.records:
        assert r["lora_r"] == 2 and r["numerical_rank"] == 2
        assert 0 < r["rank_used"] <= 1


def test_lora_wrapped_in_place_compares_with_the_adapter_off(tiny_tok):
    base = tiny_model("llama", tokenizer=tiny_tok, n_layers=2)
    pristine = copy.deepcopy(base.model)
    pm, _ = _lora(base.model, "llama")  # wraps base.model in place
    res = weight_diff(base, pm)
    want = weight_diff(pristine, pm)
    assert [r["value"] for r in res["modules"].records] == pytest.approx(
        [r["value"] for r in want["modules"].records], rel=1e-12
    )
    assert any("one model object" in n for n in res["modules"].notes)


def test_lora_checkpoint_through_load_model(tiny_tok, tmp_path):
    from peft import get_peft_model_state_dict

    base = tiny_model("llama", tokenizer=tiny_tok, n_layers=2)
    parent = save_checkpoint(tmp_path / "base.pt", base.model, tiny_tok, {"method": "test"})
    pm, cfg = _lora(copy.deepcopy(base.model), "llama")
    adapter = {
        "state_dict": get_peft_model_state_dict(pm),
        "peft_config": cfg.to_dict(),
        "parent": {"path": str(parent), "fingerprint": base.fingerprint},
    }
    ckpt = save_checkpoint(tmp_path / "lora.pt", pm, tiny_tok, {"method": "lora"}, adapter=adapter)
    res = weight_diff(str(parent), str(ckpt))
    merged = _modules(copy.deepcopy(pm).merge_and_unload())
    bm = _modules(base.model)
    for name in lora_delta_weights(pm):
        want = merged[name].weight.detach().double() - bm[name].weight.detach().double()
        rec = res["modules"].where(module=name)[0]
        assert rec["delta_norm"] == pytest.approx(float(want.norm()), rel=1e-5)
        assert rec["lora_r"] == 2
    merged_handle = load_model(str(ckpt), merge=True)
    with pytest.raises(ValueError, match="no active LoRA"):
        lora_rank_usage(merged_handle)


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_extension_compares_shared_rows(tiny_tok):
    base = tiny_model("gpt2", tokenizer=tiny_tok, n_layers=2)
    adapted = copy.deepcopy(base.model)
    v = adapted.config.vocab_size
    adapted.resize_token_embeddings(v + 10)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        wte = adapted.transformer.wte.weight
        wte[v:] = torch.randn(10, wte.shape[1], generator=g)
        wte[5] += 1.0  # a change on a shared row
    res = weight_diff(base, adapted)
    rec = res["modules"].where(module="transformer.wte")[0]
    old = base.model.transformer.wte.weight.detach().double()
    want = (wte[:v].detach().double() - old).norm() / old.norm()
    assert rec["value"] == pytest.approx(float(want), rel=1e-12)
    assert rec["shape"] == [v, wte.shape[1]]
    new = res["new_rows"].where(module="transformer.wte")[0]
    assert new["n"] == 10 and new["shared"] == v and new["new"] == 10
    w = wte.detach().double()
    ratio = w[v:].norm(dim=1).mean() / w[:v].norm(dim=1).mean()
    assert new["value"] == pytest.approx(float(ratio), rel=1e-12)


# --------------------------------------------------------------------------- vs CKA
def _layer_results(weight_values, cka_values):
    w = AnalysisResult(analysis="weights", name="w", metric="relative_change")
    for i, x in enumerate(weight_values):
        w.add(x, layer=i, part="block")
    w.add(0.5, layer=None, part="outside_blocks")
    c = AnalysisResult(analysis="similarity", name="c", metric="linear_cka")
    for i, y in enumerate(cka_values):
        c.add(y, layer=i, site="resid_post")
        c.add(0.0, layer=i, site="mlp_out")
    return w, c


def test_weight_change_vs_cka_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.random(12), rng.random(12)
    w, c = _layer_results(x, y)
    res = weight_change_vs_cka(w, c, where={"site": "resid_post"}, n_boot=200, n_perm=500)
    rho = res.where(quantity="spearman_rho")[0]
    assert rho["value"] == pytest.approx(spearmanr(x, 1 - y).statistic, rel=1e-12)
    assert rho["n"] == 12 and rho["ci_low"] <= rho["value"] <= rho["ci_high"]
    assert 0 < rho["p_value"] <= 1
    pairs = res.where(quantity="cka_change")
    assert [p["value"] for p in pairs] == pytest.approx(list(1 - y))
    assert [p["value"] for p in res.where(quantity="weight_change")] == pytest.approx(list(x))
    again = weight_change_vs_cka(w, c, where={"site": "resid_post"}, n_boot=200, n_perm=500)
    assert again.records == res.records


def test_weight_change_vs_cka_sampled_p_value_counts_the_observed_order():
    # 12 layers: 12! orders, so the permutations are sampled; a perfect rank correlation is
    # met by no sampled order, and p is (1 + 0) / (1 + n_perm), never 0
    x = np.linspace(0.1, 1.2, 12)
    w, c = _layer_results(x, 1.0 - x)
    res = weight_change_vs_cka(w, c, where={"site": "resid_post"}, n_boot=50, n_perm=200)
    rho = res.where(quantity="spearman_rho")[0]
    assert rho["value"] == pytest.approx(1.0)
    assert rho["p_value"] == pytest.approx(1.0 / 201)


def test_weight_change_vs_cka_exact_permutation_p_value():
    w, c = _layer_results([0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6])
    res = weight_change_vs_cka({"layers": w}, c, where={"site": "resid_post"}, n_boot=100)
    rho = res.where(quantity="spearman_rho")[0]
    assert rho["value"] == pytest.approx(1.0)
    # all 24 orders enumerated: |rho| = 1 for the identity and the reversal
    n_extreme = sum(
        1 for p in permutations(range(4)) if abs(spearmanr([0, 1, 2, 3], p).statistic) >= 1 - 1e-12
    )
    assert rho["p_value"] == pytest.approx(n_extreme / 24)
    with pytest.raises(ValueError, match="several records for layer"):
        weight_change_vs_cka(w, c)


def test_unembedding_tied_in_one_model_and_not_the_other_is_compared(tiny_tok):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = tiny_model("llama", tokenizer=tiny_tok, seed=3)  # lm_head tied to embed_tokens
    cfg = copy.deepcopy(base.model.config)
    cfg.tie_word_embeddings = False
    untied = LlamaForCausalLM(cfg).eval()
    untied.load_state_dict(base.model.state_dict())
    with torch.no_grad():
        untied.lm_head.weight.mul_(2.0)  # a fine-tune that changed the unembedding only
    res = weight_diff(base, load_model(untied, tokenizer=tiny_tok))
    head = res["modules"].where(module="lm_head")
    assert len(head) == 1 and head[0]["value"] == pytest.approx(1.0)  # ‖2W − W‖ / ‖W‖
    assert res["modules"].where(module="model.embed_tokens")[0]["value"] == 0.0
    assert not res["modules"].notes
    # a LoRA run training the (tied) head as a full copy: peft's modules_to_save
    with pytest.warns(UserWarning, match="tie_word_embeddings"):  # peft: the head is tied
        pm = get_peft_model(
            copy.deepcopy(base.model),
            LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]),
        )
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "modules_to_save" in n and n.endswith("weight"):
                p.mul_(3.0)
    res = weight_diff(base, load_model(pm, tokenizer=tiny_tok))
    assert res["modules"].where(module="lm_head")[0]["value"] == pytest.approx(2.0)


@pytest.mark.slow
def test_weight_diff_through_a_transformer_bridge(tiny_tok, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = tiny_model("llama", tokenizer=tiny_tok, seed=1)
    plain.model.save_pretrained(tmp_path)
    tiny_tok.save_pretrained(tmp_path)
    changed = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        changed.model.layers[0].self_attn.o_proj.weight.mul_(1.5)
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path), hf_model=changed, tokenizer=AutoTokenizer.from_pretrained(tmp_path)
    )
    res = weight_diff(plain, load_model(bridge))
    mods = {r["module"]: r["value"] for r in res["modules"].records}
    assert len(mods) == len(weight_diff(plain, plain.model)["modules"].records)  # all paired
    assert mods["model.layers.0.self_attn.o_proj"] == pytest.approx(0.5)
    assert sum(v > 0 for v in mods.values()) == 1
    assert {r["layer"] for r in res["layers"].records} >= {0, 1}  # blocks found through it
    assert [r["value"] for r in res["layers"].records if r["layer"] == 1] == [0.0]
