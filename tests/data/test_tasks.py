"""Probe task definitions and loaders: YAML files, JSONL, CoNLL-U, HF datasets, token labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transferlens.data.tasks import (
    ProbeTask,
    builtin_task_names,
    load_task,
    parse_conllu,
    token_labels,
)

PROBES = Path(__file__).resolve().parents[2] / "probes"


def _corpus_like():
    """A small in-memory dataset in the corpus's long layout."""
    from datasets import Dataset

    rows = {
        "id": ["p1", "p1", "p2", "p2", "p3"],
        "language": ["en", "sv", "en", "sv", "fi"],
        "text": [
            "Open the file.",
            "Öppna filen.",
            "Insert a table.",
            "Infoga en tabell.",
            "Avaa tiedosto.",
        ],
        "page": ["a", "a", "b", "b", "a"],
        "topic": ["swriter", "swriter", "scalc", "scalc", "swriter"],
        "kind": ["paragraph"] * 5,
        "split": ["test"] * 5,
    }
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------- task files


def test_builtin_tasks_load_with_their_fields():
    assert {"language_id", "topic", "word_initial", "position_bucket"} <= set(builtin_task_names())
    lang = load_task("language_id")
    assert (lang.level, lang.source, lang.label, lang.control) == (
        "example",
        "corpus",
        "language",
        "example",
    )
    assert lang.languages == ("en", "sv", "da", "de", "fi")
    topic = load_task(PROBES / "topic.yaml")
    assert topic.label == "topic" and "other" not in topic.options["topics"]
    wi, pb = load_task("word_initial"), load_task("position_bucket")
    assert (wi.level, wi.selection, wi.control) == ("token", "all", "token_type")
    assert pb.options["buckets"] == [1, 2, 4, 8, 16, 32, 64]
    assert ProbeTask.from_dict(lang.to_dict()).to_dict() == lang.to_dict()


def test_unknown_task_and_bad_files(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown probe task 'nope'; valid tasks are \[.*language_id"
    ):
        load_task("nope")
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlevel: example\nsource: corpus\nlabel: topic\nlable: typo\n")
    with pytest.raises(ValueError, match=r"unknown fields \['lable'\]"):
        load_task(bad)
    bad.write_text("name: x\nlevel: sentence\nsource: corpus\nlabel: topic\n")
    with pytest.raises(ValueError, match="level 'sentence' is not one of"):
        load_task(bad)
    bad.write_text("name: x\nlevel: example\nsource: jsonl\nlabel: y\n")
    with pytest.raises(ValueError, match="needs a path"):
        load_task(bad)
    bad.write_bytes("name: \u00e5r\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"bad\.yaml:1: not UTF-8 text \(byte 0xe5\)"):
        load_task(bad)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("languages: 5", "languages must be a list of language codes, not 5"),
        ("languages: [en, 5]", "languages must be a list of language codes"),
        ("options: [1, 2]", "options must be a mapping of option: value, not [1, 2]"),
        ("path: 5", "path must be a string (a file or folder), not 5"),
        ("label: [a, b]", "label must be a string, not ['a', 'b']"),
        ("name: 7", "name must be a string, not 7"),
        ("split: 3", "split must be a string, not 3"),
    ],
)
def test_task_file_with_a_wrong_type(tmp_path, line, expected):
    # each of these used to pass the definition check and fail later with a TypeError or an
    # AttributeError while reading the examples
    fields = {"name": "x", "level": "example", "source": "jsonl", "path": "d.jsonl"}
    fields["label"] = "label"
    key = line.split(":")[0]
    text = "".join(f"{k}: {v}\n" for k, v in fields.items() if k != key) + line + "\n"
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(ValueError) as info:
        load_task(tmp_path / "t.yaml")
    assert expected in str(info.value) and "t.yaml" in str(info.value)


