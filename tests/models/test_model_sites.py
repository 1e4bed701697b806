"""Site meanings, checked against Hugging Face's own outputs and the residual identities,
and patching through ``site_hooks``."""

from __future__ import annotations

import pytest
import torch
from modeltools import EXACT, capture, check_identities, pair

from transferlens.models import ModelHandle, count_hooks, site_hooks

DECODERS = ["gpt2", "llama", "gemma3"]
CLOSE = {"atol": 2e-5, "rtol": 1e-5}


@pytest.mark.parametrize("family", DECODERS)
def test_site_identities(tiny, family):
    h = tiny(family, n_layers=3)
    ids, _ = pair(h)
    check_identities(h, ids, CLOSE)


@pytest.mark.parametrize("family", DECODERS)
def test_single_head_sites_are_slices_of_the_layer_site(tiny, family):
    h = tiny(family, n_layers=3)
    ids, _ = pair(h)
    sites = ["head.1"] + [f"head.1.{i}" for i in range(h.sitemap.n_heads)]
    acts, _, _ = capture(h, ids, sites)
    for i in range(h.sitemap.n_heads):
        torch.testing.assert_close(acts[f"head.1.{i}"], acts["head.1"][:, :, i], **CLOSE)


def test_bert_sites(tiny):
    h = tiny("bert", n_layers=3)
    assert h.sitemap.components() == ["embed", "resid_pre", "resid_post"]
    ids, _ = pair(h)
    acts, out, _ = capture(h, ids)
    hs = out.hidden_states
    torch.testing.assert_close(acts["embed"], hs[0], **EXACT)
    for layer in range(3):  # post-LN, no final norm: every block output is a hidden state
        torch.testing.assert_close(acts[f"resid_pre.{layer}"], hs[layer], **EXACT)
        torch.testing.assert_close(acts[f"resid_post.{layer}"], hs[layer + 1], **EXACT)


def _logits(h: ModelHandle, ids: torch.Tensor, fns=None) -> torch.Tensor:
    with torch.no_grad(), site_hooks(h.sitemap, fns or {}):
        return h.model(input_ids=ids).logits


@pytest.mark.parametrize("family", DECODERS)
def test_replacing_a_site_with_itself_changes_nothing(tiny, family):
    h = tiny(family, n_layers=3)
    ids, _ = pair(h)
    clean = _logits(h, ids)
    every_site = {site: (lambda x: x.clone()) for site in h.sitemap.sites(heads=True)}
    torch.testing.assert_close(_logits(h, ids, every_site), clean, **EXACT)
    for site in ["embed", "final_norm", "logits", "head.1", "head.1.2"] + [
        f"{c}.1" for c in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    ]:
        got = _logits(h, ids, {site: lambda x: x.clone()})
        torch.testing.assert_close(got, clean, **EXACT, msg=f"site {site}")


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "resid_post"])
def test_patching_the_residual_stream_propagates(tiny, family, component):
    """The whole residual stream of another input at one site makes the rest of the run that
    input's: every later logit is the other input's."""
    h = tiny(family, n_layers=3)
    a, b = pair(h)
    logits_b = _logits(h, b)
    for layer in range(h.n_layers):
        site = f"{component}.{layer}"
        acts_b, _, _ = capture(h, b, [site])
        patched = _logits(h, a, {site: lambda x, v=acts_b[site]: v})
        torch.testing.assert_close(patched, logits_b, **CLOSE, msg=f"site {site}")
        assert (patched - _logits(h, a)).abs().max() > 1e-2


@pytest.mark.parametrize("family", DECODERS)
def test_patching_attn_out_feeds_the_residual_stream(tiny, family):
    h = tiny(family, n_layers=3)
    a, b = pair(h)
    acts_b, _, _ = capture(h, b, ["attn_out.1"])
    seen: dict[str, torch.Tensor] = {}
    fns = {
        "resid_pre.1": lambda x: seen.__setitem__("pre", x.clone()),
        "attn_out.1": lambda x: acts_b["attn_out.1"],
        "resid_mid.1": lambda x: seen.__setitem__("mid", x.clone()),
    }
    _logits(h, a, fns)
    torch.testing.assert_close(seen["mid"], seen["pre"] + acts_b["attn_out.1"], **EXACT)
    # the same with the read listed before the replacement it depends on
    seen.clear()
    _logits(h, a, dict(reversed(list(fns.items()))))
    torch.testing.assert_close(seen["mid"], seen["pre"] + acts_b["attn_out.1"], **EXACT)


def test_reads_see_earlier_replacements_whatever_the_order(tiny):
    h = tiny("llama", n_layers=2)
    a, _ = pair(h)
    seen = {}
    fns = {
        "resid_pre.0": lambda x: seen.__setitem__("pre", x.clone()),
        "embed": lambda x: 2 * x,
    }
    _logits(h, a, fns)
    acts, _, _ = capture(h, a, ["embed"])
    torch.testing.assert_close(seen["pre"], 2 * acts["embed"], **EXACT)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_zeroing_a_head_removes_exactly_its_contribution(tiny, family):
    h = tiny(family, n_layers=3)
    a, _ = pair(h)
    acts, _, _ = capture(h, a, ["head.1.2", "attn_out.1"])
    seen = {}
    fns = {
        "head.1.2": lambda x: torch.zeros_like(x),
        "attn_out.1": lambda x: seen.__setitem__("attn", x.clone()),
    }
    _logits(h, a, fns)
    torch.testing.assert_close(seen["attn"], acts["attn_out.1"] - acts["head.1.2"], **CLOSE)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_sites_on_an_unmerged_lora_model(tiny, family):
    """Head values include the LoRA delta on the output projection."""
    from peft import LoraConfig, get_peft_model

    from transferlens.models import load_model

    target = "c_proj" if family == "gpt2" else "o_proj"
    base = tiny(family, n_layers=2)
    import copy

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft = get_peft_model(
            copy.deepcopy(base.model),
            LoraConfig(
                r=2,
                target_modules=[target],
                init_lora_weights=False,
                fan_in_fan_out=family == "gpt2",
            ),
        )
    h = load_model(peft, tokenizer=base.tokenizer)
    ids, _ = pair(h)
    acts, _, _ = capture(h, ids, ["head.1", "attn_out.1"])
    o_proj = h.sitemap.o_proj(1)
    bias = o_proj.base_layer.bias if family == "gpt2" else 0.0
    torch.testing.assert_close(acts["head.1"].sum(2) + bias, acts["attn_out.1"], **CLOSE)
    plain, _, _ = capture(base, ids, ["head.1"])
    assert (plain["head.1"] - acts["head.1"]).abs().max() > 1e-3


class _Boom(RuntimeError):
    pass


def _raise(x):
    raise _Boom("in a hook")


@pytest.mark.parametrize("where", ["forward", "hook"])
def test_hooks_are_removed_when_the_forward_raises(tiny, where):
    h = tiny("llama", n_layers=3)
    ids, _ = pair(h)
    before = count_hooks(h.model)
    fns = {str(s): (lambda x: None) for s in h.sitemap.sites(heads=True)}
    if where == "hook":
        fns["mlp_out.1"] = _raise
    else:
        ids = torch.full_like(ids, 10**6)  # no such token: the embedding lookup raises
    error = _Boom if where == "hook" else IndexError
    with pytest.raises(error), site_hooks(h.sitemap, fns):
        assert count_hooks(h.model) > before
        h.model(input_ids=ids)
    assert count_hooks(h.model) == before
    torch.testing.assert_close(_logits(h, pair(h)[0]), _logits(h, pair(h)[0]), **EXACT)
