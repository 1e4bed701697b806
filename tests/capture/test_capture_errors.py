"""Bad input gives one-line errors saying what is wrong and how to fix it; hooks and torch
state survive every failure."""

from __future__ import annotations

import logging

import pytest
import torch

from transferlens.capture import capture
from transferlens.models import count_hooks, tiny_model

LONG = " ".join(["Choose Format - Cells to open the dialog."] * 20)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(
    "sites, words",
    [
        ("resid_post.9", "layer 9 out of range 0..1"),
        ("bogus.1", "embed, resid_pre, resid_mid"),
        (["resid_post.0", "head.0.7"], "head 7 out of range"),
        ("embed.2", "takes no layer"),
        ([], "no sites"),
    ],
)
def test_unknown_sites_list_the_valid_ones(tiny, texts, sites, words):
    with pytest.raises(ValueError) as e:
        capture(tiny("gpt2"), texts, sites)
    assert words in _one_line(e)


@pytest.mark.parametrize("sites", ["resid_mid.0", "resid_mid", "head.0"])
def test_component_missing_from_family(tiny, texts, sites):
    with pytest.raises(ValueError) as e:
        capture(tiny("bert"), texts, sites)
    assert "not available for bert models; valid components: embed, resid_pre" in _one_line(e)


@pytest.mark.parametrize(
    "data, words",
    [
        ([], "the data is empty"),
        (["fine", ""], "example 1 has empty text"),
        (["fine", "   \n"], "example 1 has empty text"),
        ([{"id": "a", "text": "x"}, {"id": "b", "text": ""}], "example 'b' has empty text"),
        ([{"body": "x"}], "no text column 'text'"),
        ([{"text": 3}], "must hold a string"),
        ([{"words": []}], "has no words"),
        (42, "data must be a list"),
    ],
)
def test_bad_data(tiny, data, words):
    with pytest.raises(ValueError) as e:
        capture(tiny("gpt2"), data, "resid_post.0")
    assert words in _one_line(e)


@pytest.mark.parametrize("existed", [False, True])
def test_bad_data_leaves_no_store_folder_behind(tiny, tmp_path, existed):
    # the examples are checked in the pass before any activation is written: a folder made
    # for the store (with its parents) goes again; one that was there stays
    out = tmp_path / "new" / "deeper" / "store"
    if existed:
        out.mkdir(parents=True)
    with pytest.raises(ValueError, match="must hold a string"):
        capture(tiny("gpt2"), [{"text": "fine"}, {"text": 3}], "resid_post.0", out=out)
    assert out.exists() == existed
    assert (tmp_path / "new").exists() == existed
    if existed:
        assert list(out.iterdir()) == []


def test_empty_dataset(tiny):
    from datasets import Dataset

    with pytest.raises(ValueError, match="the data is empty"):
        capture(tiny("gpt2"), Dataset.from_dict({"text": []}), "resid_post.0")


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"select": "max"}, "unknown select 'max'"),
        ({"select": "mean", "unit": "sentence"}, "unknown unit"),
        ({"select": "all", "unit": "word"}, "takes no unit"),
        ({"padding_side": "middle"}, "padding_side must be"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"on_overflow": "ignore"}, "on_overflow must be"),
        ({"max_length": 65}, "exceeds the 64-token context"),
        ({"grad": True, "out": "somewhere"}, "use it with out=None"),
    ],
)
def test_bad_options(tiny, texts, kw, words):
    with pytest.raises(ValueError) as e:
        capture(tiny("gpt2"), texts, "resid_post.0", **kw)
    assert words in _one_line(e)


def test_text_longer_than_context_errors_or_truncates(tiny, texts, tmp_path, caplog):
    h = tiny("llama")
    data = [{"id": "long-one", "text": LONG}] + [{"id": i, "text": t} for i, t in enumerate(texts)]
    with pytest.raises(ValueError) as e:
        capture(h, data, "resid_post.0", on_overflow="error", out=tmp_path / "e")
    msg = _one_line(e)
    assert not list((tmp_path / "e").rglob("*"))  # nothing left behind
    assert "'long-one'" in msg and "64-token limit" in msg and "on_overflow='truncate'" in msg
    with caplog.at_level(logging.WARNING, logger="transferlens.capture"):
        st = capture(h, data, "resid_post.0", out=tmp_path / "s", select="all")
    assert "truncated" in caplog.text
    tok = st.manifest["tokenization"]
    assert tok["truncated"] == {"count": 1, "example_ids": ["long-one"]}
    assert any("truncated" in w for w in st.manifest["warnings"])
    ex = st.examples.set_index("example_id")
    assert ex.loc["long-one", "truncated"] and ex.loc["long-one", "n_tokens"] == 64
    assert (st.rows["example"] == 0).sum() == 63  # BOS excluded
    short = capture(h, data, "resid_post.0", select="all", max_length=10)
    assert short.rows.groupby("example").size().max() == 9
    assert short.manifest["tokenization"]["truncated"]["count"] >= 2


def test_hooks_removed_and_state_restored_after_exception(tiny_tok, texts):
    h = tiny_model("gpt2", tokenizer=tiny_tok)
    calls = {"n": 0}

    def fail_on_second(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom inside the forward pass")

    own = h.model.transformer.h[1].register_forward_hook(fail_on_second)
    h.model.train()
    before = count_hooks(h.model)
    grad, infer = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            capture(h, texts, "resid_post,attn_out,head.0", batch_size=2)
        assert count_hooks(h.model) == before
        assert h.model.training
        assert torch.is_grad_enabled() == grad and torch.is_inference_mode_enabled() == infer
    finally:
        own.remove()
    # still usable afterwards, and a clean run leaves no hook behind either
    capture(h, texts, "resid_post", batch_size=2)
    assert count_hooks(h.model) == before - 1


def test_pair_refuses_all_with_different_tokenizers(tiny, texts):
    from transferlens.capture import capture_pair
    from transferlens.models.tiny import tiny_tokenizer

    other = tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=400), seed=1)
    with pytest.raises(ValueError) as e:
        capture_pair(tiny("llama"), other, texts, "resid_post.0", select="all")
    msg = _one_line(e)
    assert "tokenizers differ" in msg and "first_subtoken" in msg


def test_float16_store_refuses_values_beyond_its_range(tiny_tok, texts, tmp_path):
    """'Massive activations' (≈ 1e5 in one residual coordinate, as in large models) would be
    stored as inf in float16: refused with the site and a dtype that holds them."""
    h = tiny_model("llama", tokenizer=tiny_tok)
    with torch.no_grad():
        h.model.model.embed_tokens.weight[:, 3] *= 5e5
    with pytest.raises(ValueError, match=r"resid_post.0: \d+ activation values reach .*bfloat16"):
        capture(h, texts, "resid_post.0", dtype="float16", out=tmp_path / "s")
    ok = capture(h, texts, "resid_post.0", dtype="bfloat16")
    assert torch.isfinite(ok.tensor("resid_post.0").float()).all()
