"""Paired capture: same batches, rows aligned per token (same tokenizer) or per
example/word (different tokenizers)."""

from __future__ import annotations

import numpy as np
import pytest

from transferlens.capture import ActivationStore, capture, capture_pair
from transferlens.models import tiny_model
from transferlens.models.tiny import tiny_tokenizer

KEYS = ["example", "word"]


@pytest.fixture(scope="module")
def extended():
    """An 'adapted' model whose tokenizer has a larger vocabulary (tokenises differently)."""
    tok = tiny_tokenizer(vocab_size=420)
    return tiny_model("llama", tokenizer=tok, seed=1)


def test_same_tokenizer_rows_match_single_captures(tiny, tiny_tok, texts):
    base = tiny("llama")
    adapted = tiny_model("llama", tokenizer=tiny_tok, seed=5)
    pair = capture_pair(base, adapted, texts, "resid_post", select="all", batch_size=2)
    for h, acts in ((base, pair.base), (adapted, pair.adapted)):
        single = capture(h, texts, "resid_post", select="all", batch_size=2)
        assert acts.rows.equals(single.rows)
        for s in single.sites:
            np.testing.assert_array_equal(acts.read(s), single.read(s))
    assert pair.alignment["same_tokenizer"] is True
    assert pair.alignment["other"]["fingerprint"] == adapted.fingerprint
    assert not np.allclose(pair.base.read("resid_post.1"), pair.adapted.read("resid_post.1"))


@pytest.mark.parametrize("select", ["last", "mean", "all", "first_subtoken"])
def test_same_tokenizer_different_contexts_read_the_same_tokens(tiny_tok, select):
    """A context-extended adapted model with the base tokenizer: both read the text cut at
    the shorter context, so rows stay token for token (they were other tokens, NaN rows or
    an IndexError)."""
    short = tiny_model("llama", tokenizer=tiny_tok, n_ctx=16, seed=0)
    long = tiny_model("llama", tokenizer=tiny_tok, n_ctx=64, seed=1)
    texts = [
        "Inserts a new table into the document at the cursor position. Choose Format - Cells.",
        "The quick brown fox",
    ]
    assert max(len(tiny_tok(t)["input_ids"]) for t in texts) > 16
    unit = "word" if select == "first_subtoken" else None
    for a, b in ((short, long), (long, short)):
        pair = capture_pair(a, b, texts, "resid_post.0", select=select, unit=unit)
        cols = ["example", "position", "token_id", "word"]
        cols = [c for c in cols if c in pair.base.rows]
        assert pair.base.rows[cols].equals(pair.adapted.rows[cols])
        assert pair.base.rows["position"].max() < 16
        for acts in (pair.base, pair.adapted):
            assert np.isfinite(np.asarray(acts.read("resid_post.0"))).all()
        # each equals its model's own capture cut at 16 tokens
        single = capture(b, texts, "resid_post.0", select=select, unit=unit, max_length=16)
        np.testing.assert_allclose(
            np.asarray(pair.adapted.read("resid_post.0")),
            np.asarray(single.read("resid_post.0")),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize(
    "select, unit", [("mean", None), ("last", None), ("first_subtoken", None), ("mean", "word")]
)
def test_different_tokenizers_align_examples_and_words(
    tiny, texts, extended, select, unit, tmp_path
):
    base = tiny("llama")
    ids_b = [base.tokenizer(t)["input_ids"] for t in texts]
    ids_a = [extended.tokenizer(t)["input_ids"] for t in texts]
    assert ids_b != ids_a  # the tokenisations really differ
    pair = capture_pair(
        base,
        extended,
        texts,
        "resid_post.1",
        select=select,
        unit=unit,
        out=tmp_path / "p",
        batch_size=3,
    )
    assert isinstance(pair.base, ActivationStore)
    assert (tmp_path / "p" / "base" / "manifest.json").exists()
    rb, ra = pair.base.rows, pair.adapted.rows
    assert rb[KEYS].values.tolist() == ra[KEYS].values.tolist()
    per_word = select == "first_subtoken" or unit == "word"
    n_words = sum(len(t.split()) for t in texts)
    assert len(rb) == (n_words if per_word else len(texts))
    # each side's rows are exactly what a single capture of that model gives
    for h, acts in ((base, pair.base), (extended, pair.adapted)):
        single = capture(h, texts, "resid_post.1", select=select, unit=unit, batch_size=3)
        np.testing.assert_allclose(
            np.asarray(acts.read("resid_post.1")), single.read("resid_post.1"), atol=1e-6, rtol=0
        )
    al = pair.alignment
    assert al["same_tokenizer"] is False and al["role"] == "base"
    assert pair.adapted.manifest["alignment"]["role"] == "adapted"
    assert al["dropped_words"] == 0


def test_truncation_drops_words_from_both_stores(tiny, extended):
    base = tiny("llama")
    texts = [
        "Choose Format Cells to open the dialog and then the table",
        "Välj Format Celler för att öppna dialogrutan nu",
    ]
    pair = capture_pair(
        base, extended, texts, "resid_post.0", select="first_subtoken", max_length=8
    )
    rb, ra = pair.base.rows, pair.adapted.rows
    assert rb[KEYS].values.tolist() == ra[KEYS].values.tolist()
    single_b = capture(base, texts, "resid_post.0", select="first_subtoken", max_length=8)
    single_a = capture(extended, texts, "resid_post.0", select="first_subtoken", max_length=8)
    kb = set(map(tuple, single_b.rows[KEYS].values.tolist()))
    ka = set(map(tuple, single_a.rows[KEYS].values.tolist()))
    assert kb != ka  # the two truncations cut different words
    assert set(map(tuple, rb[KEYS].values.tolist())) == kb & ka
    assert pair.alignment["dropped_words"] == len(kb ^ ka)
    # the kept rows are the single captures' rows for the same words
    sel = [i for i, k in enumerate(single_b.rows[KEYS].values.tolist()) if tuple(k) in ka]
    np.testing.assert_allclose(
        pair.base.read("resid_post.0"), single_b.read("resid_post.0")[sel], atol=1e-6, rtol=0
    )


def test_pair_store_resumes_and_is_reused(tiny, texts, extended, tmp_path, monkeypatch):
    base = tiny("llama")
    first = capture_pair(base, extended, texts, "resid_post.0", select="mean", out=tmp_path / "p")

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr("transferlens.capture.engine.CaptureEngine.run", boom)
    again = capture_pair(base, extended, texts, "resid_post.0", select="mean", out=tmp_path / "p")
    np.testing.assert_array_equal(
        np.asarray(again.adapted.read("resid_post.0")),
        np.asarray(first.adapted.read("resid_post.0")),
    )
