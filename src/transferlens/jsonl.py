"""Text and JSON-lines files (one JSON value per line), read with one-line errors that name the
file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["json_lines", "read_utf8"]


def json_lines(path: str | os.PathLike, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of ``path``.

    Raises:
        FileNotFoundError: ``"<path>: no such <what>"``.
        ValueError: ``"<path>:<line>: not valid JSON (<reason>)"``.
    """
    path = Path(path)
    # split at newlines only: JSON strings may hold other line separators (U+2028) raw
    for n, line in enumerate(read_utf8(path, what).split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        yield n, value


def read_utf8(path: str | os.PathLike, what: str = "text file") -> str:
    """The text of ``path``, which must be UTF-8.

    Raises:
        FileNotFoundError: ``"<path>: no such <what>"``.
        ValueError: ``"<path>:<line>: not UTF-8 text (byte 0x.. ); save it as UTF-8"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the {what} as UTF-8"
        ) from None
