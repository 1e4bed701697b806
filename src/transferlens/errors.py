"""Errors for user mistakes: the CLI prints their one-line message and exits non-zero."""

from __future__ import annotations

__all__ = ["CheckpointError", "TransferlensError"]


class TransferlensError(Exception):
    """A mistake in the user's input (a path, a file, an option), with a one-line message
    saying what is wrong and how to fix it."""


class CheckpointError(TransferlensError, ValueError):
    """A file that is not a readable transferlens checkpoint."""
