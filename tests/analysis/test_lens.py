"""Logit lens: agreement with the model's own forward pass, metrics, errors, determinism."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from transferlens.analysis.lens import (
    encode_right_padded,
    lens_logits,
    lens_sites,
    logit_lens,
    unembed,
)
from transferlens.analysis.neurons import neuron_activation_counts
from transferlens.analysis.stats import bootstrap_ci, paired_bootstrap
from transferlens.analysis.weights import weight_diff
from transferlens.models import tiny_model

PROMPTS = [
    "The quick brown fox jumps",
    "Välj Format",
    "Inserts a new table into the",
    "Wählen Sie Format - Zellen",
]
FAMILIES = ("gpt2", "llama", "gemma3")


def _hf_hidden(handle, texts):
    """Independent oracle: Hugging Face hidden states and logits at each prompt's last token."""
    enc = encode_right_padded(handle.tokenizer, texts)
    with torch.no_grad():
        out = handle.model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            output_hidden_states=True,
        )
    last = enc["attention_mask"].sum(1) - 1
    rows = torch.arange(len(texts))
    hidden = [h[rows, last] for h in out.hidden_states]
    return enc, hidden, out.logits[rows, last]


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_lens_equals_logits(tiny, family):
    h = tiny(family, n_layers=3)
    enc, hidden, logits = _hf_hidden(h, PROMPTS)
    lens = lens_logits(h, enc["input_ids"], enc["attention_mask"], check_final=False)
    assert lens.shape == (h.n_layers + 1, len(PROMPTS), logits.shape[-1])
    torch.testing.assert_close(lens[-1], logits.float(), atol=1e-5, rtol=1e-5)
    # embed and the inner layers agree with HF's hidden_states (which are pre-norm there)
    sm = h.sitemap
    for depth in range(h.n_layers):  # hidden_states[0..L-1] == embed, resid_post.0..L-2
        want = sm.lm_head(sm.final_norm(hidden[depth]))
        torch.testing.assert_close(lens[depth], want.float(), atol=1e-5, rtol=1e-5)


def test_gemma3_softcapping_is_applied(tiny_tok):
    h = tiny_model("gemma3", tokenizer=tiny_tok, n_layers=2)
    h.model.config.final_logit_softcapping = 0.5  # small cap: it changes every logit
    enc, hidden, logits = _hf_hidden(h, PROMPTS)
    lens = lens_logits(h, enc["input_ids"], enc["attention_mask"])  # check_final on
    torch.testing.assert_close(lens[-1], logits.float(), atol=1e-5, rtol=1e-5)
    assert float(logits.abs().max()) <= 0.5 + 1e-6
    # the cap matters: without it the model's logits are far from these
    h.model.config.final_logit_softcapping = None
    with torch.no_grad():
        logits_nocap = h.model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).logits
    last = enc["attention_mask"].sum(1) - 1
    nocap = logits_nocap[torch.arange(len(PROMPTS)), last]
    assert (nocap - logits).abs().max() > 0.1


def test_check_final_catches_unreproduced_postprocessing(tiny_tok):
    h = tiny_model("llama", tokenizer=tiny_tok, n_layers=2)
    # Llama ignores this setting; the lens would apply it: a mismatch the check must catch
    h.model.config.final_logit_softcapping = 0.5
    enc = encode_right_padded(h.tokenizer, PROMPTS)
    with pytest.raises(ValueError, match="differs from the model's logits"):
        lens_logits(h, enc["input_ids"], enc["attention_mask"])
    lens_logits(h, enc["input_ids"], enc["attention_mask"], check_final=False)


def test_encoder_gets_clear_error_and_other_analyses_still_run(tiny):
    bert = tiny("bert")
    with pytest.raises(ValueError, match="unembedding") as err:
        logit_lens(bert, PROMPTS)
    assert "\n" not in str(err.value) and "bert" in str(err.value)
    with pytest.raises(ValueError, match="unembedding"):
        unembed(bert, torch.zeros(1, bert.sitemap.d_model))
    # analyses that need no unembedding run on the same encoder
    diff = weight_diff(bert, copy.deepcopy(bert.model), spectra=False)
    assert diff["modules"].records and all(r["value"] == 0.0 for r in diff["modules"].records)
    counts = neuron_activation_counts(bert, {"en": PROMPTS[:1], "sv": PROMPTS[1:2]}, n_groups=1)
    assert counts.positive.shape[2] == bert.n_layers and counts.tokens.min() > 0


