"""Training data: corpus texts, the built-in tasks, and user JSONL files.

Built-in tasks come from the bundled parallel corpus (:func:`transferlens.data.load_corpus`),
``train`` split for training and ``test`` split for held-out evaluation (the corpus split has
no text on both sides):

- **translation**: prompt ``"English: <en>\\nSwedish:"``, response the Swedish paragraph;
- **topic**: prompt ``"Text: <paragraph>\\nModule:"``, response the help module's name
  (:data:`TOPIC_LABELS`; the catch-all ``other`` topic is left out);
- **preference pairs** (DPO): the translation prompt; chosen = the Swedish translation;
  rejected = in turn the Danish translation, the German translation (wrong language), or
  the Swedish text of another paragraph (mismatched).

Subsampling (``max_examples``) is a seeded shuffle, so the same seed picks the same rows.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

from ..jsonl import json_lines

__all__ = [
    "LANGUAGE_NAMES",
    "TOPIC_LABELS",
    "check_languages",
    "corpus_rows",
    "corpus_texts",
    "load_jsonl",
    "preference_pairs",
    "topic_prompt",
    "topic_task",
    "translation_task",
]

#: Language codes of the corpus and their English names (used in prompts).
LANGUAGE_NAMES = {"en": "English", "sv": "Swedish", "da": "Danish", "de": "German", "fi": "Finnish"}

#: Help module (corpus topic) -> the answer the topic task expects.
TOPIC_LABELS = {
    "shared": "General",
    "swriter": "Writer",
    "scalc": "Calc",
    "simpress": "Impress",
    "sdraw": "Draw",
    "smath": "Math",
    "schart": "Chart",
    "sbasic": "Basic",
}


def check_languages(languages: str | Sequence[str]) -> list[str]:
    """Validate language codes; one-line ValueError naming the unknown ones and the valid ones."""
    langs = [languages] if isinstance(languages, str) else list(languages)
    if not langs:
        raise ValueError(f"no language given; use some of {', '.join(LANGUAGE_NAMES)}")
    unknown = [lang for lang in langs if lang not in LANGUAGE_NAMES]
    if unknown:
        raise ValueError(
            f"unknown language {', '.join(map(repr, unknown))}; the corpus has "
            f"{', '.join(LANGUAGE_NAMES)}"
        )
    return langs


def _subsample(rows: list, max_examples: int | None, seed: int) -> list:
    if max_examples is None or len(rows) <= max_examples:
        return rows
    idx = sorted(random.Random(seed).sample(range(len(rows)), max_examples))
    return [rows[i] for i in idx]


def corpus_rows(
    languages: Sequence[str], split: str, *, topics: Sequence[str] | None = None, min_words: int = 0
) -> list[dict[str, str]]:
    """Rows of the corpus (wide layout) as plain dicts, non-empty in every language asked."""
    from ..data import load_corpus

    langs = check_languages(languages)
    ds = load_corpus(languages=langs, split=split, topics=topics, min_words=min_words)
    cols = ds.to_dict()
    rows = [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    return [r for r in rows if all(r[lang].strip() for lang in langs)]


def corpus_texts(
    languages: str | Sequence[str], split: str, *, max_texts: int | None = None, seed: int = 0
) -> dict[str, list[str]]:
    """Texts per language from one corpus split (``max_texts`` per language, seeded)."""
    langs = check_languages(languages)
    out = {}
    for lang in langs:
        rows = corpus_rows([lang], split)
        out[lang] = _subsample([r[lang] for r in rows], max_texts, seed)
    return out


def _clip_words(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def translation_task(
    split: str,
    *,
    source: str = "en",
    target: str = "sv",
    max_words: int = 30,
    max_examples: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Translation pairs ``{"prompt", "response"}`` from ``source`` into ``target``.

    Paragraphs longer than ``max_words`` words (in either language) are left out.
    """
    check_languages([source, target])
    if source == target:
        raise ValueError(f"source and target are both {source!r}; pick two languages")
    rows = corpus_rows([source, target], split)
    rows = [r for r in rows if max(len(r[source].split()), len(r[target].split())) <= max_words]
    src, tgt = LANGUAGE_NAMES[source], LANGUAGE_NAMES[target]
    out = [
        {"prompt": f"{src}: {r[source]}\n{tgt}:", "response": r[target], "id": r["id"]}
        for r in rows
        if r[source] != r[target]
    ]
    return _subsample(out, max_examples, seed)


