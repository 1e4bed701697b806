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
    """``(line number, value)`` for every non-blank line of ``path``, read line by line.

    Raises:
        FileNotFoundError: ``"<path>: no such <what>"``.
        ValueError: ``"<path>:<line>: not valid JSON (<reason>)"``, or not UTF-8 (as
            :func:`read_utf8`).
    """
    path = _existing(path, what)
    with path.open("rb") as fh:  # binary lines end at b"\n" only: JSON strings may hold U+2028
        for n, raw in enumerate(fh, 1):
            line = _decode(raw, path, n, what)
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
        ValueError: ``"<path>:<line>: not UTF-8 text (byte 0x..); save the <what> as UTF-8"``.
    """
    path = _existing(path, what)
    return _decode(path.read_bytes(), path, 1, what)


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    return path


def _decode(data: bytes, path: Path, line: int, what: str) -> str:
    """``data`` (from line ``line`` of ``path`` on) as text, or a one-line error."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line += data.count(b"\n", 0, e.start)
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the {what} as UTF-8"
        ) from None
