"""Shared fixtures: tiny random-init models built offline, once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

FAMILIES = ("gpt2", "llama", "gemma3")


@pytest.fixture(scope="session")
def tiny_tok():
    from transferlens.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny(tiny_tok):
    """``tiny(family, **kw)`` -> a fresh ModelHandle (cached per arguments; do not mutate
    its weights — build your own with ``transferlens.models.tiny_model`` for that)."""
    from transferlens.models import tiny_model

    cache = {}

    def make(family="llama", **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = tiny_model(family, tokenizer=tiny_tok, **kw)
        return cache[key]

    return make
