"""Data: the bundled multilingual corpus and its loaders."""

from transferlens.data.corpus import (
    KINDS,
    LANGUAGES,
    SPLITS,
    TOPICS,
    corpus_manifest,
    load_corpus,
    load_corpus_long,
)

__all__ = [
    "KINDS",
    "LANGUAGES",
    "SPLITS",
    "TOPICS",
    "corpus_manifest",
    "load_corpus",
    "load_corpus_long",
]
