"""Behaviour of a model on text: losses, bits per byte, fertility, label log-likelihood.

Every function returns per-text (or per-example) arrays, so a report can bootstrap over
texts; the summary value is a property computed from those arrays (a ratio of sums, never a
mean of ratios).

Token accounting (:func:`token_nll`): each text is encoded without special tokens and
prefixed with one start token (``bos``, else ``eos``); every text token is predicted exactly
once (texts longer than the model's context are cut into windows; each window after the first
restarts from its first token as context, which the previous window predicted). The end of
the text is not predicted. Bits per byte = total NLL / ln 2 / total UTF-8 bytes, which does
not depend on the tokenizer, so models with different vocabularies compare.

``handle`` arguments accept a :class:`~transferlens.models.ModelHandle` or any object with
``model`` and ``tokenizer`` attributes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Fertility",
    "LabelScores",
    "TextNLL",
    "bits_per_byte",
    "encode_prompt_response",
    "fertility",
    "label_loglik_accuracy",
    "majority_baseline",
    "pad_examples",
    "summed_logprobs",
    "token_nll",
    "unigram_nll",
]

IGNORE = -100


@dataclass
class TextNLL:
    """Per-text negative log-likelihood.

    Attributes:
        nll: (n,) summed NLL of each text's tokens, in nats (float64).
        n_bytes: (n,) UTF-8 bytes of each text.
        n_tokens: (n,) predicted tokens of each text.
    """

    nll: np.ndarray
    n_bytes: np.ndarray
    n_tokens: np.ndarray

    @property
    def bits_per_byte(self) -> float:
        """Total NLL / ln 2 / total bytes."""
        return bits_per_byte(self.nll, self.n_bytes)

    @property
    def nats_per_token(self) -> float:
        """Total NLL / total predicted tokens (the usual LM loss)."""
        return float(self.nll.sum() / max(1, int(self.n_tokens.sum())))


def bits_per_byte(
    nll: TextNLL | Sequence[float] | np.ndarray, n_bytes: Sequence[int] | np.ndarray | None = None
) -> float:
    """Bits per UTF-8 byte: ``sum(nll) / ln 2 / sum(n_bytes)`` (nll in nats).

    Args:
        nll: a :class:`TextNLL`, or per-text summed NLL in nats.
        n_bytes: per-text byte counts (omit when ``nll`` is a :class:`TextNLL`).
    """
    if isinstance(nll, TextNLL):
        nll, n_bytes = nll.nll, nll.n_bytes
    if n_bytes is None:
        raise ValueError("pass n_bytes with a plain NLL array")
    total = float(np.sum(n_bytes))
    if total <= 0:
        raise ValueError("no bytes to normalise by (empty texts)")
    return float(np.sum(nll) / math.log(2) / total)


def _start_id(tokenizer: Any) -> int:
    for name in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            return int(tid)
    raise ValueError(
        "the tokenizer has neither a bos nor an eos token; scoring needs a start token"
    )


def _context_length(model: torch.nn.Module, max_length: int | None) -> int:
    from ..models.sitemap import unwrap_model

    cfg = unwrap_model(model).config
    n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    n_ctx = int(n_ctx or 1024)
    return min(n_ctx, max_length) if max_length else min(n_ctx, 1024)


def pad_examples(
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad (context ids, target ids) pairs into one batch.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (the input ids on target
    positions, -100 elsewhere), each (batch, longest).
    """
    width = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (ctx, tgt) in enumerate(seqs):
        row = list(ctx) + list(tgt)
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        if tgt:
            labels[i, len(ctx) : len(row)] = torch.tensor(list(tgt), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def summed_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over each row of log p(labels[t] | tokens < t), and the number of scored tokens.

    Positions whose label is -100 are not scored; position 0 never is. Gradients flow when
    the caller has them enabled.

    Returns:
        (logp, count): two (batch,) tensors (float32 and long).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    target = labels[:, 1:]
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(target.shape)
    scored = target != IGNORE
    return -(nll * scored).sum(-1), scored.sum(-1)


def _score_batches(model, items, pad_id, batch_size):
    """Yield (index, logp, count) for (context, target) items, batched by length."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    device = next(model.parameters()).device
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        batch = pad_examples([items[i] for i in chunk], pad_id)
        with torch.no_grad():
            logp, count = summed_logprobs(model, **{k: v.to(device) for k, v in batch.items()})
        yield from zip(chunk, logp.double().cpu().tolist(), count.cpu().tolist(), strict=True)


def token_nll(
    handle: Any, texts: Sequence[str], *, batch_size: int = 16, max_length: int | None = None
) -> TextNLL:
    """Per-text summed NLL (nats), UTF-8 byte counts and predicted-token counts.

    Args:
        handle: a ModelHandle (or any object with ``model`` and ``tokenizer``).
        texts: the texts.
        batch_size: windows per forward pass.
        max_length: window length in tokens (default: the model's context, at most 1024).

    Raises:
        ValueError: no texts, or a tokenizer without a start token.
    """
    if len(texts) == 0:
        raise ValueError("no texts to score")
    model, tok = handle.model, handle.tokenizer
    start = _start_id(tok)
    length = _context_length(model, max_length)
    if length < 2:
        raise ValueError(f"max_length must be >= 2, got {length}")
    items, owner = [], []
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    for t, text in enumerate(texts):
        ids = [start] + list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
        n_tokens[t] = len(ids) - 1
        for s in range(0, max(1, len(ids) - 1), length - 1):
            window = ids[s : s + length]
            if len(window) < 2:
                break
            items.append((window[:1], window[1:]))
            owner.append(t)
    nll = np.zeros(len(texts), dtype=np.float64)
    pad = tok.pad_token_id if tok.pad_token_id is not None else start
    was_training = model.training
    model.eval()
    try:
        for i, lp, _ in _score_batches(model, items, pad, batch_size):
            nll[owner[i]] -= lp
    finally:
        model.train(was_training)
    n_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
    return TextNLL(nll=nll, n_bytes=n_bytes, n_tokens=n_tokens)


def unigram_nll(
    tokenizer: Any, train_texts: Sequence[str], texts: Sequence[str], *, alpha: float = 1.0
) -> TextNLL:
    """A unigram model's per-text NLL on ``texts``, same tokens as :func:`token_nll`.

    Token frequencies are counted on ``train_texts`` (encoded without special tokens) with
    add-``alpha`` smoothing over the whole vocabulary: p(t) = (c_t + alpha) / (N + alpha * V).
    Every text token is scored (the same tokens the LM predicts).
    """
    if len(texts) == 0 or len(train_texts) == 0:
        raise ValueError("unigram_nll needs training texts and texts to score")
    counts: Counter[int] = Counter()
    for text in train_texts:
        counts.update(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    total, vocab = sum(counts.values()), len(tokenizer)
    denom = math.log(total + alpha * vocab)
    nll, n_tok = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        nll[i] = sum(denom - math.log(counts.get(t, 0) + alpha) for t in ids)
        n_tok[i] = len(ids)
    n_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
    return TextNLL(nll=nll, n_bytes=n_bytes, n_tokens=n_tok)


@dataclass
class Fertility:
    """Tokens per whitespace-separated word.

    Attributes:
        n_tokens: (n,) tokens of each text (no special tokens).
        n_words: (n,) whitespace-separated words of each text.
    """

    n_tokens: np.ndarray
    n_words: np.ndarray

    @property
    def value(self) -> float:
        """Total tokens / total words."""
        return float(self.n_tokens.sum() / max(1, int(self.n_words.sum())))


def fertility(tokenizer: Any, texts: Sequence[str]) -> Fertility:
    """Tokens per word of ``tokenizer`` on ``texts`` (per-text counts; ``.value`` = ratio)."""
    if len(texts) == 0:
        raise ValueError("no texts")
    toks = np.array(
        [len(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]) for t in texts]
    )
    words = np.array([len(t.split()) for t in texts])
    return Fertility(n_tokens=toks.astype(np.int64), n_words=words.astype(np.int64))


def _ids(out: Any) -> list[int]:
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return [int(i) for i in out]


def encode_prompt_response(
    tokenizer: Any, prompt: str, response: str, *, chat: bool | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its response, as trained on and scored.

    With a chat template (``chat=None`` uses it when the tokenizer has one): the prompt is a
    user turn plus the generation prompt; the response is the rest of the templated
    conversation with the assistant turn (its end-of-turn tokens included). Without one: the
    prompt is encoded with the tokenizer's special tokens (and a start token if it adds
    none), the response without special tokens, preceded by one space when neither side has
    whitespace at the join, and followed by ``eos``.
    """
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat:
        user = [{"role": "user", "content": prompt}]
        p = _ids(tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
        full = _ids(
            tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": response}], tokenize=True
            )
        )
        if full[: len(p)] == p and len(full) > len(p):
            return p, full[len(p) :]
    p = _ids(tokenizer(prompt, verbose=False)["input_ids"])
    start = _start_id(tokenizer)
    if not p or p[0] != start:
        p = [start, *p]
    sep = (
        "" if (not prompt or prompt[-1].isspace() or not response or response[0].isspace()) else " "
    )
    r = _ids(tokenizer(sep + response, add_special_tokens=False, verbose=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    return p, r + ([int(eos)] if eos is not None else [])


@dataclass
class LabelScores:
    """Log-likelihood scores of candidate answers.

    Attributes:
        scores: (n, k) log-likelihood of each candidate after each prompt (summed, or
            per token with ``normalize="mean"``).
        predicted: (n,) index of the best-scoring candidate.
        gold: (n,) index of the correct candidate.
    """

    scores: np.ndarray
    predicted: np.ndarray
    gold: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        """(n,) bool: predicted == gold."""
        return self.predicted == self.gold

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


def label_loglik_accuracy(
    handle: Any,
    prompts: Sequence[str],
    candidates: Sequence[str] | Sequence[Sequence[str]],
    gold: Sequence[int] | Sequence[str],
    *,
    batch_size: int = 16,
    normalize: str = "sum",
) -> LabelScores:
    """Choose each prompt's answer by the log-likelihood of every candidate after it.

    Args:
        handle: a ModelHandle (or any object with ``model`` and ``tokenizer``).
        prompts: n prompts.
        candidates: k candidate answers shared by all prompts, or one list per prompt.
        gold: the correct candidate per prompt (index or the candidate string).
        batch_size: sequences per forward pass.
        normalize: ``sum`` (total log-likelihood) or ``mean`` (per token).

    Raises:
        ValueError: mismatched lengths, unknown gold answer, bad ``normalize``.
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
    n = len(prompts)
    if n == 0 or len(gold) != n:
        raise ValueError(f"need one gold answer per prompt (got {len(gold)} for {n} prompts)")
    shared = len(candidates) > 0 and isinstance(candidates[0], str)
    cands = [list(candidates)] * n if shared else [list(c) for c in candidates]
    if len(cands) != n or any(len(c) != len(cands[0]) or not c for c in cands):
        raise ValueError("candidates must be one shared list or n lists of equal length")
    gold_idx = []
    for i, g in enumerate(gold):
        if isinstance(g, str):
            if g not in cands[i]:
                raise ValueError(f"gold answer {g!r} of prompt {i} is not among its candidates")
            g = cands[i].index(g)
        gold_idx.append(int(g))
    model, tok = handle.model, handle.tokenizer
    k = len(cands[0])
    items = []
    for i, prompt in enumerate(prompts):
        for c in cands[i]:
            items.append(encode_prompt_response(tok, prompt, c))
    pad = tok.pad_token_id if tok.pad_token_id is not None else _start_id(tok)
    scores = np.zeros(n * k)
    was_training = model.training
    model.eval()
    try:
        for j, lp, count in _score_batches(model, items, pad, batch_size):
            scores[j] = lp / count if normalize == "mean" else lp
    finally:
        model.train(was_training)
    scores = scores.reshape(n, k)
    return LabelScores(scores=scores, predicted=scores.argmax(1), gold=np.array(gold_idx))


def majority_baseline(
    train_labels: Sequence[Any], test_labels: Sequence[Any]
) -> tuple[Any, np.ndarray]:
    """The most frequent training label and, per test example, whether it is correct.

    Ties go to the label seen first in ``train_labels``.
    """
    if not train_labels or not test_labels:
        raise ValueError("majority_baseline needs training and test labels")
    counts = Counter(train_labels)
    best = max(counts, key=lambda lab: counts[lab])
    return best, np.array([lab == best for lab in test_labels])
