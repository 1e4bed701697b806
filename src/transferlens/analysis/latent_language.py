"""Latent language of translation (Wendler et al. 2024, "Do Llamas Work in English?").

A few-shot word-translation prompt asks for the ``target``-language word of a ``source``-language
word::

    Deutsch: "Tabelle" - Svenska: "Tabell"
    Deutsch: "Zelle" - Svenska: "Cell"
    Deutsch: "Datei" - Svenska: "

At each depth ℓ the logit lens (:mod:`transferlens.analysis.lens`) gives a next-token
distribution at the last position, and the probability mass of a language is

    P_lang(ℓ) = Σ_{t ∈ T_lang} p_ℓ(t),

where ``T_lang`` holds the token ids of the answer word in that language: every vocabulary
token whose string is a character prefix of the word, with or without the leading space
marker, plus (for a word starting with a non-ASCII character) the token of its first UTF-8
byte where the vocabulary has one, as in the reference implementation. Items whose token sets
overlap between the languages compared are dropped (their mass cannot be attributed), and
counted.

Word pairs come from the bundled corpus's short aligned entries (:func:`mine_word_pairs`) or
from a user's list (:func:`load_word_list`).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.handle import ModelHandle
from ..results import AnalysisResult
from .lens import _percentile_ci, encode_right_padded, lens_logits, lens_sites, require_unembedding

__all__ = [
    "LANGUAGE_NAMES",
    "MinedPairs",
    "answer_token_ids",
    "build_prompts",
    "filter_overlapping",
    "language_mass",
    "latent_language",
    "load_word_list",
    "mine_word_pairs",
]

log = logging.getLogger(__name__)

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "sv": "Svenska",
    "da": "Dansk",
    "de": "Deutsch",
    "fi": "Suomi",
}

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
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f'{path}:{i}: expected an object like {{"en": ..., "sv": ...}}')
            items.append({str(k): str(v).strip() for k, v in obj.items() if v is not None})
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            delim = "\t" if path.suffix.lower() == ".tsv" else ","
            for row in csv.DictReader(f, delimiter=delim):
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


# --------------------------------------------------------------------------- prompts
def _line(lang: str, word: str, names: Mapping[str, str]) -> str:
    return f'{names.get(lang, lang)}: "{word}"'


def build_prompts(
    items: Sequence[Mapping[str, str]],
    source: str,
    target: str,
    *,
    n_shots: int = 4,
    seed: int = 0,
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Few-shot translation prompts, one per item, ending just after the opening quote.

    Each prompt holds ``n_shots`` solved examples drawn (with ``seed``) from the *other* items,
    then ``<Source>: "<word>" - <Target>: "``.
    """
    if n_shots < 0:
        raise ValueError(f"n_shots={n_shots} must be >= 0")
    if n_shots >= len(items):
        raise ValueError(
            f"{len(items)} items cannot give {n_shots} examples besides the query; "
            "lower n_shots or add items"
        )
    names = dict(LANGUAGE_NAMES, **(names or {}))
    rng = random.Random(seed)
    prompts = []
    for i, it in enumerate(items):
        others = [j for j in range(len(items)) if j != i]
        shots = rng.sample(others, n_shots)
        lines = [
            f"{_line(source, items[j][source], names)} - {_line(target, items[j][target], names)}"
            for j in shots
        ]
        lines.append(f'{_line(source, it[source], names)} - {names.get(target, target)}: "')
        prompts.append("\n".join(lines))
    return prompts