def topic_prompt(text: str, max_words: int = 40) -> str:
    """The topic task's prompt for a paragraph (cut to its first ``max_words`` words); the
    expected response is the module's name in :data:`TOPIC_LABELS`."""
    return f"Text: {_clip_words(text, max_words)}\nModule:"


def topic_task(
    split: str,
    *,
    language: str = "en",
    topics: Sequence[str] | None = None,
    min_words: int = 4,
    max_words: int = 40,
    max_examples: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Topic classification ``{"prompt", "response", "label"}`` (response = module name).

    Paragraphs with fewer than ``min_words`` words are left out (headings like "Shadows"
    name no module); longer ones are cut to their first ``max_words`` words.

    Raises:
        ValueError: unknown language or topic.
    """
    check_languages([language])
    topics = list(topics) if topics is not None else list(TOPIC_LABELS)
    unknown = [t for t in topics if t not in TOPIC_LABELS]
    if unknown:
        raise ValueError(
            f"unknown topic {', '.join(map(repr, unknown))}; the topic task knows "
            f"{', '.join(TOPIC_LABELS)}"
        )
    rows = corpus_rows([language], split, topics=topics, min_words=min_words)
    out = [
        {
            "prompt": topic_prompt(r[language], max_words),
            "response": TOPIC_LABELS[r["topic"]],
            "label": r["topic"],
            "id": r["id"],
        }
        for r in rows
    ]
    return _subsample(out, max_examples, seed)


def preference_pairs(
    split: str,
    *,
    source: str = "en",
    target: str = "sv",
    wrong: Sequence[str] = ("da", "de"),
    max_words: int = 30,
    max_examples: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Preference triples ``{"prompt", "chosen", "rejected", "kind"}`` for DPO.

    Row ``i`` (in a seeded order) is rejected with ``wrong[i % 3]`` translations for
    ``i % 3 < len(wrong)`` and otherwise with the ``target`` text of the paragraph next to
    it in length (so that a summed log-probability cannot prefer the chosen text merely for
    being shorter); ``kind`` = ``wrong_language:<code>`` or ``mismatched``. Triples whose
    chosen and rejected texts are equal are left out.
    """
    langs = check_languages([source, target, *wrong])
    if target in wrong or source == target:
        raise ValueError("the target language must differ from the source and wrong languages")
    rows = corpus_rows(list(dict.fromkeys(langs)), split)
    rows = [r for r in rows if max(len(r[x].split()) for x in langs) <= max_words]
    rows = _subsample(rows, max_examples, seed) if max_examples else rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    by_length = sorted(range(len(rows)), key=lambda i: (len(rows[i][target]), i))
    rank = {i: k for k, i in enumerate(by_length)}
    src, tgt = LANGUAGE_NAMES[source], LANGUAGE_NAMES[target]
    out = []
    for j, i in enumerate(order):
        r = rows[i]
        slot = j % 3
        if slot < len(wrong):
            rejected, kind = r[wrong[slot]], f"wrong_language:{wrong[slot]}"
        else:
            k = rank[i] + 1 if rank[i] + 1 < len(rows) else rank[i] - 1
            rejected, kind = rows[by_length[max(k, 0)]][target], "mismatched"
        if rejected.strip() == r[target].strip():
            continue
        out.append(
            {
                "prompt": f"{src}: {r[source]}\n{tgt}:",
                "chosen": r[target],
                "rejected": rejected,
                "kind": kind,
                "id": r["id"],
            }
        )
    return out


def load_jsonl(path: str | os.PathLike, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Read a JSONL file of objects that each have string ``fields``.

    Blank lines are skipped; other keys are kept.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object, a missing or non-string field, or no
            examples at all (the message names the line).
    """
    out = []
    for n, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object with {', '.join(fields)}")
        for f in fields:
            if f not in obj:
                raise ValueError(f"{path}:{n}: missing field {f!r} (need {', '.join(fields)})")
            if not isinstance(obj[f], str) or not obj[f].strip():
                raise ValueError(f"{path}:{n}: field {f!r} must be a non-empty string")
        out.append(obj)
    if not out:
        raise ValueError(f"{path}: no examples (need JSON lines with {', '.join(fields)})")
    return out
