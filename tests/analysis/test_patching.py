"""Within-model activation patching: TransformerLens parity, identities, batching, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from transferlens.analysis.patch_metrics import (
    IGNORE,
    AnswerLogProb,
    KLDivergence,
    LogitDiff,
    TargetLogProb,
    bootstrap_ratio_ci,
    continuation_labels,
    normalized_effect,
    resolve_token_ids,
)
from transferlens.analysis.patching import (
    GaussianNoise,
    activation_patching,
    cache_activations,
    grid_cells,
    run_cells,
)
from transferlens.models import count_hooks, load_model, tiny_model

ARCH = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM"}
ANSWER, WRONG = 5, 7


def _f64(family: str, tok, n_layers: int = 2, seed: int = 3):
    h = tiny_model(family, n_layers=n_layers, seed=seed, tokenizer=tok)
    h.model.double()
    return h


def _pair(tok, n_pos: int = 7):
    """Two clean prompts of ``n_pos`` tokens and counterfactuals differing at positions 2, 4."""
    ids = tok("Choose Format - Cells to open the dialog")["input_ids"][:n_pos]
    clean = torch.tensor([ids, ids[:3] + [40] + ids[4:]])
    corrupt = clean.clone()
    corrupt[:, 2] = 50
    corrupt[:, 4] = 61
    return clean, corrupt


@pytest.fixture(scope="module")
def models(tiny_tok):
    return {f: _f64(f, tiny_tok) for f in ARCH}


# --------------------------------------------------------------------------- TL parity
def _bridge(handle):
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    hf = copy.deepcopy(handle.model)  # the bridge rewires the modules it wraps
    return build_bridge_from_module(
        hf, ARCH[handle.family], hf_config=hf.config, dtype=torch.float64
    )


TL_CASES = [
    ("gpt2", "resid_pre", "get_act_patch_resid_pre", True),
    ("gpt2", "attn_out", "get_act_patch_attn_out", True),
    ("gpt2", "mlp_out", "get_act_patch_mlp_out", True),
    ("gpt2", "resid_mid", "get_act_patch_resid_mid", True),
    ("gpt2", "head", "get_act_patch_attn_head_out_all_pos", False),
    ("llama", "resid_pre", "get_act_patch_resid_pre", True),
    ("llama", "head", "get_act_patch_attn_head_out_all_pos", False),
    ("gemma3", "mlp_out", "get_act_patch_mlp_out", True),
    ("gemma3", "head", "get_act_patch_attn_head_out_all_pos", False),
]


@pytest.mark.slow
@pytest.mark.parametrize("family,component,tl_fn,by_position", TL_CASES)
def test_grid_matches_transformer_lens(models, tiny_tok, family, component, tl_fn, by_position):
    import transformer_lens.patching as tlp

    h = models[family]
    clean, corrupt = _pair(tiny_tok)
    ours = activation_patching(
        h,
        clean,
        corrupt,
        "logit_diff",
        component,
        answer=ANSWER,
        wrong=WRONG,
        by_position=by_position,
    )
    bridge = _bridge(h)
    metric = LogitDiff(torch.tensor([ANSWER] * 2), torch.tensor([WRONG] * 2))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        ref = getattr(tlp, tl_fn)(
            bridge, corrupt, cache, lambda lg: metric(lg, torch.arange(2)).mean()
        )
    assert ours.values.shape == ref.shape
    assert ours.values.std() > 1e-3  # a grid that varies, so agreement means something
    # TransformerLens stores the grid in float32; llama/gemma bridges also run RoPE and the
    # attention softmax in float32 (measured differences ~5e-7).
    torch.testing.assert_close(ours.values, ref.double(), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_kl_grid_matches_transformer_lens(models, tiny_tok):
    import transformer_lens.patching as tlp

    h = models["gpt2"]
    clean, corrupt = _pair(tiny_tok)
    ours = activation_patching(h, clean, corrupt, "kl", "attn_out")
    bridge = _bridge(h)
    with torch.no_grad():
        clean_logits, cache = bridge.run_with_cache(clean)
        kl = KLDivergence.from_logits(clean_logits)
        ref = tlp.get_act_patch_attn_out(
            bridge, corrupt, cache, lambda lg: kl(lg, torch.arange(2)).mean()
        )
    torch.testing.assert_close(ours.values, ref.double(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize("family", list(ARCH))
@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "resid_post"])
def test_denoising_residual_all_positions_restores_clean(models, tiny_tok, family, component):
    h = models[family]
    clean, corrupt = _pair(tiny_tok)
    g = activation_patching(
        h, clean, corrupt, "logit_diff", component, answer=ANSWER, wrong=WRONG, by_position=False
    )
    assert abs(g.clean_value - g.corrupt_value) > 1e-3
    # "exactly" up to float64 rounding: batched BLAS kernels are not bitwise row-invariant
    torch.testing.assert_close(g.per_prompt, g.clean.expand_as(g.per_prompt), atol=1e-10, rtol=0)
    torch.testing.assert_close(g.normalized(), torch.ones_like(g.values), atol=1e-9, rtol=0)


@pytest.mark.parametrize("family", list(ARCH))
def test_layer0_positions_where_tokens_agree_have_no_effect(models, tiny_tok, family):
    h = models[family]
    clean, corrupt = _pair(tiny_tok)
    g = activation_patching(h, clean, corrupt, "logprob", "resid_pre", answer=ANSWER, layers=[0])
    effect = g.per_prompt[0] - g.corrupt  # (pos, prompt)
    agree = (clean == corrupt).all(0)
    assert agree.sum() >= 3 and (~agree).sum() == 2
    assert effect[agree].abs().max() < 1e-12
    assert effect[~agree].abs().max() > 1e-4


def test_noising_and_denoising_both_hold_their_identities(models, tiny_tok):
    h = models["llama"]
    clean, corrupt = _pair(tiny_tok)
    kw = dict(answer=ANSWER, wrong=WRONG)
    den = activation_patching(h, clean, corrupt, "logit_diff", "resid_pre", **kw)
    noi = activation_patching(
        h, clean, corrupt, "logit_diff", "resid_pre", direction="noising", **kw
    )
    assert den.clean_value == pytest.approx(noi.clean_value, abs=1e-12)
    # noising a position where the tokens agree, at layer 0, leaves the clean run unchanged
    agree = (clean == corrupt).all(0)
    assert (noi.per_prompt[0][agree] - noi.clean).abs().max() < 1e-12
    # noising every position at a residual site gives the corrupt run
    noi_all = activation_patching(
        h, clean, corrupt, "logit_diff", "resid_pre", direction="noising", by_position=False, **kw
    )
    torch.testing.assert_close(
        noi_all.normalized(), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0
    )
    # not symmetric: denoising effect + noising effect is not 1 everywhere
    asym = (den.normalized() + noi.normalized() - 1).abs().max()
    assert asym > 1e-3


@pytest.mark.parametrize(
    "component,by_position", [("head", True), ("mlp_out", False), ("resid_mid", True)]
)
def test_batched_grid_equals_one_forward_per_cell(models, tiny_tok, component, by_position):
    h = models["gemma3"]
    clean, corrupt = _pair(tiny_tok)
    cells, _, _ = grid_cells(
        h,
        component,
        clean.shape[1],
        by_position=by_position,
        layers=[1],
        positions=[1, 2, 4, 6] if by_position else None,
    )
    source, clean_logits = cache_activations(h, clean, sorted({c.cache_site for c in cells}))
    metric = KLDivergence.from_logits(clean_logits)
    calls = []
    hook = h.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        one = run_cells(h, corrupt, source, cells, metric, batch_size=2)  # one cell per forward
        n_single = len(calls)
        batched = run_cells(h, corrupt, source, cells, metric, batch_size=10_000)
    finally:
        hook.remove()
    assert n_single == len(cells) and len(calls) - n_single == 1
    assert one.std() > 1e-4
    torch.testing.assert_close(batched, one, atol=1e-12, rtol=0)


def test_gaussian_noise_is_seeded_scaled_and_local(models):
    h = models["gemma3"]
    tokens = torch.tensor([[0, 11, 12, 13, 14, 15]])
    noise = GaussianNoise(positions=[1, -2], seed=4)
    d1, d2 = noise.delta(h, tokens), noise.delta(h, tokens)
    assert torch.equal(d1, d2)
    assert not torch.equal(d1, GaussianNoise(positions=[1, -2], seed=5).delta(h, tokens))
    assert torch.count_nonzero(d1[0, [0, 2, 3, 5]]) == 0 and torch.count_nonzero(d1[0, [1, 4]]) > 0
    emb = h.model.get_input_embeddings()
    expected = 3 * emb.weight.double().std().item() * float(h.sitemap.d_model) ** 0.5  # Gemma scale
    assert noise.sigma(h) == pytest.approx(expected, rel=1e-9)


def test_gaussian_noise_corruption_identities(models, tiny_tok):
    h = models["gpt2"]
    clean, _ = _pair(tiny_tok)
    noise = GaussianNoise(positions=[1, 2], seed=0)
    g = activation_patching(h, clean, noise, "kl", "resid_pre")
    assert g.clean_value == pytest.approx(0.0, abs=1e-12)  # KL of the clean run to itself
    assert g.corrupt_value > 1e-3
    # positions without noise, at layer 0, carry nothing to restore
    assert (g.per_prompt[0, [0, 3, 4, 5, 6]] - g.corrupt).abs().max() < 1e-12
    full = activation_patching(h, clean, noise, "kl", "resid_pre", by_position=False)
    assert full.values.abs().max() < 1e-12
    again = activation_patching(h, clean, noise, "kl", "resid_pre")
    assert torch.equal(g.values, again.values)
    assert g.config["corruption"] == "gaussian_noise" and g.config["noise_sigma"] > 0
    # recording the embedding site must not drop the noise from the run
    delta = noise.delta(h, clean)
    _, noisy = cache_activations(h, clean, ["resid_pre.0"], embed_delta=delta)
    _, plain = cache_activations(h, clean, [], embed_delta=delta)
    torch.testing.assert_close(noisy, plain, atol=0, rtol=0)
    assert (noisy - cache_activations(h, clean, [])[1]).abs().max() > 1e-3
    # noising: run the clean input, insert the noisy run's activations
    noi = activation_patching(h, clean, noise, "kl", "resid_pre", direction="noising")
    assert noi.corrupt_value == pytest.approx(g.corrupt_value, abs=1e-12)
    assert noi.per_prompt[0, [0, 3, 4, 5, 6]].abs().max() < 1e-12  # noise-free: clean run
    assert noi.per_prompt[0, [1, 2]].abs().max() > 1e-4
    noi_all = activation_patching(
        h, clean, noise, "kl", "resid_pre", direction="noising", by_position=False
    )
    torch.testing.assert_close(
        noi_all.per_prompt, noi_all.corrupt.expand_as(noi_all.per_prompt), atol=1e-10, rtol=0
    )


def test_result_records_and_hooks_removed(models, tiny_tok):
    h = models["gpt2"]
    clean, corrupt = _pair(tiny_tok)
    g = activation_patching(
        h, clean, corrupt, "logit_diff", "head", answer=ANSWER, wrong=WRONG, by_position=False
    )
    assert g.axes == ("layer", "head") and g.values.shape == (2, 4)
    res = g.to_result(n_boot=200)
    assert len(res.records) == 2 * 2 * 4
    rec = res.where(metric="normalized_effect", layer=1, head=2)[0]
    assert rec["value"] == pytest.approx(float(g.normalized()[1, 2]), abs=1e-12)
    assert rec["position"] == "all" and rec["n"] == 2 and rec["ci_low"] <= rec["ci_high"]
    json.dumps(res.to_dict())
    assert count_hooks(h.model) == 0

    def boom(logits, idx):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        activation_patching(h, clean, corrupt, boom, "resid_pre")
    assert count_hooks(h.model) == 0


# --------------------------------------------------------------------------- metrics
def test_metrics_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    idx = torch.tensor([0, 1, 0])
    ans, wrong = torch.tensor([2, 7]), torch.tensor([3, 1])
    ld = LogitDiff(ans, wrong)(logits, idx)
    assert ld[1] == logits[1, -1, 7] - logits[1, -1, 1]
    lp = AnswerLogProb(ans)(logits, idx)
    assert lp[2] == pytest.approx(torch.log_softmax(logits[2, -1], -1)[2].item(), abs=1e-12)
    ref = torch.randn(2, 4, 10, generator=g, dtype=torch.float64)
    kl = KLDivergence.from_logits(ref)(logits, idx)
    p = torch.log_softmax(ref[0, -1], -1)
    q = torch.log_softmax(logits[2, -1], -1)
    torch_kl = torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum")
    assert kl[2] == pytest.approx(torch_kl.item(), abs=1e-12)
    inp, labels = continuation_labels([[0, 4, 5, 6, 7], [0, 8, 9, 6, 2]], [3, 2])
    assert inp.tolist() == [[0, 4, 5, 6], [0, 8, 9, 6]]
    assert labels.tolist() == [[IGNORE, IGNORE, 6, 7], [IGNORE, 9, 6, 2]]
    tl = TargetLogProb(labels)(logits[:2], torch.tensor([0, 1]))
    lsm = torch.log_softmax(logits[1], -1)
    assert tl[1] == pytest.approx((lsm[1, 9] + lsm[2, 6] + lsm[3, 2]).item(), abs=1e-12)
    ne = normalized_effect(
        torch.tensor([0.5, 2.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0])
    )
    assert ne[0] == 0.5 and torch.isnan(ne[1])


def test_bootstrap_uses_the_shared_resampling():
    import numpy as np

    from transferlens.analysis.stats import bootstrap_ci

    rng = np.random.default_rng(0)
    num, den = rng.normal(1, 1, 30), rng.normal(2, 0.5, 30)
    ref = bootstrap_ci(lambda a, b: a.mean() / b.mean(), num, den, n_boot=300, seed=7)
    lo, hi = bootstrap_ratio_ci(num, den, n_boot=300, seed=7)
    assert (lo, hi) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-12)
    ref = bootstrap_ci(np.mean, num, n_boot=300, seed=7)
    assert bootstrap_ratio_ci(num, n_boot=300, seed=7) == pytest.approx((ref.ci_low, ref.ci_high))
    assert all(np.isnan(bootstrap_ratio_ci([1.0])))


def test_answer_tokens_are_checked(tiny_tok):
    assert resolve_token_ids(tiny_tok, 5, 2, 320).tolist() == [5, 5]
    single = next(
        t
        for t in (" the", "e", "a")
        if len(tiny_tok(t, add_special_tokens=False)["input_ids"]) == 1
    )
    assert resolve_token_ids(tiny_tok, [single, 3], 2, 320).shape == (2,)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        resolve_token_ids(tiny_tok, 320, 1, 320)
    with pytest.raises(ValueError, match="not one"):
        resolve_token_ids(tiny_tok, " Kalkylbladsfunktion", 1, 320)
    with pytest.raises(ValueError, match="3 answers for 2 prompts"):
        resolve_token_ids(tiny_tok, [1, 2, 3], 2, 320)


# --------------------------------------------------------------------------- bad input
def test_bad_input_errors(models, tiny_tok):
    h = models["gpt2"]
    clean, corrupt = _pair(tiny_tok)
    with pytest.raises(ValueError, match="7 tokens but the corrupt prompt is 6 tokens"):
        activation_patching(h, clean, corrupt[:, :6], answer=ANSWER, wrong=WRONG)
    with pytest.raises(ValueError, match="different token lengths"):
        activation_patching(h, ["a b", "Choose Format - Cells"], ["a c", "b"], answer=1, wrong=2)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        activation_patching(h, clean, corrupt, answer=10_000, wrong=WRONG)
    with pytest.raises(ValueError, match="needs answer= and wrong="):
        activation_patching(h, clean, corrupt, "logit_diff")
    with pytest.raises(ValueError, match="layer 5 out of range"):
        activation_patching(h, clean, corrupt, answer=ANSWER, wrong=WRONG, layers=[5])
    with pytest.raises(ValueError, match="cannot patch component 'embed'"):
        activation_patching(h, clean, corrupt, answer=ANSWER, wrong=WRONG, component="embed")
    with pytest.raises(ValueError, match="direction 'sideways'"):
        activation_patching(h, clean, corrupt, answer=ANSWER, wrong=WRONG, direction="sideways")
    with pytest.raises(ValueError, match="position 9 is out of range"):
        activation_patching(h, clean, corrupt, answer=ANSWER, wrong=WRONG, positions=[9])
    # positions select the cells of a by-position grid; without one they would be ignored
    with pytest.raises(ValueError, match="with by_position=False every cell patches all"):
        activation_patching(
            h, clean, corrupt, answer=ANSWER, wrong=WRONG, positions=[-1], by_position=False
        )
    bert = tiny_model("bert", tokenizer=tiny_tok)
    with pytest.raises(ValueError, match="not available for bert"):
        activation_patching(bert, clean, corrupt, lambda lg, i: lg[:, -1, 0], "mlp_out")
    # a bare encoder (no language-model head) has no logits: refused, not read as logits
    bare = load_model(bert.model.bert, tokenizer=tiny_tok)
    with pytest.raises(ValueError, match=r"returns no logits over its \d+ tokens.*bare encoder"):
        activation_patching(bare, clean, corrupt, "logprob", "resid_pre", answer=ANSWER)
    assert count_hooks(bare.model) == 0
