"""Probe tasks: definitions (YAML), example loaders and token-level labels.

A task file (``probes/*.yaml``) says what is probed and where the labels come from::

    name: language_id
    description: Which language a paragraph is written in.
    level: example            # example | token | word
    source: corpus            # corpus | jsonl | conllu | hf
    label: language           # the label field (corpus column, JSONL key, CoNLL-U column, ...)
    selection: mean           # mean | last | all | first_subtoken (how capture makes rows)
    languages: [en, sv, da, de, fi]
    control: example          # example | word_type | token_type (how the control task is built)
    split: test               # optional: corpus/HF split
    path: data.jsonl          # jsonl/conllu/hf: relative to the task file
    options: {min_words: 3}   # source-specific options

:func:`load_task` returns a :class:`ProbeTask`; :meth:`ProbeTask.examples` yields
:class:`TaskExample` objects (text, id, language, and an example label or per-word labels);
:meth:`ProbeTask.records` gives the same as plain dicts that capture reads. Token-level labels
(``word_initial``, ``position_bucket``) depend on the tokenizer and come from
:func:`token_labels`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonl import read_utf8
from .task_sources import _load_hf, _read_jsonl, _word_field, parse_conllu

__all__ = [
    "LEVELS",
    "SOURCES",
    "ProbeTask",
    "TaskExample",
    "TokenLabels",
    "builtin_task_names",
    "load_task",
    "parse_conllu",
    "token_labels",
]

LEVELS = ("example", "token", "word")
SOURCES = ("corpus", "jsonl", "conllu", "hf")
SELECTIONS = ("mean", "last", "all", "first_subtoken")
CONTROLS = ("example", "word_type", "token_type")
TOKEN_LABELS = ("word_initial", "position_bucket")
_FIELDS = (
    "name",
    "description",
    "level",
    "source",
    "label",
    "selection",
    "languages",
    "control",
    "split",
    "path",
    "options",
)


def _probes_dirs() -> list[Path]:
    """Folders searched for task names: ``$TRANSFERLENS_PROBES``, ``./probes``, the source tree's."""
    dirs = [Path(p) for p in os.environ.get("TRANSFERLENS_PROBES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "probes", Path(__file__).resolve().parents[3] / "probes"]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def builtin_task_names() -> list[str]:
    """Names of the task files found in the probes folders."""
    return sorted({p.stem for d in _probes_dirs() for p in d.glob("*.yaml")})


@dataclass(frozen=True)
class TaskExample:
    """One example of a probe task.

    Attributes:
        id: example id (paragraph id for the corpus: the same across languages).
        text: the text a model reads (words joined by single spaces for word-level tasks).
        language: language code, or None.
        label: the example-level label (None for token/word-level tasks).
        words: the words of a word-level example.
        word_labels: one label per word (None where a word has none).
    """

    id: str
    text: str
    language: str | None
    label: Any = None
    words: tuple[str, ...] = ()
    word_labels: tuple[Any, ...] = ()

    def record(self) -> dict[str, Any]:
        """Plain dict for capture: ``id, language, text`` plus ``label`` or ``words, labels``."""
        rec: dict[str, Any] = {"id": self.id, "language": self.language, "text": self.text}
        if self.words:
            rec["words"], rec["labels"] = list(self.words), list(self.word_labels)
        else:
            rec["label"] = self.label
        return rec


@dataclass(frozen=True)
class TokenLabels:
    """Per-token labels of one text under one tokenizer.

    Attributes:
        token_ids: ``(T,)`` ids, as the tokenizer encodes the text.
        labels: ``(T,)`` object array of labels (None for special/whitespace-only tokens).
        word_ids: ``(T,)`` word index of each token (-1: none), words = whitespace-separated
            spans; a token belongs to the word holding its last character (as capture does).
        offsets: ``(T, 2)`` character offsets.
    """

    token_ids: np.ndarray
    labels: np.ndarray
    word_ids: np.ndarray
    offsets: np.ndarray


@dataclass
class ProbeTask:
    """A probe task definition (see the module docstring for the file format)."""

    name: str
    level: str
    source: str
    label: str
    description: str = ""
    selection: str = "mean"
    languages: tuple[str, ...] = ()
    control: str = "example"
    split: str | None = None
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    file: str | None = None

    def __post_init__(self) -> None:
        where = f"probe task {self.name!r}" + (f" ({self.file})" if self.file else "")
        for attr, kinds, want in (
            ("name", str, "a string"),
            ("level", str, "a string"),
            ("source", str, "a string"),
            ("label", str, "a string"),
            ("description", str, "a string"),
            ("selection", str, "a string"),
            ("control", str, "a string"),
            ("split", (str, type(None)), "a string"),
            ("path", (str, type(None)), "a string (a file or folder)"),
            ("languages", (str, list, tuple), "a list of language codes"),
            ("options", dict, "a mapping of option: value"),
        ):
            if not isinstance(getattr(self, attr), kinds):
                raise ValueError(f"{where}: {attr} must be {want}, not {getattr(self, attr)!r}")
        if not all(isinstance(code, str) for code in self.languages):
            raise ValueError(
                f"{where}: languages must be a list of language codes, not {self.languages!r}"
            )
        for attr, valid in (
            ("level", LEVELS),
            ("source", SOURCES),
            ("selection", SELECTIONS),
            ("control", CONTROLS),
        ):
            if getattr(self, attr) not in valid:
                raise ValueError(
                    f"{where}: {attr} {getattr(self, attr)!r} is not one of {list(valid)}"
                )
        if self.level == "token" and self.label not in TOKEN_LABELS:
            raise ValueError(f"{where}: token-level label must be one of {list(TOKEN_LABELS)}")
        if self.source in ("jsonl", "conllu") and not self.path:
            raise ValueError(f"{where}: source {self.source!r} needs a path")
        langs = self.languages or ()
        self.languages = (langs,) if isinstance(langs, str) else tuple(langs)

    @classmethod
    def from_dict(cls, d: dict[str, Any], file: str | None = None) -> ProbeTask:
        """Build from a parsed task file; unknown or missing fields raise ``ValueError``."""
        where = file or "probe task"
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; valid fields are {list(_FIELDS)}")
        missing = [k for k in ("name", "level", "source", "label") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing required fields {missing}")
        return cls(**{k: d[k] for k in _FIELDS if k in d and d[k] is not None}, file=file)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _FIELDS}
        d["languages"] = list(self.languages)
        return d

    @property
    def data_path(self) -> Path | None:
        """The task's data file or folder (``path`` resolved against the task file's folder),
        or None for corpus tasks and tasks without a path."""
        return self._resolve(self.path) if self.path and self.source != "corpus" else None

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() or self.file is None else Path(self.file).parent / p

    def examples(
        self,
        data: Any = None,
        *,
        languages: Sequence[str] | None = None,
        split: str | None = None,
        limit: int | None = None,
    ) -> Iterator[TaskExample]:
        """Yield the task's examples.

        Args:
            data: an already-loaded ``datasets.Dataset`` or list of dicts to read instead of
                the task's source (same fields as the source would give).
            languages: restrict to these languages (default: the task's).
            split: corpus/HF split (default: the task's).
            limit: stop after this many examples.
        """
        langs = tuple(languages) if languages is not None else self.languages
        split = split if split is not None else self.split
        if data is not None:
            rows: Any = data
        elif self.source == "corpus":
            from transferlens.data import load_corpus_long

            opts = {k: self.options[k] for k in ("topics", "min_words") if k in self.options}
            rows = load_corpus_long(languages=list(langs) or None, split=split, **opts)
        elif self.source == "jsonl":
            rows = _read_jsonl(self._resolve(self.path or ""))
        elif self.source == "conllu":
            rows = parse_conllu(
                self._resolve(self.path or ""), multiword=self.options.get("multiword", "first")
            )
        else:
            rows = _load_hf(self._resolve(self.path) if self.path else None, split)
        count = 0
        for i, row in enumerate(rows):
            ex = self._example(row, i)
            if langs and ex.language is not None and ex.language not in langs:
                continue
            yield ex
            count += 1
            if limit is not None and count >= limit:
                return

    def records(self, data: Any = None, **kw: Any) -> list[dict[str, Any]]:
        """The examples as plain dicts (see :meth:`TaskExample.record`)."""
        return [ex.record() for ex in self.examples(data, **kw)]

    def _example(self, row: dict[str, Any], i: int) -> TaskExample:
        where = f"probe task {self.name!r}, example {i}"
        lang = row.get("language") or (self.languages[0] if len(self.languages) == 1 else None)
        ex_id = str(row.get("id", i))
        words_key = self.options.get("words_field") or next(
            (k for k in ("words", "tokens") if k in row), None
        )
        if self.level == "word":
            if words_key is None or words_key not in row:
                raise ValueError(f"{where}: a word-level task needs a 'words' or 'tokens' list")
            words = tuple(str(w) for w in row[words_key])
            labels = row.get(self.label)
            if labels is None and "word_fields" in row:
                labels = [_word_field(w, self.label) for w in row["word_fields"]]
            if labels is None or len(labels) != len(words):
                raise ValueError(
                    f"{where}: field {self.label!r} must hold one label per word ({len(words)})"
                )
            return TaskExample(ex_id, " ".join(words), lang, None, words, tuple(labels))
        text_key = self.options.get("text_field", "text")
        if text_key not in row:
            raise ValueError(f"{where}: no text field {text_key!r} (fields: {sorted(row)})")
        if self.level == "token":
            return TaskExample(ex_id, str(row[text_key]), lang)
        if self.label not in row:
            raise ValueError(f"{where}: no label field {self.label!r} (fields: {sorted(row)})")
        return TaskExample(ex_id, str(row[text_key]), lang, row[self.label])

    def token_labels(self, example: TaskExample | str, tokenizer: Any) -> TokenLabels:
        """Token-level labels of an example (token-level tasks only); see :func:`token_labels`."""
        if self.level != "token":
            raise ValueError(
                f"probe task {self.name!r} is {self.level}-level; token_labels is for token-level tasks"
            )
        text = example.text if isinstance(example, TaskExample) else example
        return token_labels(text, tokenizer, self.label, buckets=self.options.get("buckets"))


def load_task(name_or_path: str | os.PathLike) -> ProbeTask:
    """Load a probe task by name (a ``.yaml`` in the probes folders) or from a file path.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or an invalid file.
        FileNotFoundError: a path that does not exist.
    """
    import yaml

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or os.sep in str(name_or_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such probe task file")
    else:
        found = [
            d / f"{name_or_path}.yaml"
            for d in _probes_dirs()
            if (d / f"{name_or_path}.yaml").is_file()
        ]
        if not found:
            raise ValueError(
                f"unknown probe task {str(name_or_path)!r}; valid tasks are "
                f"{builtin_task_names()} (or give the path of a .yaml file)"
            )
        p = found[0]
    try:
        d = yaml.safe_load(read_utf8(p, "probe task file"))
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: a probe task file must be a mapping of fields")
    return ProbeTask.from_dict(d, file=str(p))


# --------------------------------------------------------------------------- token labels


def token_labels(
    text: str,
    tokenizer: Any,
    kind: str,
    *,
    buckets: Sequence[int] | None = None,
    add_special_tokens: bool = True,
) -> TokenLabels:
    """Per-token labels computed from a fast tokenizer's offsets.

    Args:
        text: the text.
        tokenizer: a ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer``.
        kind: ``word_initial`` (``"initial"`` for the first token of a word, else
            ``"continuation"``) or ``position_bucket`` (the token's position in the encoded
            sequence, bucketed by ``buckets`` edges, default ``1, 2, 4, …, 64``: labels
            ``"0"``, ``"1"``, ``"2-3"``, …, ``"64+"``).
        buckets: increasing bucket edges for ``position_bucket``.
        add_special_tokens: encode with the model's special tokens (they get label None).

    Returns:
        :class:`TokenLabels`.
    """
    if kind not in TOKEN_LABELS:
        raise ValueError(f"unknown token label {kind!r}; valid: {list(TOKEN_LABELS)}")
    if hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "is_fast"):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "token labels need a fast tokenizer (offsets); load it with use_fast=True"
            )
        enc = tokenizer(
            text,
            add_special_tokens=add_special_tokens,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            verbose=False,  # labels only: the model's context limit applies later, in capture
        )
        ids, offs, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
        pieces = tokenizer.convert_ids_to_tokens(list(ids))
    else:  # tokenizers.Tokenizer
        enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        ids, offs, special = enc.ids, enc.offsets, enc.special_tokens_mask
        pieces = list(enc.tokens)
    from ..capture.tokens import word_of_tokens  # capture's rule, so that rows and labels agree

    offs = np.asarray(offs, np.int64).reshape(-1, 2)
    spans = np.array([(m.start(), m.end()) for m in re.finditer(r"\S+", text)], np.int64).reshape(
        -1, 2
    )
    word_ids = word_of_tokens(offs, spans, np.asarray(special, bool), text, pieces).astype(np.int64)
    labels = np.empty(len(ids), dtype=object)
    if kind == "word_initial":
        seen: set[int] = set()
        for t, w in enumerate(word_ids.tolist()):
            if w >= 0:
                labels[t] = "continuation" if w in seen else "initial"
                seen.add(w)
    else:
        edges = list(buckets) if buckets is not None else [1, 2, 4, 8, 16, 32, 64]
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or edges[0] < 1:
            raise ValueError(f"buckets must be increasing positive edges, got {edges}")
        names = [_bucket_name(lo, hi) for lo, hi in zip([0, *edges], [*edges, None], strict=True)]
        for t in range(len(ids)):
            if word_ids[t] >= 0:  # no label for special and whitespace-only tokens
                labels[t] = names[int(np.searchsorted(edges, t, side="right"))]
    return TokenLabels(np.asarray(ids, np.int64), labels, word_ids, offs)


def _bucket_name(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+"
    return str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"
