"""Translation word pairs and their answer tokens, for the latent-language analysis
(:mod:`transferlens.analysis.latent_language`).

Word pairs come from the bundled corpus's short aligned entries (:func:`mine_word_pairs`) or
from a user's list (:func:`load_word_list`). A word's token set (:func:`answer_token_ids`)
holds every vocabulary token whose string is a character prefix of the word, with or without
the leading space marker, plus (for a word starting with a non-ASCII character) the token of
its first UTF-8 byte where the vocabulary has one; :func:`filter_overlapping` drops the items
whose token sets overlap between languages, and counts them.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jsonl import json_lines, read_utf8

__all__ = [
    "MinedPairs",
    "answer_token_ids",
    "filter_overlapping",
    "load_word_list",
    "mine_word_pairs",
]

_WORD = re.compile(r"^[^\W\d_]+(?:[-'’][^\W\d_]+)*$")
_STRIP = ".,:;!?()[]\"'«»“”„…"


# --------------------------------------------------------------------------- word pairs
@dataclass
class MinedPairs:
    """Aligned short entries mined from the corpus.

    Attributes:
        items: one dict per entry, language code -> word(s).
        languages: the languages every item has.
        counts: how many entries survived each step: ``entries`` (scanned), ``short``
            (1..max_words words in every language), ``clean`` (letters only), ``unique``
            (after de-duplication: one translation per source text).
    """

    items: list[dict[str, str]]
    languages: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)


def _clean(text: str | None, max_words: int) -> str | None:
    if text is None:
        return None
    words = [w.strip(_STRIP) for w in str(text).split()]
    words = [w for w in words if w]
    if not 1 <= len(words) <= max_words:
        return None
    if not all(_WORD.match(w) for w in words):
        return ""
    return " ".join(words)


def mine_word_pairs(
    corpus: Any = None,
    languages: Sequence[str] = ("en", "sv", "de"),
    *,
    max_words: int = 2,
    kinds: Sequence[str] | None = None,
    split: str | None = None,
    key_language: str | None = None,
) -> MinedPairs:
    """Mine word pairs from short aligned corpus entries (headings, menu and command names).

    An entry qualifies when its text has 1..``max_words`` words in *every* language and each
    word is made of letters (inner hyphens and apostrophes allowed; surrounding punctuation is
    stripped). Duplicates are collapsed, and a source text with several translations keeps
    its most frequent one (the first seen on ties).

    Args:
        corpus: a ``datasets.Dataset`` in the wide layout (columns ``kind`` and one text
            column per language); default ``transferlens.data.load_corpus(split=split)``.
        languages: language codes every item must have.
        max_words: most words per entry.
        kinds: keep only these entry kinds (e.g. ``("heading", "table_head")``); default all.
        split: corpus split, when the corpus is loaded here.
        key_language: the language whose text identifies an item (default the first).

    Returns:
        :class:`MinedPairs` with the survivors and the counts per step.
    """
    languages = tuple(languages)
    if len(languages) < 2:
        raise ValueError("give at least two languages to mine word pairs for")
    if corpus is None:
        from ..data import load_corpus

        corpus = load_corpus(languages=list(languages), split=split)
    cols = set(getattr(corpus, "column_names", None) or [])
    missing = [lang for lang in languages if lang not in cols]
    if missing:
        raise ValueError(
            f"the corpus has no text column for {missing}; its columns are {sorted(cols)}"
        )
    key = key_language or languages[0]
    if key not in languages:
        raise ValueError(f"key_language {key!r} is not one of {list(languages)}")
    if kinds is not None and "kind" not in cols:
        raise ValueError("kinds= was given but the corpus has no 'kind' column")
    kindset = set(kinds) if kinds is not None else None
    counts: Counter = Counter()
    variants: dict[str, Counter] = {}
    first: dict[tuple[str, ...], int] = {}
    columns = {lang: list(corpus[lang]) for lang in languages}
    kind_col = list(corpus["kind"]) if kindset is not None else None
    for n in range(len(corpus)):
        counts["entries"] += 1
        if kind_col is not None and kind_col[n] not in kindset:  # type: ignore[operator]
            continue
        texts = [_clean(columns[lang][n], max_words) for lang in languages]
        if any(t is None for t in texts):
            continue
        counts["short"] += 1
        if any(t == "" for t in texts):
            continue
        counts["clean"] += 1
        tup = tuple(texts)  # type: ignore[arg-type]
        variants.setdefault(tup[languages.index(key)], Counter())[tup] += 1
        first.setdefault(tup, n)
    items = []
    for _, c in sorted(variants.items(), key=lambda kv: min(first[t] for t in kv[1])):
        best = max(c.items(), key=lambda kv: (kv[1], -first[kv[0]]))[0]
        items.append(dict(zip(languages, best, strict=True)))
    counts["unique"] = len(items)
    for step in ("entries", "short", "clean"):
        counts.setdefault(step, 0)
    return MinedPairs(items=items, languages=languages, counts=dict(counts))


def load_word_list(path: str | Path) -> list[dict[str, str]]:
    """Read a word list: JSONL (one ``{"en": ..., "sv": ...}`` object per line) or CSV
    (a header row of language codes).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable line, or a file with no items.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such word-list file")
    items: list[dict[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for i, obj in json_lines(path, "word-list file"):
            bad = not isinstance(obj, dict) or any(
                not isinstance(v, str) for v in obj.values() if v is not None
            )
            if bad:
                raise ValueError(
                    f'{path}:{i}: expected an object of words like {{"en": "house", "sv": "hus"}}'
                )
            items.append({str(k): v.strip() for k, v in obj.items() if v is not None})
    elif path.suffix.lower() in (".csv", ".tsv"):
        text = read_utf8(path, "word-list file")
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        for row in csv.DictReader(io.StringIO(text, newline=""), delimiter=delim):
            items.append({k.strip(): (v or "").strip() for k, v in row.items() if k})
    else:
        raise ValueError(f"{path}: word lists are .jsonl or .csv/.tsv files")
    if not items:
        raise ValueError(f"{path}: the word list holds no items")
    return items


# --------------------------------------------------------------------------- token sets
_BYTE_CHARS: dict[int, str] | None = None


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE vocabularies)."""
    global _BYTE_CHARS
    if _BYTE_CHARS is None:
        bs = (
            list(range(ord("!"), ord("~") + 1))
            + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1))
        )
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_CHARS = {b: chr(c) for b, c in zip(bs, cs, strict=True)}
    return _BYTE_CHARS


def _is_byte_level(vocab: Mapping[str, int]) -> bool:
    """True for a byte-level BPE vocabulary (all 256 byte characters are tokens)."""
    return all(c in vocab for c in _byte_chars().values())


def _vocab_form(s: str, byte_level: bool) -> str:
    """How ``s`` is spelled in the vocabulary: bytes as characters (byte-level BPE, space =
    ``Ġ``) or SentencePiece (space = ``▁``)."""
    if byte_level:
        table = _byte_chars()
        return "".join(table[b] for b in s.encode("utf-8"))
    return s.replace(" ", "▁")


def answer_token_ids(
    tokenizer: Any, word: str, *, vocab: Mapping[str, int] | None = None
) -> list[int]:
    """Token ids whose string is a prefix of ``word``, with or without the leading space.

    Every character prefix ``p`` of ``word`` is looked up as ``p`` and as ``" " + p`` in the
    vocabulary, spelled as the vocabulary spells it: byte-level BPE (bytes as characters,
    space = ``Ġ``; detected by all 256 byte characters being tokens) or SentencePiece
    (space = ``▁``). For a word whose first character is not ASCII, the token of its first
    UTF-8 byte is added where the vocabulary has one (``<0xC3>`` in SentencePiece byte
    fallback; the byte character, with and without ``Ġ``, in byte-level BPE), following the
    reference implementation.

    Args:
        tokenizer: a Hugging Face tokenizer.
        word: the answer word (may hold a space, e.g. two-word entries).
        vocab: ``tokenizer.get_vocab()``, to avoid rebuilding it per word.

    Returns:
        Sorted unique token ids (empty when the vocabulary has none of the forms).
    """
    if not word:
        raise ValueError("empty answer word")
    vocab = vocab if vocab is not None else tokenizer.get_vocab()
    byte_level = _is_byte_level(vocab)
    forms: set[str] = set()
    for i in range(1, len(word) + 1):
        p = word[:i]
        forms.add(_vocab_form(p, byte_level))
        forms.add(_vocab_form(" " + p, byte_level))
    first = word[0].encode("utf-8")
    if len(first) > 1:
        if byte_level:
            c = _byte_chars()[first[0]]
            forms |= {c, _byte_chars()[ord(" ")] + c}
        else:
            forms.add(f"<0x{first[0]:02X}>")
    return sorted({int(vocab[f]) for f in forms if f in vocab})


def filter_overlapping(
    items: Sequence[Mapping[str, str]],
    tokenizers: Sequence[Any],
    languages: Sequence[str],
) -> tuple[list[int], dict[str, int], list[list[dict[str, list[int]]]]]:
    """Keep items whose answer token sets are non-empty and pairwise disjoint.

    Args:
        items: language -> word dicts.
        tokenizers: every tokenizer the items will be measured with (an item must pass for all).
        languages: the languages compared.

    Returns:
        ``(kept indices, counts, token sets)``: counts has ``items``, ``missing_word``,
        ``no_tokens``, ``overlap`` and ``kept``; token sets are, per tokenizer, per kept item,
        language -> ids.
    """
    vocabs = [t.get_vocab() for t in tokenizers]
    counts = Counter({"items": len(items)})
    kept: list[int] = []
    sets: list[list[dict[str, list[int]]]] = [[] for _ in tokenizers]
    for i, it in enumerate(items):
        if any(not it.get(lang) for lang in languages):
            counts["missing_word"] += 1
            continue
        per_tok = [
            {lang: answer_token_ids(tok, it[lang], vocab=v) for lang in languages}
            for tok, v in zip(tokenizers, vocabs, strict=True)
        ]
        if any(not ids for s in per_tok for ids in s.values()):
            counts["no_tokens"] += 1
            continue
        clash = any(
            set(s[a]) & set(s[b])
            for s in per_tok
            for ai, a in enumerate(languages)
            for b in languages[ai + 1 :]
        )
        if clash:
            counts["overlap"] += 1
            continue
        kept.append(i)
        for k, s in enumerate(per_tok):
            sets[k].append(s)
    counts["kept"] = len(kept)
    for k in ("missing_word", "no_tokens", "overlap"):
        counts.setdefault(k, 0)
    return kept, dict(counts), sets
