"""Latent language: word-pair mining, token sets, overlap filter, language mass."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

import transferlens.analysis.latent_language as ll
import transferlens.analysis.word_pairs as word_pairs
from transferlens.analysis.latent_language import (
    answer_token_ids,
    build_prompts,
    filter_overlapping,
    language_mass,
    latent_language,
    load_word_list,
    mine_word_pairs,
)
from transferlens.analysis.lens import encode_right_padded


def _corpus(rows):
    cols = ["id", "page", "topic", "kind", "split", "en", "sv", "de"]
    data = {c: [] for c in cols}
    for i, (kind, en, sv, de) in enumerate(rows):
        for c, v in zip(cols, [f"p#{i}", "p", "swriter", kind, "test", en, sv, de], strict=True):
            data[c].append(v)
    return datasets.Dataset.from_dict(data)


CORPUS = _corpus(
    [
        ("heading", "Table", "Tabell", "Tabelle"),
        ("heading", "Insert Cell", "Infoga cell", "Zelle einfügen"),
        (
            "paragraph",
            "This is a long sentence.",
            "Det här är en lång mening.",
            "Das ist ein Satz.",
        ),
        ("heading", "File", "Arkiv", "Datei"),
        ("heading", "Table", "Tabell", "Tabelle"),
        ("table_head", "Open:", "Öppna", "Öffnen"),
        ("heading", "Format - Cells", "Format - Celler", "Format - Zellen"),
        ("list_item", "Version 2", "Version 2", "Version 2"),
        ("heading", "Window", "Fönster", "Fenster"),
        ("heading", "Window", "Fönstret", "Fenster"),
        ("heading", "Window", "Fönster", "Fenster"),
    ]
)


# --------------------------------------------------------------------------- mining
def test_mining_counts_and_items():
    m = mine_word_pairs(CORPUS, ("en", "sv", "de"))
    # 11 entries; 2 too long in some language (the sentence, "Format - Cells" = 3 words);
    # "Version 2" has a digit -> 8 clean; unique by English text: Table, Insert Cell, File,
    # Open, Window -> 5, and Window keeps its most frequent translation
    assert m.counts == {"entries": 11, "short": 9, "clean": 8, "unique": 5}
    assert [it["en"] for it in m.items] == ["Table", "Insert Cell", "File", "Open", "Window"]
    assert m.items[3] == {"en": "Open", "sv": "Öppna", "de": "Öffnen"}  # ':' stripped
    assert m.items[4]["sv"] == "Fönster"
    for it in m.items:
        assert all(1 <= len(it[lang].split()) <= 2 for lang in ("en", "sv", "de"))


def test_mining_options_and_errors():
    m = mine_word_pairs(CORPUS, ("en", "sv"), kinds=["table_head"])
    assert m.items == [{"en": "Open", "sv": "Öppna"}]
    assert mine_word_pairs(CORPUS, ("en", "sv"), max_words=1).counts["unique"] == 4
    with pytest.raises(ValueError, match="no text column"):
        mine_word_pairs(CORPUS, ("en", "fi"))
    with pytest.raises(ValueError, match="two languages"):
        mine_word_pairs(CORPUS, ("en",))


def test_load_word_list(tmp_path):
    j = tmp_path / "w.jsonl"
    j.write_text(
        json.dumps({"en": "dog", "sv": "hund"})
        + "\n\n"
        + json.dumps({"en": "cat", "sv": "katt"})
        + "\n"
    )
    assert load_word_list(j) == [{"en": "dog", "sv": "hund"}, {"en": "cat", "sv": "katt"}]
    c = tmp_path / "w.csv"
    c.write_text("en,sv\ndog, hund\ncat,katt\n")
    assert load_word_list(c) == [{"en": "dog", "sv": "hund"}, {"en": "cat", "sv": "katt"}]
    with pytest.raises(FileNotFoundError):
        load_word_list(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_word_list(bad)
    bad.write_text('{"en": "dog", "sv": "hund"}\n{"en": ["dog"], "sv": "hund"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected an object of words like"):
        load_word_list(bad)
    latin = tmp_path / "w2.csv"
    latin.write_bytes("en,sv\nisland,ö\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"w2\.csv:2: not UTF-8 text \(byte 0xf6\)"):
        load_word_list(latin)


# --------------------------------------------------------------------------- token sets
class FakeTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


SP_VOCAB = {
    "▁T": 5,
    "T": 6,
    "Ta": 7,
    "▁Tab": 8,
    "abell": 9,
    "<0xC3>": 10,
    "▁Ö": 11,
    "x": 12,
    "▁t": 13,
    "Tabe": 14,
}


def test_answer_token_ids_sentencepiece_vocab():
    tok = FakeTokenizer(SP_VOCAB)
    # prefixes of "Tabell" with and without "▁": T, Ta, Tab(e)... -> ▁T, T, Ta, ▁Tab, Tabe
    assert answer_token_ids(tok, "Tabell") == [5, 6, 7, 8, 14]
    # non-ASCII first character: "▁Ö" prefix plus its first UTF-8 byte token
    assert answer_token_ids(tok, "Öppna") == [10, 11]
    assert answer_token_ids(tok, "table") == [13]
    assert answer_token_ids(tok, "zzz") == []


def test_answer_token_ids_byte_level_vocab():
    base = {c: 100 + b for b, c in word_pairs._byte_chars().items()}  # all 256 byte characters
    vocab = dict(base, **{"ĠT": 1, "Tab": 2, "ĠTabell": 3, "Ã¶": 4, "ĠÃ¶pp": 5})
    tok = FakeTokenizer(vocab)
    want = sorted({1, 2, 3, base["T"]})
    assert answer_token_ids(tok, "Tabell") == want
    # "ö" is two bytes: its character token, the space form, and the first byte (Ã) alone
    got = answer_token_ids(tok, "öppna")
    assert got == sorted({4, 5, base["Ã"]})
    assert base["Ö"] not in got  # the byte 0xD6 is not the character Ö


def test_answer_token_ids_real_tokenizer_contains_first_token(tiny_tok):
    space = tiny_tok(" ", add_special_tokens=False)["input_ids"]
    assert len(space) == 1
    for word in ("Tabell", "Celler", "öppna", "dialogrutan", "quick"):
        ids = answer_token_ids(tiny_tok, word)
        assert tiny_tok(word, add_special_tokens=False)["input_ids"][0] in ids
        first = tiny_tok(" " + word, add_special_tokens=False)["input_ids"][0]
        # a bare space token is shared by every word: it is never part of an answer set
        assert (first in ids) == (first != space[0])


def test_overlap_filter_drops_and_counts():
    tok = FakeTokenizer({"▁T": 1, "▁B": 2, "▁H": 3, "▁K": 4, "▁D": 5, "▁Q": 6})
    items = [
        {"en": "Table", "sv": "Tabell"},  # share ▁T -> overlap
        {"en": "Dog", "sv": "Hund"},  # ▁D vs ▁H -> kept
        {"en": "Bed", "sv": "Kudde"},  # kept
        {"en": "Zebra", "sv": "Häst"},  # Z has no token -> no_tokens
        {"en": "Queen"},  # missing sv
    ]
    kept, counts, sets = filter_overlapping(items, [tok], ["sv", "en"])
    assert kept == [1, 2]
    assert counts == {"items": 5, "overlap": 1, "no_tokens": 1, "missing_word": 1, "kept": 2}
    assert sets[0][0] == {"sv": [3], "en": [5]}


# --------------------------------------------------------------------------- mass
def test_language_mass_hand_example():
    probs = torch.tensor(
        [
            [[0.1, 0.2, 0.3, 0.4, 0.0], [0.5, 0.0, 0.0, 0.25, 0.25]],
            [[0.0, 0.0, 1.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]],
        ],
        dtype=torch.float64,
    )
    sets = [[0, 3], [4]]
    got = language_mass(probs, sets)
    want = torch.tensor([[0.5, 0.25], [0.0, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(got, want)


ITEMS = [
    {"en": "dog", "sv": "hund", "de": "Katze"},
    {"en": "cat", "sv": "katt", "de": "Hund"},
    {"en": "window", "sv": "fönster", "de": "Zimmer"},
    {"en": "open", "sv": "öppna", "de": "Zelle"},
    {"en": "file", "sv": "arkiv", "de": "Datei"},
    {"en": "table", "sv": "bord", "de": "Tisch"},
    {"en": "my", "sv": "min", "de": "Dokument"},
]


def test_latent_language_mass_with_controlled_lens(tiny, monkeypatch):
    """Lens distributions fixed by hand: 0.5 on a target-language token, 0.25 on an English
    one, the rest spread over tokens in no answer set -> P_sv = 0.5, P_en = 0.25, P_de = 0."""
    h = tiny("llama", n_layers=2, n_ctx=128)
    langs = ["sv", "en", "de"]
    kept, _, sets = filter_overlapping(ITEMS, [h.tokenizer], langs)
    prompts = build_prompts([ITEMS[i] for i in kept], "de", "sv", n_shots=2, seed=0)
    by_prompt = dict(zip(prompts, sets[0], strict=True))
    vocab = len(h.tokenizer)
    depth = h.n_layers + 1

    def fake_lens(handle, input_ids, attention_mask, check_final=True):
        out = torch.zeros(depth, input_ids.shape[0], vocab)
        for i in range(input_ids.shape[0]):
            n = int(attention_mask[i].sum())
            text = handle.tokenizer.decode(input_ids[i, 1:n])
            s = by_prompt[text]
            used = set(s["sv"]) | set(s["en"]) | set(s["de"])
            rest = [t for t in range(vocab) if t not in used]
            p = torch.zeros(vocab, dtype=torch.float64)
            p[s["sv"][0]] = 0.5
            p[s["en"][0]] = 0.25
            p[rest] = 0.25 / len(rest)
            out[:, i] = p.log().float()
        return out

    monkeypatch.setattr(ll, "lens_logits", fake_lens)
    res = latent_language(h, ITEMS, source="de", target="sv", n_shots=2, n_boot=50)
    assert res.data["n_items"] == len(kept)
    for rec in res.records:
        want = {"sv": 0.5, "en": 0.25, "de": 0.0}[rec["language"]]
        assert rec["value"] == pytest.approx(want, abs=1e-6), rec


def test_latent_language_last_layer_matches_model_softmax(tiny):
    h = tiny("llama", n_layers=2, n_ctx=128)
    res = latent_language(h, ITEMS, source="de", target="sv", n_shots=2, n_boot=50, seed=1)
    langs = res.config["languages"]
    assert langs == ["sv", "en", "de"]
    kept, counts, sets = filter_overlapping(ITEMS, [h.tokenizer], langs)
    assert res.data["filter"] == counts and res.data["n_items"] == len(kept)
    prompts = build_prompts([ITEMS[i] for i in kept], "de", "sv", n_shots=2, seed=1)
    enc = encode_right_padded(h.tokenizer, prompts)
    with torch.no_grad():
        logits = h.model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits
    last = enc["attention_mask"].sum(1) - 1
    p = torch.softmax(logits[torch.arange(len(prompts)), last].double(), -1)
    for lang in langs:
        want = np.mean([float(p[i, s[lang]].sum()) for i, s in enumerate(sets[0])])
        rec = res.where(model="base", language=lang, layer=h.n_layers - 1)[0]
        assert rec["value"] == pytest.approx(want, rel=1e-6)
        assert rec["n"] == len(kept)


def test_latent_language_two_models_and_determinism(tiny):
    base = tiny("gpt2", n_layers=2, n_ctx=128)
    adapted = tiny("gpt2", n_layers=2, n_ctx=128, seed=1)
    kw = dict(source="de", target="sv", adapted=adapted, n_shots=2, n_boot=50)
    a = latent_language(base, ITEMS, **kw)
    b = latent_language(base, ITEMS, **kw)
    assert a.records == b.records
    for rec in a.where(model="difference"):
        ba = a.where(model="base", language=rec["language"], layer=rec["layer"])[0]
        ad = a.where(model="adapted", language=rec["language"], layer=rec["layer"])[0]
        assert rec["value"] == pytest.approx(ad["value"] - ba["value"], abs=1e-12)


def test_overlapping_items_are_dropped_and_reported(tiny):
    h = tiny("llama", n_layers=2, n_ctx=128)
    items = ITEMS + [{"en": "Table", "sv": "Tabell", "de": "Tabelle"}] * 2
    res = latent_language(h, items, source="de", target="sv", n_shots=2, n_boot=20)
    _, counts, _ = filter_overlapping(items, [h.tokenizer], ["sv", "en", "de"])
    assert counts["overlap"] >= 2
    assert res.data["filter"]["overlap"] == counts["overlap"]
    assert res.data["n_items"] == counts["kept"]
    assert any(f"{counts['overlap']} items dropped" in n for n in res.notes)
    with pytest.raises(ValueError, match="survive the token-overlap filter"):
        latent_language(h, items[-2:], source="de", target="sv", n_shots=2)


def test_prompts_format_and_shots():
    prompts = build_prompts(ITEMS, "en", "sv", n_shots=3, seed=0)
    assert len(prompts) == len(ITEMS)
    for it, prompt in zip(ITEMS, prompts, strict=True):
        lines = prompt.split("\n")
        assert len(lines) == 4
        assert lines[-1] == f'English: "{it["en"]}" - Svenska: "'
        assert all(f'English: "{it["en"]}"' not in x for x in lines[:-1])  # query not a shot
        assert all(x.startswith('English: "') and ' - Svenska: "' in x for x in lines[:-1])
    assert prompts == build_prompts(ITEMS, "en", "sv", n_shots=3, seed=0)
    with pytest.raises(ValueError, match="n_shots"):
        build_prompts(ITEMS[:2], "en", "sv", n_shots=2)


def test_prompt_longer_than_context_is_refused(tiny):
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        latent_language(tiny("gpt2", n_layers=2), ITEMS, source="de", target="sv", n_shots=4)


def test_encoder_is_refused(tiny):
    with pytest.raises(ValueError, match="unembedding"):
        latent_language(tiny("bert"), ITEMS, source="de", target="sv")


@pytest.mark.slow
def test_mining_the_bundled_corpus():
    m = mine_word_pairs(languages=("en", "sv", "de"))
    assert m.counts["entries"] > m.counts["short"] >= m.counts["clean"] >= m.counts["unique"] > 500
    keys = [it["en"] for it in m.items]
    assert len(keys) == len(set(keys))
    for it in m.items:
        assert all(1 <= len(it[lang].split()) <= 2 for lang in ("en", "sv", "de"))
