"""Input kinds: texts, records (list of dicts, datasets.Dataset), word lists with labels."""

from __future__ import annotations

import numpy as np

from transferlens.capture import ExampleSource, capture
from transferlens.capture.tokens import tokenizer_hash

WORD_DATA = [
    {
        "words": ["Choose", "Format", "-", "Cells"],
        "upos": ["VERB", "NOUN", "PUNCT", "NOUN"],
        "language": "en",
        "sentence": "s1",
    },
    {"words": ["Välj", "Celler"], "upos": ["VERB", "NOUN"], "language": "sv", "sentence": "s2"},
]


def test_word_lists_carry_word_labels(tiny):
    h = tiny("gpt2")
    got = capture(h, WORD_DATA, "resid_post.1", select="first_subtoken")
    rows = got.rows
    assert rows["upos"].tolist() == ["VERB", "NOUN", "PUNCT", "NOUN", "VERB", "NOUN"]
    assert rows["word"].tolist() == [0, 1, 2, 3, 0, 1]
    assert rows["language"].tolist() == ["en"] * 4 + ["sv"] * 2
    assert rows["sentence"].tolist() == ["s1"] * 4 + ["s2"] * 2
    # the words are read from the text "Choose Format - Cells": same rows as that text
    texts = [" ".join(d["words"]) for d in WORD_DATA]
    plain = capture(h, texts, "resid_post.1", select="first_subtoken")
    np.testing.assert_array_equal(got.read("resid_post.1"), plain.read("resid_post.1"))
    assert got.rows["position"].tolist() == plain.rows["position"].tolist()


def test_records_list_and_dataset_agree(tiny, records):
    from datasets import Dataset

    h = tiny("llama")
    a = capture(h, records, "resid_post.0", select="last")
    b = capture(h, Dataset.from_list(records), "resid_post.0", select="last")
    assert a.rows.equals(b.rows)
    np.testing.assert_array_equal(a.read("resid_post.0"), b.read("resid_post.0"))
    assert a.rows["example_id"].tolist() == [r["id"] for r in records]
    assert a.rows["topic"].tolist() == [r["topic"] for r in records]
    assert a.manifest["data"]["sha256"] == b.manifest["data"]["sha256"]


def test_label_columns_and_custom_text_column(tiny, records):
    data = [
        {"body": r["text"], "lang": r["language"], "topic": r["topic"], "n": i}
        for i, r in enumerate(records)
    ]
    got = capture(
        tiny("gpt2"),
        data,
        "resid_post.0",
        select="mean",
        text_column="body",
        language_column="lang",
        label_columns=["topic"],
    )
    rows = got.rows
    assert "n" not in rows.columns and rows["topic"].tolist() == [r["topic"] for r in records]
    assert rows["language"].tolist() == [r["language"] for r in records]
    assert rows["example_id"].tolist() == list(range(len(records)))


def test_example_source_is_lazy_over_a_dataset(records):
    from datasets import Dataset

    src = ExampleSource(Dataset.from_list(records))
    assert len(src) == 5 and src.kind == "records"
    ex = src.batch(3, 5)
    assert [e.index for e in ex] == [3, 4] and ex[0].id == "ex3"
    assert ex[0].word_spans[0] == (0, len(records[3]["text"].split()[0]))


def test_tokenizer_hash_ignores_per_call_truncation(tiny_tok):
    before = tokenizer_hash(tiny_tok)
    tiny_tok(["a long text " * 20], truncation=True, max_length=5)
    assert tokenizer_hash(tiny_tok) == before
    from transferlens.models.tiny import tiny_tokenizer

    assert tokenizer_hash(tiny_tokenizer(vocab_size=400)) != before


def test_label_columns_named_like_row_fields_are_prefixed(tiny):
    data = [{"text": "Välj Format", "position": "top", "word": "w"}]
    rows = capture(tiny("gpt2"), data, "resid_post.0", select="last").rows
    assert rows["label_position"].tolist() == ["top"] and rows["label_word"].tolist() == ["w"]
    assert rows["position"].tolist() == [
        len(tiny("gpt2").tokenizer("Välj Format")["input_ids"]) - 1
    ]
