"""LAPE: activation counting, entropy, selection of planted neurons, base-vs-adapted comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.analysis.lens import encode_right_padded
from transferlens.analysis.neurons import (
    NeuronCounts,
    compare_lape,
    lape,
    lape_entropy,
    neuron_activation_counts,
)
from transferlens.models import count_hooks, site_hooks, tiny_model
from transferlens.models.tiny import tiny_tokenizer

# With a 600-token vocabulary these texts share no token across languages.
TEXTS = {
    "en": [
        "The quick brown fox jumps over the lazy dog",
        "Inserts a new table into the document at the cursor",
        "Choose the cells",
    ],
    "sv": [
        "Välj Celler för att öppna dialogrutan",
        "Infogar en ny tabell i dokumentet vid markörens",
        "Välj en ny tabell",
    ],
    "de": [
        "Wählen Sie Zellen um den Dialog zu öffnen",
        "Wählen Sie den Dialog",
        "Zellen zu öffnen",
    ],
}
PLANTED = {"sv": 10, "de": 11, "en": 12}  # layer-0 neuron index per language
ALWAYS_ON = 20


@pytest.fixture(scope="module")
def planted():
    """A tiny Llama whose layer-0 neurons 10/11/12 fire exactly on sv/de/en tokens and whose
    neuron 20 fires on every token.

    Attention output of layer 0 is zeroed, so the MLP reads RMSNorm(embedding), which keeps
    the sign of every coordinate. Coordinates 0..2 of a token's embedding are +a for tokens
    of one language and -a otherwise; coordinate 3 is +a for all tokens. Neuron j computes
    silu(x_d) * x_3 > 0  <=>  x_d > 0.
    """
    tok = tiny_tokenizer(600)
    ids = {
        lang: {i for t in ts for i in tok(t, add_special_tokens=False)["input_ids"]}
        for lang, ts in TEXTS.items()
    }
    for a in ids:
        for b in ids:
            assert a == b or not ids[a] & ids[b], "test texts must not share tokens"
    h = tiny_model("llama", tokenizer=tok, n_layers=2)
    m, a = h.model, 0.05
    with torch.no_grad():
        blk = m.model.layers[0]
        blk.self_attn.o_proj.weight.zero_()
        blk.post_attention_layernorm.weight[:4] = 1.0
        emb = m.model.embed_tokens.weight
        emb[:, 3] = a
        for d, (lang, j) in enumerate(PLANTED.items()):
            col = torch.full((emb.shape[0],), -a)
            col[sorted(ids[lang])] = a
            emb[:, d] = col
            blk.mlp.gate_proj.weight[j] = 0
            blk.mlp.gate_proj.weight[j, d] = 1
            blk.mlp.up_proj.weight[j] = 0
            blk.mlp.up_proj.weight[j, 3] = 1
        blk.mlp.gate_proj.weight[ALWAYS_ON] = 0
        blk.mlp.gate_proj.weight[ALWAYS_ON, 3] = 1
        blk.mlp.up_proj.weight[ALWAYS_ON] = 0
        blk.mlp.up_proj.weight[ALWAYS_ON, 3] = 1
    return h


def test_planted_neurons_are_found(planted):
    counts = neuron_activation_counts(planted, TEXTS, n_groups=2)
    p = counts.probabilities()
    langs = counts.languages
    for lang, j in PLANTED.items():
        want = np.array([1.0 if x == lang else 0.0 for x in langs])
        np.testing.assert_array_equal(p[:, 0, j], want)
    np.testing.assert_array_equal(p[:, 0, ALWAYS_ON], np.ones(3))
    # 128 neurons; top_rate 3/128 selects exactly three: the planted ones (entropy 0)
    sel = lape(counts, top_rate=3 / 128)
    assert sel.filter_threshold < 1.0
    assert {(0, j) for j in PLANTED.values()} == {tuple(x) for x in np.argwhere(sel.selected)}
    for lang, j in PLANTED.items():
        assert sel.neurons(lang) == {(0, j)}
    assert sel.entropy[0, ALWAYS_ON] == pytest.approx(np.log(3), abs=1e-12)
    assert not sel.selected[0, ALWAYS_ON]
    # the default 1 % (round(1.28) = 1 neuron) picks one of them
    one = lape(counts)
    assert int(one.selected.sum()) == 1
    assert tuple(np.argwhere(one.selected)[0]) in {(0, j) for j in PLANTED.values()}


def test_counts_exclude_bos_and_padding(planted):
    counts = neuron_activation_counts(planted, TEXTS, n_groups=2, batch_size=2)
    tok = planted.tokenizer
    for k, lang in enumerate(counts.languages):
        n_tok = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[lang])
        assert int(counts.tokens[k].sum()) == n_tok
        # always-on neuron: positive on every counted token, so count == tokens
        assert int(counts.positive[k, :, 0, ALWAYS_ON].sum()) == n_tok
    # texts 0 and 2 in group 0, text 1 in group 1
    n1 = len(tok(TEXTS["en"][1], add_special_tokens=False)["input_ids"])
    assert int(counts.tokens[0, 1]) == n1
    assert counts.n_groups == (2, 2, 2)
    assert count_hooks(planted.model) == 0


def _store(into: dict, key: int):
    def fn(x: torch.Tensor) -> None:
        into[key] = x.detach()

    return fn


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_counts_match_an_independent_recomputation(tiny, family):
    """Recompute the MLP hidden activation from resid_mid (read with site_hooks) by hand:
    for gated MLPs ``act(gate(x))`` as in Tang et al.'s code, whatever the sign of ``up(x)``
    (random weights: ``up(x)`` takes both signs, so ``act(gate(x)) · up(x)`` would differ)."""
    h = tiny(family, n_layers=2)
    texts = {"en": ["The quick brown fox", "Choose Format - Cells"], "sv": ["Välj Format"]}
    counts = neuron_activation_counts(h, texts, batch_size=8, n_groups=1)
    for k, lang in enumerate(counts.languages):
        enc = encode_right_padded(h.tokenizer, texts[lang])
        valid = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        mids: dict[int, torch.Tensor] = {}
        fns = {f"resid_mid.{i}": _store(mids, i) for i in range(h.n_layers)}
        with torch.no_grad(), site_hooks(h.sitemap, fns):
            h.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        for i, blk in enumerate(h.sitemap.blocks):
            with torch.no_grad():
                if family == "gpt2":
                    act = blk.mlp.act(blk.mlp.c_fc(blk.ln_2(mids[i])))
                else:
                    norm = (
                        "pre_feedforward_layernorm"
                        if family == "gemma3"
                        else "post_attention_layernorm"
                    )
                    x = getattr(blk, norm)(mids[i])
                    act = blk.mlp.act_fn(blk.mlp.gate_proj(x))
                    assert ((act > 0) != (act * blk.mlp.up_proj(x) > 0)).any()
            want = ((act > 0) & valid[..., None]).sum(dim=(0, 1)).numpy()
            np.testing.assert_array_equal(counts.positive[k, :, i].sum(0), want)


def test_entropy_uniform_is_log_k_and_one_hot_is_zero():
    for K in (2, 3, 5):
        probs = np.full((K, 1, 3), 0.3)
        probs[:, 0, 1] = 0.0
        probs[0, 0, 2], probs[1:, 0, 2] = 0.7, 0.0
        ent = lape_entropy(probs)
        assert ent[0, 0] == pytest.approx(np.log(K), abs=1e-12)
        assert ent[0, 1] == 0.0  # never active
        assert ent[0, 2] == 0.0  # one language only


def test_selection_on_a_hand_built_example():
    # K=2 languages, 1 layer, 10 neurons; all 20 probabilities
    p = np.array(
        [
            [0.9, 0.1, 0.5, 0.5, 0.2, 0.8, 0.0, 0.3, 0.4, 0.6],
            [0.1, 0.9, 0.5, 0.4, 0.2, 0.0, 0.0, 0.3, 0.4, 0.6],
        ]
    )[:, None, :]
    # filter quantile 0.9: round(20*0.9) = 18th smallest of the 20 values = 0.8
    # -> neurons with some p > 0.8: 0 and 1. top_rate 0.3 -> round(3) = 3, but only 2 pass.
    # activation bar quantile 0.5: 10th smallest = 0.4 -> membership where p > 0.4
    sel = lape(
        p, languages=["sv", "en"], filter_quantile=0.9, top_rate=0.3, activation_bar_quantile=0.5
    )
    assert sel.filter_threshold == 0.8 and sel.activation_bar == 0.4
    assert np.flatnonzero(sel.selected[0]).tolist() == [0, 1]
    assert sel.neurons("sv") == {(0, 0)} and sel.neurons("en") == {(0, 1)}
    # neuron 5 (0.8 / 0.0) has entropy 0 but no probability above 0.8: not selected
    assert sel.entropy[0, 5] == 0.0 and not sel.selected[0, 5]
    with pytest.raises(ValueError, match="not measured"):
        sel.neurons("de")


def _counts(positive, tokens):
    positive = np.asarray(positive, dtype=np.int64)
    tokens = np.asarray(tokens, dtype=np.int64)
    return NeuronCounts(
        languages=("sv", "en"),
        positive=positive,
        tokens=tokens,
        n_groups=(tokens.shape[1],) * 2,
        n_texts=(tokens.shape[1],) * 2,
    )


def test_compare_gained_and_lost_neurons():
    rng = np.random.default_rng(0)
    K, U, L, N = 2, 4, 2, 50
    tokens = np.full((K, U), 100)
    base = rng.integers(30, 70, size=(K, U, L, N))
    adapted = base.copy()
    base[0, :, 1, 7] = 100  # base: neuron (1, 7) Swedish-only
    base[1, :, 1, 7] = 0
    adapted[0, :, 0, 3] = 100  # adapted: neuron (0, 3) Swedish-only instead
    adapted[1, :, 0, 3] = 0
    res = compare_lape(_counts(base, tokens), _counts(adapted, tokens), top_rate=0.01, n_boot=50)
    assert set(res) == {"neurons_per_layer", "jaccard", "change_counts", "changes"}
    changes = {(r["change"], r["layer"], r["neuron"]) for r in res["changes"].records}
    assert changes == {("gained", 0, 3), ("lost", 1, 7)}
    gained = res["changes"].where(change="gained")[0]
    assert gained["value"] == pytest.approx(1.0 - base[0, :, 0, 3].sum() / 400)
    assert res["jaccard"].where(language="sv")[0]["value"] == 0.0
    per_layer = res["change_counts"]
    assert per_layer.where(change="gained", layer=0)[0]["value"] == 1
    assert per_layer.where(change="lost", layer=1)[0]["value"] == 1
    nb = res["neurons_per_layer"]
    assert nb.where(model="base", language="sv", layer=1)[0]["value"] == 1
    assert nb.where(model="adapted", language="sv", layer=0)[0]["value"] == 1
    for r in nb.records:
        assert r["ci_low"] <= r["value"] <= r["ci_high"]


def test_compare_identical_models_and_determinism(planted):
    a = compare_lape(planted, planted, TEXTS, top_rate=3 / 128, n_groups=3, n_boot=30)
    b = compare_lape(planted, planted, TEXTS, top_rate=3 / 128, n_groups=3, n_boot=30)
    for key in a:
        assert a[key].records == b[key].records
    for r in a["jaccard"].records:
        assert r["value"] == 1.0 and r["ci_low"] == 1.0 and r["ci_high"] == 1.0
    assert a["changes"].records == []
    assert a["jaccard"].models == {"base": planted.fingerprint, "adapted": planted.fingerprint}


def test_bad_input():
    with pytest.raises(ValueError, match="no texts"):
        neuron_activation_counts(tiny_model("llama"), {"en": []})
    with pytest.raises(ValueError, match="top_rate"):
        lape(np.zeros((2, 1, 4)), top_rate=2.0)
    c1 = _counts(np.zeros((2, 2, 1, 4)), np.ones((2, 2)))
    c2 = _counts(np.zeros((2, 2, 1, 5)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="cannot be compared"):
        compare_lape(c1, c2)
    with pytest.raises(ValueError, match="texts_by_language"):
        compare_lape(tiny_model("gpt2"))
