"""The bundled parallel corpus: LibreOffice help paragraphs in five languages.

The corpus ships as package data (``corpus.jsonl.gz``, built by ``scripts/build_corpus.py``
from Debian's ``libreoffice-help-*`` packages, MPL-2.0; see ``CORPUS_LICENSE.txt``). Each
entry is one help paragraph aligned across English, Swedish, Danish, German and Finnish, with
the help module as topic, the paragraph kind (heading, list item, table cell, ...) and a
deterministic train/test split in which no text (in any language) occurs on both sides.

Example:
    >>> from transferlens.data import load_corpus, load_corpus_long
    >>> wide = load_corpus(languages=["en", "sv"], split="test", topics=["scalc"])
    >>> wide.column_names
    ['id', 'page', 'topic', 'kind', 'split', 'en', 'sv']
    >>> long = load_corpus_long(languages=["sv"], split="train", min_words=5)
    >>> long.column_names
    ['id', 'language', 'text', 'page', 'topic', 'kind', 'split']
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from transferlens.data.helpparse import KINDS, LANGUAGES, TOPICS

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "LANGUAGES",
    "TOPICS",
    "KINDS",
    "SPLITS",
    "CORPUS_FILE",
    "load_corpus",
    "load_corpus_long",
    "corpus_manifest",
]

SPLITS: tuple[str, ...] = ("train", "test")
CORPUS_FILE = "corpus.jsonl.gz"
MANIFEST_FILE = "corpus_sources.json"
_META_COLUMNS = ("id", "page", "topic", "kind", "split")


def _data_file(name: str) -> Any:
    path = resources.files("transferlens.data").joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled corpus file {name!r} is missing from the transferlens package; "
            "reinstall transferlens or rebuild it with scripts/build_corpus.py"
        )
    return path


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict[str, str], ...]:
    with _data_file(CORPUS_FILE).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def corpus_manifest() -> dict[str, Any]:
    """Provenance of the bundled corpus.

    Returns:
        The build manifest: Debian package names, versions and checksums, counts at each
        cleaning stage, per topic/kind/split counts and the language-check pass rates.
    """
    return json.loads(_data_file(MANIFEST_FILE).read_text(encoding="utf-8"))


def _as_choice(
    value: str | Iterable[str] | None, valid: Sequence[str], what: str
) -> tuple[str, ...]:
    if value is None:
        return tuple(valid)
    chosen = (value,) if isinstance(value, str) else tuple(value)
    if not chosen:
        raise ValueError(f"{what} is empty; pass None for all or some of {list(valid)}")
    unknown = [v for v in chosen if v not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid {what} are {list(valid)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{what} {list(chosen)} repeats an entry; list each one once")
    return chosen


def _select(
    languages: str | Iterable[str] | None,
    split: str | None,
    topics: str | Iterable[str] | None,
    min_words: int,
) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    langs = _as_choice(languages, LANGUAGES, "languages")
    wanted_topics = _as_choice(topics, TOPICS, "topics")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 0:
        raise ValueError(f"min_words must be a non-negative int, got {min_words!r}")

    rows = list(_records())
    filters = [
        (f"split={split!r}", lambda r: split is None or r["split"] == split),
        (f"topics={list(wanted_topics)}", lambda r: r["topic"] in wanted_topics),
        (
            f"min_words={min_words} (on {list(langs)})",
            lambda r: all(len(r[lang].split()) >= min_words for lang in langs),
        ),
    ]
    applied: list[str] = []
    for name, keep in filters:
        rows = [r for r in rows if keep(r)]
        if not rows:
            before = f" after {', '.join(applied)}" if applied else ""
            raise ValueError(f"no corpus rows left: filter {name} removed all rows{before}")
        applied.append(name)
    return langs, rows


def load_corpus(
    languages: str | Sequence[str] | None = None,
    split: str | None = None,
    topics: str | Sequence[str] | None = None,
    min_words: int = 0,
) -> Dataset:
    """Load the bundled parallel corpus, one row per aligned paragraph (wide layout).

    Args:
        languages: Language codes to include as text columns, in this order (default all of
            :data:`LANGUAGES`: ``en, sv, da, de, fi``). A single code may be passed as a str.
        split: ``"train"``, ``"test"`` or None for both. Training uses ``"train"``;
            analyses default to ``"test"``.
        topics: Help modules to keep (default all of :data:`TOPICS`).
        min_words: Keep rows whose text has at least this many whitespace-separated words in
            every requested language.

    Returns:
        A ``datasets.Dataset`` with string columns ``id`` (stable, ``"<page>#<paragraph id>"``),
        ``page``, ``topic``, ``kind``, ``split`` and one column per requested language.

    Raises:
        ValueError: For an unknown language or topic, a bad split or ``min_words``, or when a
            filter leaves no rows (the message names the filter).
        FileNotFoundError: If the packaged corpus file is missing.
    """
    from datasets import Dataset, Features, Value

    langs, rows = _select(languages, split, topics, min_words)
    columns = (*_META_COLUMNS, *langs)
    features = Features({name: Value("string") for name in columns})
    return Dataset.from_dict({c: [r[c] for r in rows] for c in columns}, features=features)


def load_corpus_long(
    languages: str | Sequence[str] | None = None,
    split: str | None = None,
    topics: str | Sequence[str] | None = None,
    min_words: int = 0,
) -> Dataset:
    """Load the corpus with one row per (paragraph, language) (long layout).

    Selects exactly the paragraphs :func:`load_corpus` selects with the same arguments and
    lists each paragraph's languages in the requested order, paragraph by paragraph.

    Args:
        languages: Language codes to include (default all of :data:`LANGUAGES`).
        split: ``"train"``, ``"test"`` or None for both.
        topics: Help modules to keep (default all of :data:`TOPICS`).
        min_words: Minimum word count, required in every requested language.

    Returns:
        A ``datasets.Dataset`` with string columns ``id``, ``language``, ``text``, ``page``,
        ``topic``, ``kind`` and ``split``.

    Raises:
        ValueError: As for :func:`load_corpus`.
        FileNotFoundError: If the packaged corpus file is missing.
    """
    from datasets import Dataset, Features, Value

    langs, rows = _select(languages, split, topics, min_words)
    columns = ("id", "language", "text", "page", "topic", "kind", "split")
    data: dict[str, list[str]] = {c: [] for c in columns}
    for row in rows:
        for lang in langs:
            data["id"].append(row["id"])
            data["language"].append(lang)
            data["text"].append(row[lang])
            for meta in ("page", "topic", "kind", "split"):
                data[meta].append(row[meta])
    features = Features({name: Value("string") for name in columns})
    return Dataset.from_dict(data, features=features)
