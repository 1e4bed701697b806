"""What a capture reads: plain texts, records with a text column, or word lists.

:class:`ExampleSource` wraps the user's data without copying it and hands out
:class:`Example` objects a batch at a time, so a large ``datasets.Dataset`` is never
materialised as Python objects. Three input kinds are recognised:

- ``texts``: a sequence of strings; the id of an example is its index.
- ``records``: a ``datasets.Dataset`` or a sequence of dicts with a text column and optional
  id, language and label columns (the corpus long layout: ``id, language, text, topic, ...``).
  Every other scalar column is carried as an example-level label unless ``label_columns``
  names the ones to keep.
- ``words``: records whose words column (``words`` or ``tokens`` by default) holds a list of
  words; the text is the words joined by single spaces, and columns holding one value per
  word (``labels``, ``upos``, ...) are word labels.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Example", "ExampleSource"]

_WORD_RE = re.compile(r"\S+")
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Example:
    """One example to capture.

    Attributes:
        index: position in the data (0-based); rows refer to examples by this index.
        id: the example's id (the id column, or the index).
        text: the text the model reads.
        language: language code, or None.
        labels: example-level labels (column -> value).
        word_spans: character spans ``(start, end)`` of the example's words.
        word_labels: per-word labels (column -> one value per word).
    """

    index: int
    id: Any
    text: str
    language: str | None
    labels: dict[str, Any] = field(default_factory=dict)
    word_spans: tuple[tuple[int, int], ...] = ()
    word_labels: dict[str, list[Any]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Plain-JSON form written to the store's ``examples.jsonl``."""
        return {
            "index": self.index,
            "id": self.id,
            "language": self.language,
            "labels": self.labels,
            "text": self.text,
            "word_spans": [list(s) for s in self.word_spans],
            "word_labels": self.word_labels,
        }


def _is_scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS) or (
        hasattr(value, "item") and getattr(value, "ndim", 1) == 0
    )


def _jsonable(value: Any, where: str) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if not isinstance(value, _SCALARS):
        raise ValueError(f"{where}: value {value!r} is not a string, number or bool")
    return value


