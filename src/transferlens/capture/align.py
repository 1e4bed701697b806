"""Paired capture across tokenizers: which rows the base and the adapted model share.

When the two models use the same tokenizer (same :func:`~.tokens.tokenizer_hash`), their
tokens correspond one to one and every selection, ``all`` included, gives the same rows.

When the tokenizers differ (vocabulary extension, a new tokenizer), tokens no longer
correspond, but examples and words do: words are defined on the text, not by the tokenizer
(see :mod:`~transferlens.capture.tokens`). Rows are then aligned at the unit level:

- unit ``example`` (``mean``, ``last``): one row per example in both stores;
- unit ``word`` (``first_subtoken``, word ``mean``/``last``): one row per word that is
  covered in *both* tokenisations (a word cut by one model's truncation is dropped from
  both stores), in the same order.

``all`` is refused: there is no row-to-row correspondence between different tokenisations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .select import Selection, units
from .tokens import Encoded

__all__ = ["aligned_units", "check_pair_selection"]


def check_pair_selection(sel: Selection, same_tokenizer: bool) -> None:
    """Refuse selections that cannot be aligned across different tokenizers.

    Raises:
        ValueError: ``select='all'`` with different tokenizers.
    """
    if sel.select == "all" and not same_tokenizer:
        raise ValueError(
            "select='all' needs one tokenisation, but the base and adapted tokenizers differ "
            "(their tokens do not correspond one to one); use select='mean' or 'last' "
            "(one row per example) or 'first_subtoken' (one row per word)"
        )


def aligned_units(
    encoded: Sequence[Sequence[Encoded]], sel: Selection, same_tokenizer: bool
) -> tuple[list[list[np.ndarray]], dict[str, int]]:
    """Units to keep per model and example, identical across models.

    Args:
        encoded: per model, the batch's encoded examples.
        sel: the selection.
        same_tokenizer: the models share one tokenizer.

    Returns:
        ``(keep, dropped)``: ``keep[m][i]`` the units of example i for model m (the same
        array for every model), and counts of dropped units (``words``, ``examples``).
    """
    n_models = len(encoded)
    n_ex = len(encoded[0])
    keep: list[list[np.ndarray]] = [[] for _ in range(n_models)]
    dropped = {"words": 0, "examples": 0}
    for i in range(n_ex):
        per = [units(encoded[m][i], sel) for m in range(n_models)]
        if same_tokenizer or n_models == 1:
            common = per[0]
        else:
            common, union = per[0], per[0]
            for other in per[1:]:
                common = np.intersect1d(common, other, assume_unique=True)
                union = np.union1d(union, other)
            if sel.unit == "word":
                dropped["words"] += int(len(union) - len(common))
            elif len(common) == 0:
                dropped["examples"] += 1
        for m in range(n_models):
            keep[m].append(common)
    return keep, dropped


def alignment_record(
    sel: Selection, same_tokenizer: bool, dropped: dict[str, int], role: str, other: dict[str, Any]
) -> dict[str, Any]:
    """The ``alignment`` entry of a paired store's manifest."""
    if same_tokenizer:
        how = "same tokenizer: rows correspond token by token"
    elif sel.unit == "word":
        how = (
            "different tokenizers: one row per word covered in both tokenisations "
            "(words are whitespace-separated spans, or the given words)"
        )
    else:
        how = "different tokenizers: one row per example"
    return {
        "role": role,
        "other": other,
        "same_tokenizer": same_tokenizer,
        "unit": sel.unit,
        "how": how,
        "dropped_words": dropped.get("words", 0),
        "dropped_examples": dropped.get("examples", 0),
    }