# --------------------------------------------------------------------------- mass
def language_mass(probs: torch.Tensor, token_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Probability mass on each item's token set, per depth.

    Args:
        probs: ``(depth, n_items, vocab)`` lens probabilities.
        token_sets: per item, the token ids of one language's answer.

    Returns:
        ``(depth, n_items)``: ``Σ_{t ∈ set_i} probs[:, i, t]``.
    """
    if probs.shape[1] != len(token_sets):
        raise ValueError(
            f"{probs.shape[1]} items of probabilities but {len(token_sets)} token sets"
        )
    out = torch.zeros(probs.shape[:2], dtype=probs.dtype, device=probs.device)
    for i, ids in enumerate(token_sets):
        if len(ids):
            out[:, i] = probs[:, i, torch.as_tensor(list(ids), device=probs.device)].sum(-1)
    return out


def _masses(
    handle: ModelHandle,
    prompts: Sequence[str],
    sets: Sequence[Mapping[str, Sequence[int]]],
    languages: Sequence[str],
    batch_size: int,
    check_final: bool,
) -> np.ndarray:
    """``(n_items, n_languages, depth)`` language masses for one model."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        enc = encode_right_padded(handle.tokenizer, batch)
        lens = lens_logits(handle, enc["input_ids"], enc["attention_mask"], check_final=check_final)
        probs = torch.softmax(lens.double(), dim=-1)
        sub = sets[start : start + len(batch)]
        m = torch.stack([language_mass(probs, [s[lang] for s in sub]) for lang in languages])
        out.append(m.permute(2, 0, 1).cpu().numpy())  # (b, K, D)
    return np.concatenate(out)


def latent_language(
    base: ModelHandle,
    items: Sequence[Mapping[str, str]] | MinedPairs,
    *,
    source: str,
    target: str,
    adapted: ModelHandle | None = None,
    latent: str = "en",
    n_shots: int = 4,
    batch_size: int = 8,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    check_final: bool = True,
) -> AnalysisResult:
    """Per-layer probability mass on the answer in the target, latent and source languages.

    Args:
        base: the base model (a decoder).
        items: word pairs (language -> word), e.g. ``mine_word_pairs(...).items``.
        source: language of the word to translate.
        target: language of the answer.
        adapted: the adapted model, measured on the same items and prompts.
        latent: the hypothesised latent language (English in Wendler et al.).
        n_shots: solved examples per prompt.
        batch_size: prompts per forward pass.
        n_boot: bootstrap resamples over items.
        ci: interval coverage.
        seed: seed for the few-shot examples and the bootstrap.
        check_final: see :func:`transferlens.analysis.lens.lens_logits`.

    Returns:
        :class:`AnalysisResult` (metric ``language_probability``) with records per ``model``
        (``base``, ``adapted``, ``difference`` = adapted − base, paired over items),
        ``language``, ``layer`` (-1 = ``embed``) and ``site``: mean mass over items, a
        percentile-bootstrap interval over items, and ``n`` items. ``data["filter"]`` counts
        the items dropped by the overlap filter.
    """
    if isinstance(items, MinedPairs):
        items = items.items
    if source == target:
        raise ValueError(f"source and target are both {source!r}; give two different languages")
    langs = list(dict.fromkeys([target, latent, source]))
    models: dict[str, ModelHandle] = {"base": base}
    if adapted is not None:
        models["adapted"] = adapted
    for h in models.values():
        require_unembedding(h)
        if h.tokenizer is None:
            raise ValueError(f"{h.name} has no tokenizer; load it with tokenizer=...")
    kept, counts, sets = filter_overlapping(items, [h.tokenizer for h in models.values()], langs)
    log.info(
        "latent language: %d of %d items survive the token-overlap filter",
        counts["kept"],
        counts["items"],
    )
    if len(kept) <= n_shots:
        raise ValueError(
            f"only {len(kept)} of {len(items)} items survive the token-overlap filter "
            f"({counts}); {n_shots + 1} are needed: add items or lower n_shots"
        )
    chosen = [dict(items[i]) for i in kept]
    prompts = build_prompts(chosen, source, target, n_shots=n_shots, seed=seed)
    masses = {
        role: _masses(h, prompts, sets[k], langs, batch_size, check_final)
        for k, (role, h) in enumerate(models.items())
    }
    notes = [
        f"{counts['overlap']} items dropped: answer token sets overlap between languages",
        f"{counts['no_tokens']} items dropped: a word has no prefix token in the vocabulary",
        f"{counts['missing_word']} items dropped: a language is missing",
    ]
    if "adapted" in masses and masses["adapted"].shape == masses["base"].shape:
        masses["difference"] = masses["adapted"] - masses["base"]
    elif "adapted" in masses:
        notes.append("models differ in depth: no paired difference reported")
    res = AnalysisResult(
        analysis="lens",
        name=f"latent_language_{source}_{target}",
        metric="language_probability",
        config={
            "source": source,
            "target": target,
            "latent": latent,
            "languages": langs,
            "n_shots": n_shots,
            "n_boot": n_boot,
            "ci": ci,
            "seed": seed,
            "position": "last",
            "token_set": "prefixes, with and without space marker",
        },
        models={r: h.fingerprint for r, h in models.items()},
        data={"n_items": len(chosen), "filter": counts, "example_prompt": prompts[0]},
        notes=notes,
    )
    for role, m in masses.items():
        h = models.get(role, base)
        low, high = _percentile_ci(m, n_boot=n_boot, ci=ci, seed=seed)
        mean = m.mean(axis=0)
        for k, lang in enumerate(langs):
            for j, site in enumerate(lens_sites(h)):
                res.add(
                    mean[k, j],
                    ci=(low[k, j], high[k, j]),
                    n=m.shape[0],
                    model=role,
                    language=lang,
                    layer=j - 1,
                    site=site,
                )
    return res
