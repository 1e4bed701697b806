"""Shared data for the capture tests."""

from __future__ import annotations

import pytest

TEXTS = [
    "Choose Format - Cells to open the dialog.",
    "Välj",
    "Inserts a new table into the document at the cursor position.",
    "Vælg Formater - Celler for at åbne dialogen.",
    "The quick brown fox",
]


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture
def records():
    langs = ["en", "sv", "en", "da", "en"]
    return [
        {"id": f"ex{i}", "language": lang, "text": t, "topic": "writer" if i % 2 else "calc"}
        for i, (t, lang) in enumerate(zip(TEXTS, langs, strict=True))
    ]
