"""Selections against a reference built from plain Hugging Face hidden states, and
independence of batching and padding side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlens.capture import capture
from transferlens.models import tiny_model

FAMILIES = ("gpt2", "llama", "gemma3")
SELECTS = ("all", "last", "mean", "first_subtoken")
SITES = ["embed", "resid_post.0", "resid_post.1"]


def _hidden_alone(handle, text):
    """HF hidden states of one example run alone (no padding, no hooks):
    embed = hidden_states[0], resid_post.l = hidden_states[l + 1] below the last layer."""
    enc = handle.tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        hs = handle.model(input_ids=ids, output_hidden_states=True).hidden_states
    acts = {
        "embed": hs[0][0].numpy(),
        "resid_post.0": hs[1][0].numpy(),
        "resid_post.1": hs[2][0].numpy(),
    }
    return enc["input_ids"], enc["offset_mapping"], acts


def _reference(handle, texts, select):
    """Rows of each selection, built with Python loops from the definitions."""
    special = set(handle.tokenizer.all_special_ids)
    rows = {s: [] for s in SITES}
    meta = []
    for i, text in enumerate(texts):
        ids, offsets, acts = _hidden_alone(handle, text)
        real = [p for p, t in enumerate(ids) if t not in special]
        if select == "all":
            picks = [(p, None) for p in real]  # words of "all" rows: test_word_unit_...
        elif select == "last":
            picks = [(real[-1], -1)]
        elif select == "mean":
            picks = [(None, -1)]
        else:
            picks, start = [], 0
            for w, word in enumerate(text.split()):
                ws = text.index(word, start)
                we = start = ws + len(word)
                for p in real:
                    s, e = offsets[p]
                    if s < we and e > ws and text[max(s, ws) : min(e, we)].strip():
                        picks.append((p, w))
                        break
        for p, w in picks:
            for s in SITES:
                rows[s].append(acts[s][real].mean(0) if p is None else acts[s][p])
            meta.append((i, -1 if p is None else p, w))
    return {s: np.stack(v) for s, v in rows.items()}, meta


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("select", SELECTS)
def test_selection_matches_reference_and_padding(tiny, texts, family, select):
    h = tiny(family, n_layers=3)
    ref, ref_meta = _reference(h, texts, select)
    alone = capture(h, texts, SITES, select=select, batch_size=1)
    for side in ("right", "left"):
        got = capture(h, texts, SITES, select=select, batch_size=len(texts), padding_side=side)
        rows = got.rows
        got_meta = list(zip(rows["example"], rows["position"], rows["word"], strict=True))
        if select == "all":
            got_meta = [(e, p, None) for e, p, _ in got_meta]
        assert got_meta == ref_meta
        for s in SITES:
            a = got.read(s)
            assert a.shape == ref[s].shape
            np.testing.assert_allclose(a, ref[s], atol=2e-5, rtol=0)
            np.testing.assert_allclose(a, alone.read(s), atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_leak_with_specials_kept(tiny, texts, family):
    """exclude_special=False keeps BOS; padding still never enters means or rows."""
    h = tiny(family, n_layers=3)
    ref = []
    for text in texts:
        _, _, acts = _hidden_alone(h, text)
        ref.append(acts["resid_post.1"].mean(0))
    for side in ("right", "left"):
        got = capture(
            h,
            texts,
            "resid_post.1",
            select="mean",
            exclude_special=False,
            batch_size=len(texts),
            padding_side=side,
        )
        np.testing.assert_allclose(got.read("resid_post.1"), np.stack(ref), atol=2e-5, rtol=0)
        allrows = capture(
            h,
            texts,
            "resid_post.1",
            select="all",
            exclude_special=False,
            batch_size=len(texts),
            padding_side=side,
        )
        n_tokens = sum(len(h.tokenizer(t)["input_ids"]) for t in texts)
        assert allrows.n_rows == n_tokens
        assert (allrows.rows["position"] >= 0).all()


def test_word_unit_mean_and_last(tiny, texts):
    h = tiny("llama")
    first = capture(h, texts, "resid_post.0", select="first_subtoken")
    last = capture(h, texts, "resid_post.0", select="last", unit="word")
    mean = capture(h, texts, "resid_post.0", select="mean", unit="word")
    allt = capture(h, texts, "resid_post.0", select="all")
    keys = ["example", "word"]
    assert first.rows[keys].values.tolist() == last.rows[keys].values.tolist()
    assert first.rows[keys].values.tolist() == mean.rows[keys].values.tolist()
    a, rows = allt.read("resid_post.0"), allt.rows
    n_words = sum(len(t.split()) for t in texts)
    assert first.n_rows == n_words
    for j, (ex, w) in enumerate(first.rows[keys].values.tolist()):
        sel = ((rows["example"] == ex) & (rows["word"] == w)).to_numpy()
        np.testing.assert_allclose(first.read("resid_post.0")[j], a[sel][0], atol=1e-6)
        np.testing.assert_allclose(last.read("resid_post.0")[j], a[sel][-1], atol=1e-6)
        np.testing.assert_allclose(mean.read("resid_post.0")[j], a[sel].mean(0), atol=1e-5)


def test_storage_dtypes(tiny, texts):
    h = tiny("gpt2")
    f32 = capture(h, texts, "resid_post.1", select="all")
    for dt, tdt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        got = capture(h, texts, "resid_post.1", select="all", dtype=dt)
        want = f32.tensor("resid_post.1").to(tdt)
        assert got.tensor("resid_post.1").dtype == tdt
        assert torch.equal(got.tensor("resid_post.1"), want)
        np.testing.assert_array_equal(got.read("resid_post.1"), want.float().numpy())


def test_grad_mode_keeps_graph_and_restores_state(tiny_tok, texts):
    h = tiny_model("llama", tokenizer=tiny_tok)
    assert torch.is_grad_enabled()
    got = capture(h, texts[:2], "resid_post.0", select="mean", grad=True)
    t = got.tensor("resid_post.0")
    assert t.requires_grad
    t.sum().backward()
    assert h.model.model.embed_tokens.weight.grad is not None
    plain = capture(h, texts[:2], "resid_post.0", select="mean")
    assert not plain.tensor("resid_post.0").requires_grad
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with torch.no_grad():
        capture(h, texts[:2], "resid_post.0", select="mean")
        assert not torch.is_grad_enabled()


def test_head_sites_sum_to_attn_out_through_a_store(tiny, texts, tmp_path):
    h = tiny("llama")  # no attention output bias: the heads sum to attn_out
    st = capture(h, texts, "head.1,attn_out.1", select="all", out=tmp_path / "s")
    heads = np.asarray(st.read("head.1"))
    assert heads.shape == (st.n_rows, h.sitemap.n_heads, h.sitemap.d_model)
    np.testing.assert_allclose(heads.sum(1), np.asarray(st.read("attn_out.1")), atol=1e-5)
    one = capture(h, texts, "head.1.2", select="all").read("head.1.2")
    np.testing.assert_allclose(one, heads[:, 2], atol=1e-6)


def test_whitespace_tokens_belong_to_no_word_whatever_their_offsets():
    """Word of each token by the rules in docs/capture.md, on the offsets real tokenizers give."""
    from transferlens.capture.tokens import word_of_tokens

    # SentencePiece (Metaspace, byte fallback): the prepended lone "▁" is given the offsets of
    # the first character, "Ö", which byte fallback spells in the next two tokens
    text = "Öppna dialogen"
    spans = np.array([[0, 5], [6, 14]])
    offsets = np.array([[0, 1], [0, 1], [0, 1], [1, 3], [3, 5], [5, 12], [12, 14]])
    pieces = ["▁", "<0xC3>", "<0x96>", "pp", "na", "▁dialog", "en"]
    special = np.zeros(7, dtype=bool)
    words = word_of_tokens(offsets, spans, special, text, pieces)
    assert words.tolist() == [-1, 0, 0, 0, 0, 1, 1]
    # Llama-3-style pre-tokeniser: ".\n" is one token; it ends the word "dialog." as "." would
    text = "Open the dialog.\nNext"
    spans = np.array([[0, 4], [5, 8], [9, 16], [17, 21]])
    offsets = np.array([[0, 4], [4, 8], [8, 15], [15, 17], [17, 21]])
    pieces = ["Open", "Ġthe", "Ġdialog", ".Ċ", "Next"]
    words = word_of_tokens(offsets, spans, np.zeros(5, dtype=bool), text, pieces)
    assert words.tolist() == [0, 1, 2, 2, 3]
    # tokens of whitespace only, by their text (double space, newline)
    text = "a  b\n"
    offsets = np.array([[0, 1], [1, 3], [3, 4], [4, 5]])
    words = word_of_tokens(offsets, np.array([[0, 1], [3, 4]]), np.zeros(4, dtype=bool), text)
    assert words.tolist() == [0, -1, 1, -1]


def test_a_word_cut_by_left_truncation_is_not_covered(tiny_tok):
    import copy

    from transferlens.capture.inputs import Example
    from transferlens.capture.tokens import encode

    tok = copy.deepcopy(tiny_tok)
    tok.truncation_side = "left"  # a user's tokenizer may cut from the left
    text = "Inserts a new table into the document at the cursor position."
    spans, pos = [], 0
    for w in text.split():
        start = text.index(w, pos)
        spans.append((start, start + len(w)))
        pos = start + len(w)
    ex = Example(index=0, id=0, text=text, language=None, word_spans=tuple(spans))
    enc = encode(tok, [ex], max_len=12, truncate=True, need_words=True)[0]
    ref = tok(text, truncation=True, max_length=12, return_offsets_mapping=True)
    begin = min(a for a, b in ref["offset_mapping"] if b > a)
    cut = [k for k, (a, b) in enumerate(spans) if a < begin < b]
    assert cut, "the cut falls inside a word here (e.g. 'document' kept as 'ument')"
    assert not enc.covered[cut[0]]  # was covered: its first sub-token was a word's middle
    assert enc.covered[[k for k, (a, b) in enumerate(spans) if a >= begin]].all()
    assert not enc.covered[[k for k, (a, b) in enumerate(spans) if b <= begin]].any()
