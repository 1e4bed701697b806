"""Errors for user mistakes: the CLI prints their one-line message and exits non-zero."""

from __future__ import annotations

__all__ = ["CheckpointError", "TransferlensError", "first_line"]


class TransferlensError(Exception):
    """A mistake in the user's input (a path, a file, an option), with a one-line message
    saying what is wrong and how to fix it."""


class CheckpointError(TransferlensError, ValueError):
    """A file that is not a readable transferlens checkpoint."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name if the message is empty), for
    quoting a library's error inside a one-line message; a first line that ends with a colon
    (``"validation error:"``) is joined with the next one, which says what failed."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]
