"""The paragraphs a comparison is measured on: one deterministic sample, shared by stages."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .config import CompareConfig

__all__ = ["LAYER_NOTE", "Sample", "sample_paragraphs"]

#: How the representation and lens figures number layers (patching and weight figures count
#: blocks from 0, as the module names do).
LAYER_NOTE = "Layer 0 is the embeddings, layer l the residual stream after the l-th block."


@dataclass
class Sample:
    """Parallel paragraphs: ``texts[lang][i]`` is paragraph ``ids[i]`` in ``lang``.

    Attributes:
        ids: paragraph ids (the bootstrap units).
        topics: help-module topic of each paragraph.
        texts: language -> list of texts, aligned with ``ids``.
        split: corpus split.
    """

    ids: list[str]
    topics: list[str]
    texts: dict[str, list[str]]
    split: str

    def key(self) -> str:
        """A short hash of which paragraphs (and languages) these are."""
        doc = json.dumps([self.split, list(self.texts), [str(i) for i in self.ids]])
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"{len(self.ids)} parallel paragraphs of the bundled LibreOffice-help corpus "
            f"({self.split} split) in {', '.join(self.texts)}"
        )


def sample_paragraphs(cfg: CompareConfig, min_words: int = 3) -> Sample:
    """Draw ``cfg.max_examples`` paragraphs (seeded) with at least ``min_words`` words in every
    corpus language — whichever languages are requested, so that a language's numbers from
    runs with different ``--languages`` are on the same paragraphs."""
    from ..data import load_corpus
    from ..training.datasets import LANGUAGE_NAMES

    ds = load_corpus(languages=list(LANGUAGE_NAMES), split=cfg.split, min_words=min_words)
    n = min(cfg.max_examples, len(ds))
    rng = np.random.default_rng(cfg.seed)
    rows = sorted(rng.choice(len(ds), size=n, replace=False).tolist())
    sub = ds.select(rows)
    return Sample(
        ids=list(sub["id"]),
        topics=list(sub["topic"]),
        texts={lang: list(sub[lang]) for lang in cfg.languages},
        split=cfg.split,
    )