def test_corpus_tasks_on_an_in_memory_dataset():
    ds = _corpus_like()
    lang = load_task("language_id")
    exs = list(lang.examples(data=ds, languages=["en", "sv"]))
    assert [e.label for e in exs] == ["en", "sv", "en", "sv"]
    assert [e.id for e in exs] == ["p1", "p1", "p2", "p2"]
    topic = load_task("topic")
    recs = topic.records(data=ds, limit=3)
    assert recs[2] == {"id": "p2", "language": "en", "text": "Insert a table.", "label": "scalc"}
    wi = load_task("word_initial")
    assert list(wi.examples(data=ds))[0].label is None


# ----------------------------------------------------------------------------- user formats


def test_jsonl_example_and_word_level(tmp_path):
    (tmp_path / "sent.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "good film", "label": "pos", "id": "a"},
                {"text": "bad film", "label": "neg"},
            ]
        )
        + "\n"
    )
    (tmp_path / "sent.yaml").write_text(
        "name: sentiment\nlevel: example\nsource: jsonl\npath: sent.jsonl\nlabel: label\nlanguages: [en]\n"
    )
    exs = list(load_task(tmp_path / "sent.yaml").examples())
    assert [(e.id, e.text, e.label, e.language) for e in exs] == [
        ("a", "good film", "pos", "en"),
        ("1", "bad film", "neg", "en"),
    ]
    (tmp_path / "ner.jsonl").write_text(
        json.dumps({"tokens": ["Ada", "Lovelace", "wrote"], "labels": ["B-PER", "I-PER", "O"]})
        + "\n"
    )
    task = ProbeTask(
        name="ner",
        level="word",
        source="jsonl",
        label="labels",
        path=str(tmp_path / "ner.jsonl"),
        selection="first_subtoken",
        control="word_type",
    )
    (ex,) = task.examples()
    assert ex.words == ("Ada", "Lovelace", "wrote") and ex.text == "Ada Lovelace wrote"
    assert ex.word_labels == ("B-PER", "I-PER", "O")
    assert ex.record()["labels"] == ["B-PER", "I-PER", "O"]
    (tmp_path / "broken.jsonl").write_text('{"text": "x", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        list(
            ProbeTask(
                name="b",
                level="example",
                source="jsonl",
                label="label",
                path=str(tmp_path / "broken.jsonl"),
            ).examples()
        )
    (tmp_path / "short.jsonl").write_text(
        json.dumps({"tokens": ["a", "b"], "labels": ["X"]}) + "\n"
    )
    with pytest.raises(ValueError, match="one label per word"):
        list(
            ProbeTask(
                name="s",
                level="word",
                source="jsonl",
                label="labels",
                path=str(tmp_path / "short.jsonl"),
            ).examples()
        )


CONLLU = """# sent_id = s1
# text = Vi går till stan.
1\tVi\tvi\tPRON\tPN\tCase=Nom|Number=Plur\t2\tnsubj\t_\t_
2\tgår\tgå\tVERB\tVB\tTense=Pres\t0\troot\t_\t_
3\ttill\ttill\tADP\tPP\t_\t4\tcase\t_\t_
4\tstan\tstad\tNOUN\tNN\tDefinite=Def|Number=Sing\t2\tobl\t_\tSpaceAfter=No
5\t.\t.\tPUNCT\tMAD\t_\t2\tpunct\t_\t_

# sent_id = s2
1-2\tzum\t_\t_\t_\t_\t_\t_\t_\t_
1\tzu\tzu\tADP\tAPPR\t_\t3\tcase\t_\t_
2\tdem\tder\tDET\tART\tCase=Dat|Number=Sing\t3\tdet\t_\t_
3\tHaus\tHaus\tNOUN\tNN\tNumber=Sing\t0\troot\t_\t_
3.1\tgeht\tgehen\tVERB\tVVFIN\t_\t_\t_\t0:root\t_
"""


@pytest.mark.parametrize(
    "multiword,expected", [("first", "ADP"), ("join", "ADP+DET"), ("skip", None)]
)
def test_conllu_multiword_tokens_and_empty_nodes(tmp_path, multiword, expected):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)
    s1, s2 = parse_conllu(path, multiword=multiword)
    assert s1["id"] == "s1" and s1["text"] == "Vi går till stan."
    assert s1["words"] == ["Vi", "går", "till", "stan", "."]
    assert s2["words"] == ["zum", "Haus"]  # surface forms; the empty node 3.1 is not a word
    task = ProbeTask(
        name="upos",
        level="word",
        source="conllu",
        label="upos",
        path=str(path),
        options={"multiword": multiword},
        languages=("sv",),
    )
    exs = list(task.examples())
    assert exs[0].word_labels == ("PRON", "VERB", "ADP", "NOUN", "PUNCT")
    assert exs[1].word_labels == (expected, "NOUN")
    assert exs[1].text == "zum Haus" and exs[0].language == "sv"


