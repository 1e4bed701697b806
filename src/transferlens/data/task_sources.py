"""Where probe tasks' examples come from: JSONL files, CoNLL-U treebanks and Hugging Face
datasets (read by :class:`~transferlens.data.tasks.ProbeTask`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..jsonl import json_lines, read_utf8

__all__ = ["parse_conllu"]

# a word (3), a multiword token (3-4) or an empty node (3.1, or 0.1 before the first word)
_CONLLU_ID = re.compile(r"[1-9][0-9]*(-[1-9][0-9]*)?|(0|[1-9][0-9]*)\.[1-9][0-9]*")
_CONLLU = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for ln, row in json_lines(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{ln}: each line must be a JSON object")
        rows.append(row)
    return rows


def _load_hf(path: Path | None, split: str | None) -> Any:
    """A local Hugging Face dataset: a ``save_to_disk`` folder, or files/folder for ``load_dataset``."""
    import datasets

    if path is None:
        raise ValueError("an hf task needs a path (a local dataset) or data= passed to examples()")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        ds = datasets.load_from_disk(str(path))
    elif path.exists():
        ds = datasets.load_dataset(str(path), split=split)
    else:
        raise FileNotFoundError(
            f"{path}: no such local dataset (hub downloads are not done here; "
            "load it yourself and pass data=)"
        )
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise ValueError(f"{path}: choose a split among {list(ds)} (split: ...)")
        ds = ds[split]
    return ds


def _feats(text: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in text.split("|") if "=" in f)


def _word_field(word: dict[str, Any], label: str) -> Any:
    """A CoNLL-U word's label: a column (``upos``), or one feature (``feats:Number``).

    A multiword token (``zur`` = zu + der) under ``multiword: join`` gives each part's value
    joined by ``+`` (``_`` for a part without it; None if no part has it); under ``skip``
    it has no label but its form."""
    mode = word.get("_multiword")
    if mode == "skip" and label != "form":
        return None
    if label.startswith("feats:"):
        name = label.split(":", 1)[1]
        if mode == "join":
            vals = [_feats(p["feats"]).get(name) for p in word["_parts"]]
            return None if all(v is None for v in vals) else "+".join(v or "_" for v in vals)
        return _feats(word["feats"]).get(name)
    if label not in _CONLLU:
        raise ValueError(
            f"unknown CoNLL-U label {label!r}; use one of {list(_CONLLU)} or feats:<Name>"
        )
    value = word[label]
    return None if value == "_" and label not in ("form", "lemma") else value


def parse_conllu(path: str | os.PathLike, *, multiword: str = "first") -> list[dict[str, Any]]:
    """Parse a CoNLL-U file into one dict per sentence.

    Comments (``# text = ...``, ``# sent_id = ...``) are kept as fields. Empty nodes
    (``8.1``) are skipped: they are not in the surface text. A multiword token (``1-2 du``)
    becomes one surface word whose fields are those of its first syntactic word
    (``multiword="first"``), all its words' values joined with ``+`` (``"join"``), or
    missing (``"skip"``: None); its syntactic words are not surface words.

    Returns:
        dicts with ``id`` (``sent_id`` or the sentence number), ``words`` (surface forms),
        ``word_fields`` (per word, the ten CoNLL-U columns by name) and ``text``.
    """
    if multiword not in ("first", "join", "skip"):
        raise ValueError(f"multiword must be 'first', 'join' or 'skip', got {multiword!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CoNLL-U file")
    sents: list[dict[str, Any]] = []
    meta: dict[str, str] = {}
    toks: list[tuple[str, list[str]]] = []

    def flush() -> None:
        if toks:
            sents.append(_sentence(toks, meta, len(sents), multiword))
        toks.clear()
        meta.clear()

    for ln, line in enumerate(read_utf8(path, "CoNLL-U file").splitlines(), 1):
        if not line.strip():
            flush()
        elif line.startswith("#"):
            if "=" in line:
                k, v = line[1:].split("=", 1)
                meta[k.strip()] = v.strip()
        else:
            cols = line.split("\t")
            if len(cols) != 10:
                raise ValueError(
                    f"{path}:{ln}: a CoNLL-U word line has 10 tab-separated columns, got {len(cols)}"
                )
            if not _CONLLU_ID.fullmatch(cols[0]):
                raise ValueError(
                    f"{path}:{ln}: the ID column must be a word number (3), a range (3-4) or an "
                    f"empty node (3.1), not {cols[0]!r}"
                )
            if "." not in cols[0]:
                toks.append((cols[0], cols))
    flush()
    return sents


def _sentence(
    toks: list[tuple[str, list[str]]], meta: dict[str, str], k: int, multiword: str
) -> dict[str, Any]:
    words: list[str] = []
    fields: list[dict[str, str]] = []
    i = 0
    while i < len(toks):
        tid, cols = toks[i]
        if "-" in tid:
            lo, hi = (int(x) for x in tid.split("-"))
            parts = [
                dict(zip(_CONLLU, c, strict=True))
                for t, c in toks[i + 1 :]
                if "-" not in t and lo <= int(t) <= hi
            ]
            f = dict(zip(_CONLLU, cols, strict=True))
            for key in _CONLLU[2:]:
                vals = [p[key] for p in parts]
                f[key] = {"first": vals[0] if vals else "_", "join": "+".join(vals), "skip": "_"}[
                    multiword
                ]
            f["_multiword"], f["_parts"] = multiword, parts  # for feats:<Name> labels
            words.append(cols[1])
            fields.append(f)
            i += 1 + len(parts)
        else:
            words.append(cols[1])
            fields.append(dict(zip(_CONLLU, cols, strict=True)))
            i += 1
    return {
        "id": meta.get("sent_id", str(k)),
        "words": words,
        "word_fields": fields,
        "text": meta.get("text", " ".join(words)),
    }
