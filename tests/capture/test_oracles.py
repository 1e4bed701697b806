"""Oracle parity: TransformerLens 4.x (TransformerBridge.run_with_cache, no weight
processing) and nnsight (trace + .save()) give the same activations as our capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.capture import capture
from transferlens.models import load_model, tiny_model

# our site -> TransformerLens bridge hook name (from the bridge's hook_dict)
TL_HOOKS = {
    "embed": "blocks.0.hook_resid_pre",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "resid_post": "blocks.{l}.hook_resid_post",
}
N_LAYERS = 2
SITES = ["embed"] + [
    f"{c}.{layer}"
    for c in ("resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post")
    for layer in range(N_LAYERS)
]


def _tl_name(site: str) -> str:
    comp, _, layer = site.partition(".")
    return TL_HOOKS[comp].format(l=layer)


def _twin(family, tok):
    """Two models with the same weights: one stays plain Hugging Face (ours), one is given
    to the oracle (TransformerBridge rewires its modules in place)."""
    ours = tiny_model(family, n_layers=N_LAYERS, tokenizer=tok)
    theirs = tiny_model(family, n_layers=N_LAYERS, tokenizer=tok)
    ours.model.set_attn_implementation("eager")  # the bridge forces eager attention
    return ours, theirs


def _ours(handle, texts):
    got = capture(
        handle,
        texts,
        SITES,
        select="all",
        exclude_special=False,
        batch_size=len(texts),
        padding_side="left",
    )
    return {s: got.read(s) for s in SITES}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_transformer_lens_bridge_parity(tiny_tok, texts, family, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    ours, theirs = _twin(family, tiny_tok)
    tiny_tok.save_pretrained(tmp_path)  # the bridge re-reads the tokenizer from its folder
    tok = AutoTokenizer.from_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path), hf_model=theirs.model, tokenizer=tok, device="cpu"
    )
    assert not getattr(bridge, "compatibility_mode", False)  # raw weights, no processing
    names = set(bridge.hook_dict)
    assert {_tl_name(s) for s in SITES} <= names
    want = {s: [] for s in SITES}
    for text in texts:
        ids = torch.tensor([tiny_tok(text)["input_ids"]])
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, names_filter=[_tl_name(s) for s in SITES])
        for s in SITES:
            want[s].append(cache[_tl_name(s)][0].numpy())
    got = _ours(ours, texts)
    for s in SITES:
        np.testing.assert_allclose(got[s], np.concatenate(want[s]), atol=1e-5, rtol=0, err_msg=s)
    # the bridge object itself goes through load_model and the same site map
    via_bridge = _ours(load_model(bridge, device=None), texts)
    for s in SITES:
        np.testing.assert_allclose(via_bridge[s], got[s], atol=1e-5, rtol=0, err_msg=s)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_nnsight_parity(tiny_tok, texts, family):
    from nnsight import NNsight

    ours, theirs = _twin(family, tiny_tok)
    nn_model = NNsight(theirs.model)
    blocks = nn_model.transformer.h if family == "gpt2" else nn_model.model.layers
    attn = "attn" if family == "gpt2" else "self_attn"
    want: dict[str, list] = {}
    for text in texts:
        ids = torch.tensor([tiny_tok(text)["input_ids"]])
        saved = {}
        with nn_model.trace(ids):
            saved["embed"] = blocks[0].input.save()
            for layer in range(N_LAYERS):
                block = blocks[layer]
                saved[f"resid_pre.{layer}"] = block.input.save()
                saved[f"attn_out.{layer}"] = getattr(block, attn).output[0].save()
                saved[f"mlp_out.{layer}"] = block.mlp.output.save()
                saved[f"resid_post.{layer}"] = block.output.save()
        for s, v in saved.items():
            v = v[0] if isinstance(v, tuple) else v
            want.setdefault(s, []).append(v[0].detach().numpy())
    got = _ours(ours, texts)
    assert len(want) == len(SITES) - N_LAYERS  # all but resid_mid
    for s in want:
        np.testing.assert_allclose(got[s], np.concatenate(want[s]), atol=1e-5, rtol=0, err_msg=s)
    # residual identity for the site we did not read from nnsight
    for layer in range(N_LAYERS):
        np.testing.assert_allclose(
            got[f"resid_mid.{layer}"],
            got[f"resid_pre.{layer}"] + got[f"attn_out.{layer}"],
            atol=1e-5,
            rtol=0,
        )
    # an nnsight object goes through load_model and the same site map
    via_nnsight = _ours(load_model(NNsight(ours.model), tokenizer=tiny_tok, device=None), texts)
    for s in SITES:
        np.testing.assert_allclose(via_nnsight[s], got[s], atol=1e-6, rtol=0, err_msg=s)
