"""JSON-lines files (one JSON value per line), read with one-line errors that name the file and
the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["json_lines"]


def json_lines(path: str | os.PathLike, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of ``path``.

    Raises:
        FileNotFoundError: ``"<path>: no such <what>"``.
        ValueError: ``"<path>:<line>: not valid JSON (<reason>)"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            yield n, value