def test_conllu_other_columns_and_features(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)

    def get(label):
        task = ProbeTask(name="x", level="word", source="conllu", label=label, path=str(path))
        return [e.word_labels for e in task.examples()]

    assert get("deprel")[0] == ("nsubj", "root", "case", "obl", "punct")
    assert get("xpos")[0][0] == "PN"
    assert get("feats:Number") == [("Plur", None, None, "Sing", None), (None, "Sing")]
    with pytest.raises(ValueError, match="unknown CoNLL-U label"):
        get("misc_field")
    (tmp_path / "bad.conllu").write_text("1\tonly\tthree\n")
    with pytest.raises(ValueError, match=r"bad.conllu:1: a CoNLL-U word line has 10"):
        parse_conllu(tmp_path / "bad.conllu")


@pytest.mark.parametrize("word_id", ["x", "1-x", "1.x", "01", "0"])
def test_conllu_id_column_is_checked(tmp_path, word_id):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU.replace("3\ttill\t", f"{word_id}\ttill\t"))
    with pytest.raises(ValueError) as e:
        parse_conllu(path)
    assert str(e.value) == (
        f"{path}:5: the ID column must be a word number (3), a range (3-4) or an empty node "
        f"(3.1), not {word_id!r}"
    )


def test_conllu_empty_node_before_the_first_word_and_non_utf8(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text("0.1\tgeht\tgehen\tVERB\t_\t_\t_\t_\t0:root\t_\n" + CONLLU)
    assert parse_conllu(path)[0]["words"] == ["Vi", "går", "till", "stan", "."]
    path.write_bytes(CONLLU.encode("latin-1"))
    with pytest.raises(ValueError, match=r"t\.conllu:2: not UTF-8 text \(byte 0xe5\)"):
        parse_conllu(path)


def test_hf_dataset_from_local_folder_and_data_argument(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict(
        {
            "sentence": ["a b", "c d", "e f"],
            "topic": ["x", "y", "x"],
            "language": ["en", "en", "sv"],
        }
    )
    DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hfds"))
    task = ProbeTask(
        name="t",
        level="example",
        source="hf",
        label="topic",
        path=str(tmp_path / "hfds"),
        split="test",
        options={"text_field": "sentence"},
    )
    assert [(e.text, e.label, e.language) for e in task.examples()] == [
        ("a b", "x", "en"),
        ("c d", "y", "en"),
        ("e f", "x", "sv"),
    ]
    assert [e.label for e in task.examples(data=ds, languages=["sv"])] == ["x"]
    nosplit = ProbeTask(
        name="t", level="example", source="hf", label="topic", path=str(tmp_path / "hfds")
    )
    with pytest.raises(ValueError, match=r"choose a split among \['test'\]"):
        list(nosplit.examples())


# ----------------------------------------------------------------------------- token labels


@pytest.fixture(scope="module")
def bpe():
    """A tiny byte-level BPE tokenizer trained offline, with a BOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["the cat sat on the mat", "a probe reads the layer", "öppna filen i fönstret"] * 20
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    return tok


TEXT = "the  unbelievable cat, öppnade fönstret!"


def _check_word_initial(text, lab):
    words = text.split()
    assert lab.labels[0] is None and lab.word_ids[0] == -1  # BOS
    for w, word in enumerate(words):
        toks = np.flatnonzero(lab.word_ids == w)
        assert toks.size >= 1
        assert list(lab.labels[toks]) == ["initial"] + ["continuation"] * (toks.size - 1)
        pieces = "".join(text[s:e] for s, e in lab.offsets[toks]).strip()
        assert pieces == word
    assert sum(lab.labels[t] == "initial" for t in range(len(lab.labels))) == len(words)


def test_word_initial_labels_from_offsets(bpe):
    lab = token_labels(TEXT, bpe, "word_initial")
    assert len(lab.token_ids) > len(TEXT.split()) + 1  # words were split into several tokens
    _check_word_initial(TEXT, lab)


def test_word_initial_with_a_transformers_fast_tokenizer(bpe):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>")
    lab = token_labels(TEXT, fast, "word_initial")
    _check_word_initial(TEXT, lab)
    np.testing.assert_array_equal(lab.token_ids, token_labels(TEXT, bpe, "word_initial").token_ids)
    task = load_task("word_initial")
    np.testing.assert_array_equal(task.token_labels(TEXT, fast).labels, lab.labels)


def test_position_bucket_labels(bpe):
    text = " ".join(["cat"] * 40)
    lab = token_labels(text, bpe, "position_bucket", buckets=[1, 2, 4, 8, 16, 32])
    assert lab.labels[0] is None  # the BOS token
    expect = {1: "1", 2: "2-3", 3: "2-3", 4: "4-7", 7: "4-7", 8: "8-15", 31: "16-31", 32: "32+"}
    for t, name in expect.items():
        assert lab.labels[t] == name
    task_labels = load_task("position_bucket").token_labels(text, bpe).labels  # edges 1..64
    last = len(task_labels) - 1
    assert 32 <= last < 64 and task_labels[last] == "32-63"
    with pytest.raises(ValueError, match="increasing"):
        token_labels(text, bpe, "position_bucket", buckets=[4, 2])
    with pytest.raises(ValueError, match="unknown token label"):
        token_labels(text, bpe, "pos")


def _llama2_style_tokenizer():
    """SentencePiece-like (normaliser: prepend "▁", spaces to "▁"; BPE with no "▁(" piece):
    a text starting with "(" begins with a lone "▁" carrying the offsets of "("."""
    from tokenizers import Tokenizer, models, normalizers, processors

    vocab = {"<s>": 0, "<unk>": 1, "▁": 2}
    for c in "()abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
    merges = []
    for w in ("cat", "is", "big"):
        for prefix in ("▁", ""):
            cur = prefix + w[0] if prefix else w[0]
            if prefix:
                merges.append(("▁", w[0]))
                vocab.setdefault(cur, len(vocab))
            for c in w[1:]:
                merges.append((cur, c))
                cur += c
                vocab.setdefault(cur, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def test_token_labels_follow_captures_word_rule_for_a_lone_sentencepiece_marker():
    tok = _llama2_style_tokenizer()
    text = "(cat) is big  "
    enc = tok.encode(text)
    assert enc.tokens[:3] == ["<s>", "▁", "("] and enc.offsets[1] == enc.offsets[2]
    lab = token_labels(text, tok, "word_initial")
    assert lab.labels[1] is None and lab.word_ids[1] == -1  # the marker belongs to no word
    assert lab.labels[2] == "initial" and lab.word_ids[2] == 0  # "(" begins "(cat)"
    _check_word_initial(text, lab)
    pos = token_labels(text, tok, "position_bucket")
    assert [pos.labels[t] is None for t in range(len(pos.labels))] == [
        w < 0 for w in lab.word_ids
    ]  # special and whitespace-only tokens get no label here either


@pytest.mark.parametrize(
    "multiword,label,expected",
    [
        ("join", "feats:Case", "_+Dat"),  # zu (no Case) + dem (Case=Dat)
        ("join", "feats:Number", "_+Sing"),
        ("join", "feats:Tense", None),  # no part has it
        ("first", "feats:Case", None),  # zu's features
        ("skip", "feats:Case", None),
        ("skip", "lemma", None),  # was "_", a class of its own
        ("join", "lemma", "zu+der"),
    ],
)
def test_conllu_multiword_features_per_part(tmp_path, multiword, label, expected):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)
    task = ProbeTask(
        name="x",
        level="word",
        source="conllu",
        label=label,
        path=str(path),
        options={"multiword": multiword},
    )
    zum = list(task.examples())[1].word_labels[0]
    assert zum == expected