class ExampleSource:
    """Lazy, indexed access to the examples of ``data``.

    Args:
        data: list of strings, ``datasets.Dataset``, or sequence of dicts.
        text_column: column holding the text (records).
        id_column: column holding the example id (optional).
        language_column: column holding the language code (optional).
        label_columns: example-level label columns to keep; None keeps every other scalar
            column.
        words_column: column holding a list of words; None looks for ``words`` or ``tokens``.
        word_label_columns: per-word label columns; None keeps every list column with one
            value per word.

    Raises:
        ValueError: empty data, a missing text column, or data of an unknown shape.
    """

    def __init__(
        self,
        data: Any,
        *,
        text_column: str = "text",
        id_column: str = "id",
        language_column: str = "language",
        label_columns: Sequence[str] | None = None,
        words_column: str | None = None,
        word_label_columns: Sequence[str] | None = None,
    ):
        if isinstance(data, (str, bytes)) or not hasattr(data, "__len__"):
            raise ValueError(
                "data must be a list of strings, a list of dicts or a datasets.Dataset, "
                f"not {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError("no examples to capture: the data is empty")
        self.data = data
        self.text_column = text_column
        self.id_column = id_column
        self.language_column = language_column
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.word_label_columns = (
            list(word_label_columns) if word_label_columns is not None else None
        )
        self._is_dataset = hasattr(data, "column_names") and hasattr(data, "select")
        first = self._raw(0, 1)[0]
        if isinstance(first, str):
            self.kind = "texts"
            self.columns: list[str] = []
            self.words_column = None
        elif isinstance(first, dict):
            self.columns = list(first)
            wc = words_column or next(
                (c for c in ("words", "tokens") if isinstance(first.get(c), (list, tuple))), None
            )
            if words_column is not None and words_column not in first:
                raise ValueError(
                    f"data has no words column {words_column!r}; columns: {', '.join(first)}"
                )
            self.words_column = wc
            if wc is not None:
                self.kind = "words"
            elif text_column in first:
                self.kind = "records"
            else:
                raise ValueError(
                    f"data has no text column {text_column!r} (columns: {', '.join(first)}); "
                    "pass text_column= or give a 'words' column with a list of words"
                )
        else:
            raise ValueError(
                "each example must be a string or a dict with a text column, "
                f"not {type(first).__name__}"
            )

    def __len__(self) -> int:
        return len(self.data)

    # ------------------------------------------------------------------ raw access
    def _raw(self, start: int, stop: int) -> list[Any]:
        if self._is_dataset:
            cols = self.data[start:stop]
            n = len(next(iter(cols.values()))) if cols else 0
            return [{k: v[i] for k, v in cols.items()} for i in range(n)]
        return [self.data[i] for i in range(start, stop)]

    def batch(self, start: int, stop: int) -> list[Example]:
        """Examples ``start..stop-1`` (validated)."""
        return [self._example(start + i, raw) for i, raw in enumerate(self._raw(start, stop))]

    def _example(self, index: int, raw: Any) -> Example:
        if self.kind == "texts":
            if not isinstance(raw, str):
                raise ValueError(f"example {index}: expected a string, got {type(raw).__name__}")
            return self._checked(Example(index=index, id=index, text=raw, language=None))
        if not isinstance(raw, dict):
            raise ValueError(f"example {index}: expected a dict, got {type(raw).__name__}")
        ex_id = _jsonable(raw.get(self.id_column, index), f"example {index} id")
        lang = raw.get(self.language_column)
        lang = None if lang is None else str(lang)
        if self.kind == "words":
            return self._checked(self._words_example(index, ex_id, lang, raw))
        text = raw.get(self.text_column)
        if not isinstance(text, str):
            raise ValueError(
                f"example {ex_id!r}: column {self.text_column!r} must hold a string, "
                f"got {type(text).__name__}"
            )
        skip = {self.text_column, self.id_column, self.language_column}
        labels = self._labels(raw, skip, ex_id)
        return self._checked(
            Example(index=index, id=ex_id, text=text, language=lang, labels=labels)
        )

    def _labels(self, raw: dict, skip: set[str], ex_id: Any) -> dict[str, Any]:
        if self.label_columns is not None:
            missing = [c for c in self.label_columns if c not in raw]
            if missing:
                raise ValueError(
                    f"example {ex_id!r} has no label column {missing[0]!r}; "
                    f"columns: {', '.join(raw)}"
                )
            keys = self.label_columns
        else:
            keys = [k for k, v in raw.items() if k not in skip and _is_scalar(v)]
        return {k: _jsonable(raw[k], f"example {ex_id!r} column {k!r}") for k in keys}

    def _words_example(self, index: int, ex_id: Any, lang: str | None, raw: dict) -> Example:
        words = raw.get(self.words_column)
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            raise ValueError(
                f"example {ex_id!r}: column {self.words_column!r} must hold a list of words"
            )
        if not words:
            raise ValueError(f"example {ex_id!r} has no words; remove it from the data")
        spans, pos = [], 0
        for w in words:
            spans.append((pos, pos + len(w)))
            pos += len(w) + 1
        text = " ".join(words)
        skip = {self.words_column, self.id_column, self.language_column, self.text_column}
        if self.word_label_columns is not None:
            wl_cols = self.word_label_columns
        else:
            wl_cols = [
                k
                for k, v in raw.items()
                if k not in skip and isinstance(v, (list, tuple)) and len(v) == len(words)
            ]
        word_labels = {}
        for c in wl_cols:
            vals = raw.get(c)
            if not isinstance(vals, (list, tuple)) or len(vals) != len(words):
                raise ValueError(
                    f"example {ex_id!r}: word label column {c!r} must hold one value per word "
                    f"({len(words)} words)"
                )
            word_labels[c] = [_jsonable(v, f"example {ex_id!r} column {c!r}") for v in vals]
        labels = self._labels({k: v for k, v in raw.items() if k not in wl_cols}, skip, ex_id)
        return Example(
            index=index,
            id=ex_id,
            text=text,
            language=lang,
            labels=labels,
            word_spans=tuple(spans),
            word_labels=word_labels,
        )

    @staticmethod
    def _checked(ex: Example) -> Example:
        if not ex.text.strip():
            raise ValueError(f"example {ex.id!r} has empty text; remove it from the data")
        if not ex.word_spans:
            spans = tuple(m.span() for m in _WORD_RE.finditer(ex.text))
            ex = Example(
                index=ex.index,
                id=ex.id,
                text=ex.text,
                language=ex.language,
                labels=ex.labels,
                word_spans=spans,
                word_labels=ex.word_labels,
            )
        return ex

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """Kind, size and columns (plain JSON) for the manifest."""
        return {
            "kind": self.kind,
            "n_examples": len(self),
            "columns": self.columns,
            "text_column": self.text_column if self.kind == "records" else None,
            "words_column": self.words_column,
        }


def example_digest(h: hashlib._Hash, ex: Example) -> None:
    """Feed one example's canonical JSON into a running sha256 (the data fingerprint)."""
    h.update(json.dumps(ex.record(), sort_keys=True, ensure_ascii=False).encode())
    h.update(b"\n")
