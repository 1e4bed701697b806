"""Tokenising a batch of examples, mapping tokens to words, and padding.

Words are defined independently of the tokenizer: the given words of word-list inputs, or
the whitespace-separated spans of a text. A token belongs to the word that contains its last
character (from the fast tokenizer's ``offset_mapping``); special tokens and tokens made only
of whitespace belong to no word (-1). Because words do not depend on the tokenizer, two
models with different tokenizers see the same words, which is what paired capture aligns on.

A word is *covered* when at least one token belongs to it and truncation did not cut it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .inputs import Example

__all__ = ["Encoded", "collate", "context_length", "encode", "tokenizer_hash", "word_of_tokens"]


@dataclass
class Encoded:
    """One example's tokens.

    Attributes:
        ids: token ids (after truncation).
        special: True where the token is a special token (BOS, EOS, ...).
        words: word index of each token, -1 for none.
        covered: per word, True when the word has tokens and was not cut by truncation.
        n_full: number of tokens before truncation.
    """

    ids: np.ndarray
    special: np.ndarray
    words: np.ndarray
    covered: np.ndarray
    n_full: int

    @property
    def truncated(self) -> bool:
        return self.n_full > len(self.ids)


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of a tokenizer's full definition (vocabulary, merges, normaliser, specials)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
        # drop the per-call truncation/padding settings, which precede "added_tokens" in the
        # serialisation (slicing avoids re-parsing a large vocabulary)
        cut = text.find(',"added_tokens":')
        if cut < 0:  # pragma: no cover - another serialisation layout
            doc = json.loads(text)
            doc.pop("truncation", None)
            doc.pop("padding", None)
            text = json.dumps(doc, sort_keys=True)
        else:
            text = text[cut:]
        h.update(text.encode())
    else:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context (``max_position_embeddings``/``n_positions``), or None if unbounded."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**9:
        return value
    return None


_MARKERS = "\u2581\u0120\u010a\u0109"  # SentencePiece ▁, byte-level Ġ (space), Ċ, ĉ


def word_of_tokens(
    offsets: np.ndarray,
    spans: np.ndarray,
    special: np.ndarray,
    text: str,
    pieces: Sequence[str] | None = None,
) -> np.ndarray:
    """Word index per token: the word containing the token's last non-whitespace character;
    -1 for special tokens and tokens of whitespace only — by their text (``".\n"`` belongs to
    the word before it) and by their vocabulary piece (a lone SentencePiece ``▁`` whose
    offsets cover the next character)."""
    words = np.full(len(offsets), -1, dtype=np.int32)
    if len(spans) == 0 or len(offsets) == 0:
        return words
    # last_ink[i]: the last non-whitespace character at or before i (-1 if none)
    ink = np.fromiter((not c.isspace() for c in text), dtype=bool, count=len(text))
    idx = np.where(ink, np.arange(len(text)), -1)
    last_ink = np.maximum.accumulate(idx) if len(idx) else idx
    end = np.clip(offsets[:, 1] - 1, 0, max(len(text) - 1, 0))
    last = last_ink[end] if len(text) else np.full(len(offsets), -1)
    starts, ends = spans[:, 0], spans[:, 1]
    w = np.searchsorted(starts, last, side="right") - 1
    ok = (offsets[:, 1] > offsets[:, 0]) & (last >= offsets[:, 0]) & (w >= 0) & ~special
    ok &= last < ends[np.clip(w, 0, None)]
    if pieces is not None:
        ok &= np.array([bool(p.strip(_MARKERS).strip()) for p in pieces], dtype=bool)
    words[ok] = w[ok]
    return words


def encode(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_len: int | None,
    truncate: bool,
    need_words: bool,
) -> list[Encoded]:
    """Tokenise examples (special tokens added) and map their tokens to words.

    Args:
        tokenizer: a Hugging Face tokenizer.
        examples: the batch.
        max_len: the most tokens per example, or None.
        truncate: cut examples longer than ``max_len`` (else they are returned whole; the
            caller decides whether that is an error).
        need_words: the selection needs words, which needs a fast tokenizer.

    Raises:
        ValueError: words are needed but the tokenizer is not a fast one.
    """
    fast = bool(getattr(tokenizer, "is_fast", False))
    if need_words and not fast:
        raise ValueError(
            f"word-level selection needs a fast tokenizer (offset mapping); "
            f"{type(tokenizer).__name__} is a slow one: load it with use_fast=True"
        )
    texts = [ex.text for ex in examples]
    kw: dict[str, Any] = dict(
        add_special_tokens=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        verbose=False,
    )
    if fast:
        kw["return_offsets_mapping"] = True
    full = tokenizer(texts, **kw)
    cut = {k: list(v) for k, v in full.items()}
    over = [i for i, x in enumerate(full["input_ids"]) if max_len is not None and len(x) > max_len]
    if truncate and over:  # the tokenizer's own truncation (keeps BOS/EOS), long ones only
        again = tokenizer([texts[i] for i in over], truncation=True, max_length=max_len, **kw)
        for j, i in enumerate(over):
            for k in cut:
                cut[k][i] = again[k][j]
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i, ex in enumerate(examples):
        ids = np.asarray(cut["input_ids"][i], dtype=np.int64)
        special = np.asarray(cut["special_tokens_mask"][i], dtype=bool)
        if special_ids:
            special |= np.isin(ids, list(special_ids))
        spans = np.asarray(ex.word_spans, dtype=np.int64).reshape(-1, 2)
        if fast:
            offsets = np.asarray(cut["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            pieces = tokenizer.convert_ids_to_tokens(ids.tolist())  # one rule, every selection
            words = word_of_tokens(offsets, spans, special, ex.text, pieces)
            has = np.zeros(len(spans), dtype=bool)
            has[words[words >= 0]] = True
            real = offsets[~special]
            reach = real[:, 1].max() if len(real) else 0
            begin = real[:, 0].min() if len(real) else 0
            # a word is covered only if truncation cut neither its end nor (left truncation)
            # its start
            covered = has & (spans[:, 1] <= reach) & (spans[:, 0] >= begin)
        else:
            words = np.full(len(ids), -1, dtype=np.int32)
            covered = np.zeros(len(spans), dtype=bool)
        out.append(
            Encoded(
                ids=ids,
                special=special,
                words=words,
                covered=covered,
                n_full=len(full["input_ids"][i]),
            )
        )
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding (its value never matters: padded positions are masked)."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def collate(
    encoded: Sequence[Encoded], *, padding_side: str, pad_id: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], np.ndarray, int]:
    """Pad a batch to its longest example.

    Returns:
        ``(inputs, offsets, T)``: model inputs (``input_ids``, ``attention_mask``,
        ``position_ids`` counting real tokens only, so left padding leaves positions
        unchanged), the padded start of each example, and the padded length.
    """
    lengths = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    T = int(lengths.max())
    B = len(encoded)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    offsets = (T - lengths) if padding_side == "left" else np.zeros(B, dtype=np.int64)
    for i, e in enumerate(encoded):
        o = offsets[i]
        ids[i, o : o + len(e.ids)] = e.ids
        mask[i, o : o + len(e.ids)] = 1
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    inputs = {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
        "position_ids": torch.from_numpy(pos).to(device),
    }
    return inputs, offsets, T
