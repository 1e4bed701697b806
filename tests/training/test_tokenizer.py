"""BPE training and vocabulary extension."""

from __future__ import annotations

import json

import pytest
import torch

from transferlens.analysis.behaviour import fertility
from transferlens.training import extend_vocabulary, train_bpe


@pytest.fixture(scope="module")
def en_tok(texts):
    return train_bpe(texts.train["en"], 400)


def test_train_bpe_specials_roundtrip_and_determinism(texts):
    tok = train_bpe(texts.train["en"][:100], 350)
    assert len(tok) == 350
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    text = texts.held["en"][0]
    ids = tok(text)["input_ids"]
    assert ids[0] == 0
    assert tok.decode(ids, skip_special_tokens=True) == text
    again = train_bpe(texts.train["en"][:100], 350)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    with pytest.raises(ValueError, match="no texts to train the tokenizer on"):
        train_bpe(["", ""], 350)


def _tiny_lm(vocab, tie=True, seed=0):
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_extension_adds_merges_and_initialises_embeddings_from_pieces(en_tok, texts, tie):
    model = _tiny_lm(len(en_tok), tie=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    sv = texts.train["sv"]
    new_tok, info = extend_vocabulary(en_tok, model, sv, 60)
    assert info["n_new"] == 60 and info["new_size"] == len(en_tok) + 60 == len(new_tok)
    old_doc = json.loads(en_tok.backend_tokenizer.to_str())["model"]
    new_doc = json.loads(new_tok.backend_tokenizer.to_str())["model"]
    # old merges keep their ranks; the new ones come after them
    assert new_doc["merges"][: len(old_doc["merges"])] == old_doc["merges"]
    assert len(new_doc["merges"]) == len(old_doc["merges"]) + 60
    added = {t: i for t, i in new_doc["vocab"].items() if t not in old_doc["vocab"]}
    assert sorted(added.values()) == list(range(len(en_tok), len(en_tok) + 60))
    # the model grew and each new row is the mean of its pieces' rows under the old tokenizer
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    assert emb.shape[0] == len(new_tok)
    checked = 0
    for token, row in added.items():
        text = new_tok.convert_tokens_to_string([token])
        if "\ufffd" in text:
            continue  # a partial UTF-8 sequence has no text form to re-tokenise
        pieces = en_tok(text, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(emb[row], old_in[pieces].mean(0))
        if not tie:
            torch.testing.assert_close(out[row], old_out[pieces].mean(0))
        checked += 1
    assert checked >= 40
    torch.testing.assert_close(emb[: len(en_tok)], old_in)  # old rows untouched
    # Swedish text round-trips and needs fewer tokens
    for t in texts.held["sv"]:
        assert new_tok.decode(new_tok(t, add_special_tokens=False)["input_ids"]) == t
    assert fertility(new_tok, texts.held["sv"]).value < fertility(en_tok, texts.held["sv"]).value
    with torch.no_grad():
        model(torch.tensor([new_tok(texts.held["sv"][0])["input_ids"]]))


def test_extension_rejects_other_tokenizers_and_bad_input(en_tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wl = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=wl)
    with pytest.raises(ValueError, match="byte-level BPE tokenizers only"):
        extend_vocabulary(word_level, _tiny_lm(8), ["a a"], 3)
    with pytest.raises(ValueError, match="n_new must be >= 1"):
        extend_vocabulary(en_tok, _tiny_lm(len(en_tok)), ["hej"], 0)
    with pytest.raises(ValueError, match="no target-language texts"):
        extend_vocabulary(en_tok, _tiny_lm(len(en_tok)), [""], 5)
