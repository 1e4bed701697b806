"""Byte-level BPE tokenizers: training one from scratch, and extending one with new tokens.

Vocabulary extension works on the BPE model itself (not as "added tokens", which would be
matched greedily inside words): a BPE is trained on the target-language texts with the old
tokenizer's normaliser and pre-tokeniser; its merges are taken in order, and every merge whose
two parts are already tokens and whose result is not becomes a new merge (ranked after all
old ones) and a new token. Old merges keep their ranks, so the new tokenizer segments a text
as before except where a new merge applies. A new token's embedding starts as the mean of the
embeddings of the pieces the old tokenizer splits it into.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["SPECIAL_TOKENS", "extend_vocabulary", "train_bpe"]

log = logging.getLogger(__name__)

#: Special tokens of tokenizers trained here: ids 0, 1, 2.
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")


def train_bpe(texts: Iterable[str], vocab_size: int, *, max_length: int = 1024) -> Any:
    """Train a byte-level BPE tokenizer (``PreTrainedTokenizerFast``) on ``texts``.

    Special tokens: ``<|bos|>`` (id 0, prepended to every encoding), ``<|eos|>`` (1),
    ``<|pad|>`` (2). Deterministic: the same texts in the same order give the same tokenizer.

    Args:
        texts: training texts.
        vocab_size: target vocabulary size (special tokens and the 256 byte symbols included).
        max_length: the tokenizer's ``model_max_length``.

    Raises:
        ValueError: no texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no texts to train the tokenizer on; pass non-empty training data")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS[0]} $A",
        pair=f"{SPECIAL_TOKENS[0]} $A {SPECIAL_TOKENS[0]} $B",
        special_tokens=[(SPECIAL_TOKENS[0], 0)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        model_max_length=max_length,
    )


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def _bpe_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"vocabulary extension needs a fast (tokenizers) tokenizer; got {type(tokenizer).__name__}"
        )
    doc = json.loads(backend.to_str())
    if doc.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(
        [doc.get("pre_tokenizer"), doc.get("decoder")]
    ):
        raise ValueError(
            "vocabulary extension supports byte-level BPE tokenizers only (GPT-2/Llama-3/"
            f"SmolLM style); this one is a {doc.get('model', {}).get('type')} model"
        )
    return doc


def extend_vocabulary(
    tokenizer: Any,
    model: nn.Module,
    texts: Sequence[str],
    n_new: int,
    *,
    train_vocab_size: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Add up to ``n_new`` target-language tokens to ``tokenizer`` and resize ``model``.

    The model is changed in place: its input (and untied output) embeddings get one row per
    new token, set to the mean of the rows of the token's pieces under the old tokenizer.

    Args:
        tokenizer: a byte-level BPE ``PreTrainedTokenizerFast``.
        model: the causal LM using it.
        texts: target-language training texts.
        n_new: number of tokens to add (fewer are added if the target BPE has fewer new
            merges).
        train_vocab_size: vocabulary size of the target-language BPE (default:
            ``len(tokenizer) + 4 * n_new``, capped at 60000).

    Returns:
        (new tokenizer, info) where info records the sizes and a sample of new tokens.

    Raises:
        ValueError: not a byte-level BPE, ``n_new`` < 1, or no texts.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no target-language texts to extend the vocabulary with")
    doc = _bpe_json(tokenizer)
    vocab: dict[str, int] = dict(doc["model"]["vocab"])
    merges = _merge_pairs(doc["model"]["merges"])
    next_id = 1 + max([*vocab.values(), *(t["id"] for t in doc.get("added_tokens", []))])

    target = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    target.model = models.BPE()
    size = train_vocab_size or min(60000, len(tokenizer) + 4 * n_new)
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    target.train_from_iterator(texts, trainer=trainer, length=len(texts))
    new_merges: list[tuple[str, str]] = []
    new_tokens: list[str] = []
    for a, b in _merge_pairs(json.loads(target.to_str())["model"]["merges"]):
        if len(new_tokens) >= n_new:
            break
        if a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = next_id
            next_id += 1
            new_merges.append((a, b))
            new_tokens.append(a + b)
    old_backend = tokenizer.backend_tokenizer
    pieces = [[vocab[t.value] for t in old_backend.model.tokenize(tok)] for tok in new_tokens]

    doc["model"]["vocab"] = vocab
    doc["model"]["merges"] = [list(m) for m in merges + new_merges]
    backend = Tokenizer.from_str(json.dumps(doc))
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    new_tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=tokenizer.model_max_length, **special
    )
    if getattr(tokenizer, "chat_template", None):
        new_tok.chat_template = tokenizer.chat_template
    _resize_embeddings(model, next_id, new_tokens, vocab, pieces)
    info = {
        "n_new": len(new_tokens),
        "requested": n_new,
        "old_size": len(tokenizer),
        "new_size": len(new_tok),
        "target_bpe_vocab_size": size,
        "n_texts": len(texts),
        "sample": [backend.decode([vocab[t]]) for t in new_tokens[:20]],
        "embedding_init": "mean of the old tokenizer's pieces",
    }
    log.info(
        "vocabulary extended by %d tokens (%d -> %d)",
        info["n_new"],
        info["old_size"],
        info["new_size"],
    )
    return new_tok, info


def _resize_embeddings(
    model: nn.Module,
    size: int,
    new_tokens: list[str],
    vocab: dict[str, int],
    pieces: list[list[int]],
) -> None:
    inp = model.get_input_embeddings()
    old_rows = inp.weight.shape[0]
    model.resize_token_embeddings(max(size, old_rows), mean_resizing=False)
    out = model.get_output_embeddings()
    tied = out is None or out.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        for tok, ids in zip(new_tokens, pieces, strict=True):
            row = vocab[tok]
            idx = torch.tensor(ids)
            emb = model.get_input_embeddings().weight
            emb[row] = emb[idx].mean(0)
            if not tied:
                out.weight[row] = out.weight[idx].mean(0)
                if getattr(out, "bias", None) is not None:
                    out.bias[row] = out.bias[idx].mean(0)