def test_metrics_match_direct_computation(tiny):
    base, adapted = tiny("llama", n_layers=3), tiny("llama", n_layers=3, seed=1)
    targets = [" fox", " för", " the", " Zellen"]
    res = logit_lens(base, PROMPTS, adapted=adapted, targets=targets, n_boot=200, seed=3)
    assert set(res) == {"entropy", "kl_to_final", "target_prob", "target_rank"}
    for role, h in (("base", base), ("adapted", adapted)):
        enc, _, logits = _hf_hidden(h, PROMPTS)
        lens = lens_logits(h, enc["input_ids"], enc["attention_mask"]).double()
        logp = torch.log_softmax(lens, -1)
        p = logp.exp()
        ent = -(p * logp).sum(-1)  # (D, n)
        # last layer entropy is the entropy of the model's own next-token distribution
        lp_model = torch.log_softmax(logits.double(), -1)
        torch.testing.assert_close(ent[-1], -(lp_model.exp() * lp_model).sum(-1))
        tids = [h.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in targets]
        for j, site in enumerate(lens_sites(h)):
            rec = res["entropy"].where(model=role, site=site)[0]
            assert rec["layer"] == j - 1 and rec["n"] == len(PROMPTS)
            assert rec["value"] == pytest.approx(float(ent[j].mean()), rel=1e-9)
            assert rec["ci_low"] <= rec["value"] <= rec["ci_high"]
            prob = np.mean([float(p[j, i, t]) for i, t in enumerate(tids)])
            assert res["target_prob"].where(model=role, site=site)[0]["value"] == pytest.approx(
                prob
            )
            ranks = [1 + int((lens[j, i] > lens[j, i, t]).sum()) for i, t in enumerate(tids)]
            rrec = res["target_rank"].where(model=role, site=site)[0]
            assert rrec["value"] == pytest.approx(np.mean(ranks))
        kl_last = res["kl_to_final"].where(model=role, layer=h.n_layers - 1)[0]
        assert kl_last["value"] == pytest.approx(0.0, abs=1e-9)
        assert res["kl_to_final"].where(model=role, layer=-1)[0]["value"] > 0


def test_intervals_match_stats_module(tiny):
    base, adapted = tiny("gpt2", n_layers=2), tiny("gpt2", n_layers=2, seed=1)
    res = logit_lens(base, PROMPTS, adapted=adapted, n_boot=300, seed=7)
    per = {}
    for role, h in (("base", base), ("adapted", adapted)):
        enc = encode_right_padded(h.tokenizer, PROMPTS)
        logp = torch.log_softmax(
            lens_logits(h, enc["input_ids"], enc["attention_mask"]).double(), -1
        )
        per[role] = (-(logp.exp() * logp).sum(-1)).T.numpy()  # (n, D)
    layer = 0
    want = bootstrap_ci(np.mean, per["base"][:, layer + 1], n_boot=300, seed=7)
    rec = res["entropy"].where(model="base", layer=layer)[0]
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(want.ci, rel=1e-12)
    want = paired_bootstrap(
        np.mean, (per["adapted"][:, layer + 1],), (per["base"][:, layer + 1],), n_boot=300, seed=7
    )
    rec = res["entropy"].where(model="difference", layer=layer)[0]
    assert rec["value"] == pytest.approx(want.value, abs=1e-12)
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(want.ci, rel=1e-9, abs=1e-12)


def test_identical_models_have_zero_difference_and_results_are_deterministic(tiny):
    h = tiny("gemma3", n_layers=2)
    a = logit_lens(h, PROMPTS, adapted=h, targets=[5, 6, 7, 8], n_boot=100)
    b = logit_lens(h, PROMPTS, adapted=h, targets=[5, 6, 7, 8], n_boot=100)
    assert a["entropy"].records == b["entropy"].records
    for metric in a:
        for rec in a[metric].where(model="difference"):
            assert rec["value"] == 0 and rec["ci_low"] == 0 and rec["ci_high"] == 0


def test_bad_input_errors(tiny):
    h = tiny("llama", n_layers=2)
    with pytest.raises(ValueError, match="one per prompt"):
        logit_lens(h, PROMPTS, targets=[" a"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_lens(h, PROMPTS, targets=[10**6] * len(PROMPTS))
    with pytest.raises(ValueError, match="no prompts"):
        logit_lens(h, [])
    with pytest.raises(ValueError, match="at least 2"):
        logit_lens(h, PROMPTS[:1])


def test_right_padding_does_not_change_the_lens(tiny):
    h = tiny("gpt2", n_layers=2)
    enc = encode_right_padded(h.tokenizer, PROMPTS)
    batched = lens_logits(h, enc["input_ids"], enc["attention_mask"])
    for i, text in enumerate(PROMPTS):
        one = encode_right_padded(h.tokenizer, [text])
        alone = lens_logits(h, one["input_ids"], one["attention_mask"])
        torch.testing.assert_close(batched[:, i], alone[:, 0], atol=1e-5, rtol=1e-5)
