"""analysis.behaviour: per-text NLL, bits per byte, fertility, label log-likelihood, unigram."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transferlens.analysis.behaviour import (
    bits_per_byte,
    encode_prompt_response,
    fertility,
    label_loglik_accuracy,
    majority_baseline,
    token_nll,
    unigram_nll,
)

TEXTS = [
    "Choose Format - Cells to open the dialog.",
    "Välj Format - Celler för att öppna dialogrutan.",
    "Inserts a new table.",
    "Wählen Sie Format - Zellen, um den Dialog zu öffnen. " * 3,
]


@pytest.fixture(scope="module")
def handle(tiny):
    return tiny("llama", n_layers=2)


def _reference_nll(model, ids):
    """Summed NLL of ids[1:] given the prefix, via the Hugging Face loss."""
    x = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss
    return float(loss) * (len(ids) - 1)


def test_token_nll_matches_the_hugging_face_loss(handle):
    tok = handle.tokenizer
    texts = TEXTS[:3]  # each fits the model's 64-token context (the next test covers windows)
    res = token_nll(handle, texts, batch_size=2)
    for i, text in enumerate(texts):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        assert res.n_tokens[i] == len(ids) - 1
        assert res.n_bytes[i] == len(text.encode("utf-8"))
        assert res.nll[i] == pytest.approx(_reference_nll(handle.model, ids), rel=1e-5)
    single = token_nll(handle, texts, batch_size=1)  # padding does not change anything
    np.testing.assert_allclose(single.nll, res.nll, rtol=1e-5)
    assert res.bits_per_byte == pytest.approx(res.nll.sum() / math.log(2) / res.n_bytes.sum())
    assert res.nats_per_token == pytest.approx(res.nll.sum() / res.n_tokens.sum())


def test_long_texts_are_scored_in_windows_each_token_once(handle):
    tok = handle.tokenizer
    text = TEXTS[3]
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    length = 8
    res = token_nll(handle, [text], max_length=length)
    assert res.n_tokens[0] == len(ids) - 1
    expected = sum(
        _reference_nll(handle.model, ids[s : s + length])
        for s in range(0, len(ids) - 1, length - 1)
        if len(ids[s : s + length]) > 1
    )
    assert res.nll[0] == pytest.approx(expected, rel=1e-5)


def test_bits_per_byte_formula_and_errors():
    assert bits_per_byte([math.log(2) * 8, 0.0], [4, 4]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no bytes"):
        bits_per_byte([1.0], [0])
    with pytest.raises(ValueError, match="pass n_bytes"):
        bits_per_byte([1.0])


def test_unigram_baseline_matches_a_hand_count(tiny_tok):
    train = TEXTS[:3]
    res = unigram_nll(tiny_tok, train, TEXTS[1:], alpha=0.5)
    counts = Counter(i for t in train for i in tiny_tok(t, add_special_tokens=False)["input_ids"])
    total, vocab = sum(counts.values()), len(tiny_tok)
    for k, text in enumerate(TEXTS[1:]):
        ids = tiny_tok(text, add_special_tokens=False)["input_ids"]
        want = -sum(math.log((counts[i] + 0.5) / (total + 0.5 * vocab)) for i in ids)
        assert res.nll[k] == pytest.approx(want)
        assert res.n_tokens[k] == len(ids)


def test_fertility_counts_tokens_per_word(tiny_tok):
    f = fertility(tiny_tok, TEXTS[:2])
    toks = [len(tiny_tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:2]]
    assert f.n_tokens.tolist() == toks
    assert f.n_words.tolist() == [8, 8]  # "-" counts as a word
    assert f.value == pytest.approx(sum(toks) / 16)


def test_encode_prompt_response_plain_and_chat(tiny_tok):
    p, r = encode_prompt_response(tiny_tok, "Text: hello\nModule:", "Calc")
    assert p[0] == tiny_tok.bos_token_id and r[-1] == tiny_tok.eos_token_id
    assert tiny_tok.decode(p + r[:-1], skip_special_tokens=True) == "Text: hello\nModule: Calc"
    import copy

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = (
        "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}"
        "<|eos|>{% endfor %}{% if add_generation_prompt %}<|bos|>assistant: "
        "{% endif %}"
    )
    p, r = encode_prompt_response(tok, "hi", "Calc")
    full = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Calc"}], tokenize=True
    )
    full = full["input_ids"] if hasattr(full, "keys") else full
    assert p + r == list(full)
    assert tok.decode(r) == "Calc<|eos|>"


def test_label_loglik_accuracy_scores_each_candidate(handle):
    tok = handle.tokenizer
    prompts = ["Text: cells\nModule:", "Text: slides\nModule:", "Text: formula\nModule:"]
    cands = ["Calc", "Impress", "Math"]
    res = label_loglik_accuracy(handle, prompts, cands, ["Calc", "Impress", "Math"], batch_size=2)
    for i, prompt in enumerate(prompts):
        for j, c in enumerate(cands):
            p, r = encode_prompt_response(tok, prompt, c)
            ids = p + r
            x = torch.tensor([ids])
            with torch.no_grad():
                logp = torch.log_softmax(handle.model(x).logits[0].double(), -1)
            want = sum(float(logp[t - 1, ids[t]]) for t in range(len(p), len(ids)))
            assert res.scores[i, j] == pytest.approx(want, rel=1e-4)
    assert res.predicted.tolist() == res.scores.argmax(1).tolist()
    assert res.accuracy == pytest.approx(np.mean(res.predicted == np.array([0, 1, 2])))
    mean = label_loglik_accuracy(handle, prompts, cands, [0, 1, 2], normalize="mean")
    assert mean.gold.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="gold answer 'Draw' of prompt 0 is not among"):
        label_loglik_accuracy(handle, prompts[:1], cands, ["Draw"])
    with pytest.raises(ValueError, match="one gold answer per prompt"):
        label_loglik_accuracy(handle, prompts, cands, [0])


def test_majority_baseline():
    label, correct = majority_baseline(["a", "b", "b"], ["b", "a", "b", "c"])
    assert label == "b" and correct.tolist() == [True, False, True, False]


def test_token_nll_needs_a_start_token(handle):
    tok = SimpleNamespace(bos_token_id=None, eos_token_id=None)
    with pytest.raises(ValueError, match="neither a bos nor an eos token"):
        token_nll(SimpleNamespace(model=handle.model, tokenizer=tok), ["x"])
    with pytest.raises(ValueError, match="no texts to score"):
        token_nll(handle, [])


def test_dpo_scores_both_responses_after_one_shared_prompt(tiny_tok):
    from transferlens.training.dpo import _encode

    prompt = "Choose Format - Cells to open the dialog and set the number format " * 3
    triple = {"prompt": prompt, "chosen": "Calc", "rejected": "Writer and Impress and Draw"}
    p, c = encode_prompt_response(tiny_tok, prompt, triple["chosen"])
    _, r = encode_prompt_response(tiny_tok, prompt, triple["rejected"])
    assert len(r) > len(c) + 2
    seq_len = len(p) // 2 + len(r)  # the prompt must be cut, more for the longer response
    items, truncated, dropped = _encode(tiny_tok, [triple, triple], seq_len)
    assert (truncated, dropped) == (2, 0)
    (pc, rc), (pr, rr) = items[0]
    assert pc == pr  # one prompt for both responses: the DPO comparison is after one context
    assert (rc, rr) == (c, r) and pc[0] == p[0] and pc[1:] == p[len(p) - len(pc) + 1 :]
    assert len(pr) + len(rr) == seq_len and len(pc) + len(rc) < seq_len
    items, truncated, dropped = _encode(tiny_tok, [triple], len(r) + 1)  # no prompt token left
    assert (items, truncated, dropped) == ([], 0, 1)
