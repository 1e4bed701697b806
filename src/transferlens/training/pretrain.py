"""Pretraining a small causal LM and its byte-level BPE tokenizer from scratch.

Default: English + German from the corpus ``train`` split, so Swedish is unseen by the base
model; held-out loss is measured on the ``test`` split, next to a unigram model of the same
training data (same tokenizer) as the floor a language model must clearly beat.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from torch import nn

from ..analysis.behaviour import unigram_nll
from .common import (
    TrainResult,
    bpb_by_language,
    finish,
    lm_collate,
    lm_loss,
    pack_texts,
    prepare_output,
    tokenizer_sha,
    training_record,
)
from .config import PretrainConfig
from .datasets import check_languages, corpus_texts
from .loop import make_accelerator, run_loop
from .tokenizer import train_bpe

__all__ = ["build_model", "pretrain"]

log = logging.getLogger(__name__)


def build_model(config: PretrainConfig, tokenizer: Any) -> nn.Module:
    """A freshly initialised causal LM for ``config`` (seeded by ``config.seed``; float32).

    The caller's global RNG state is left as it was.
    """
    import transformers as tf

    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if config.arch == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.d_model,
            intermediate_size=config.d_ff,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_kv_heads or config.n_heads,
            max_position_embeddings=config.seq_len,
            tie_word_embeddings=True,
            **ids,
        )
        cls = tf.LlamaForCausalLM
    else:
        cfg = tf.GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=config.d_model,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            n_inner=config.d_ff,
            n_positions=config.seq_len,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
        cls = tf.GPT2LMHeadModel
    cfg.architectures = [cls.__name__]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = cls(cfg)
    return model


def pretrain(
    out: str | os.PathLike,
    config: PretrainConfig | None = None,
    *,
    overwrite: bool = False,
    resume: bool = True,
    texts: dict[str, list[str]] | None = None,
    eval_texts: dict[str, list[str]] | None = None,
    preset: str | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train a tokenizer and a causal LM from scratch; write the checkpoint ``out``.

    Args:
        out: checkpoint path (``.pt``); the run folder is ``out`` with suffix ``.run``.
        config: settings (default: the ``default`` preset).
        overwrite: replace an existing checkpoint and start over.
        resume: continue an interrupted run from its saved state.
        texts: training texts per language (default: the corpus ``train`` split of
            ``config.languages``).
        eval_texts: held-out texts per language (default: ``config.eval_texts`` texts per
            language from the corpus ``test`` split).
        preset: name of the preset the config came from (recorded in provenance).
        command: the command line (recorded in provenance).

    Returns:
        The checkpoint path, final held-out metrics (``bpb_<lang>``, ``loss_<lang>``, and the
        unigram baseline's ``unigram_bpb_<lang>``, ``unigram_loss_<lang>``) and run details.
    """
    t0 = time.perf_counter()
    if config is None:
        from .presets import preset_config

        config, preset = preset_config("pretrain", preset or "default"), preset or "default"
    config.validate()
    acc = make_accelerator(config)
    out, run_dir = prepare_output(out, overwrite, resume, acc)
    source = "user" if texts is not None else "corpus"
    if texts is None:
        texts = corpus_texts(
            config.languages, "train", max_texts=config.max_texts, seed=config.seed
        )
    else:
        check_languages(list(texts))
    if eval_texts is None:
        langs = config.eval_languages or list(dict.fromkeys([*config.languages, "sv"]))
        eval_texts = corpus_texts(langs, "test", max_texts=config.eval_texts, seed=config.seed)
    train_list = [t for lang in texts for t in texts[lang] if t.strip()]
    if not train_list:
        raise ValueError("no training texts; pass texts or choose corpus languages")
    tok = train_bpe(train_list, config.vocab_size, max_length=config.seq_len)
    blocks = pack_texts(tok, train_list, config.seq_len)
    model = build_model(config, tok)
    data = {
        "source": source,
        "languages": list(texts),
        "split": "train",
        "n_texts": {lang: len(v) for lang, v in texts.items()},
        "n_tokens": int(blocks.numel()),
        "n_blocks": int(blocks.shape[0]),
        "eval": {"split": "test", "n_texts": {lang: len(v) for lang, v in eval_texts.items()}},
    }
    run_key = {
        "method": "pretrain",
        "config": config.to_dict(),
        "data": data,
        "tokenizer": tokenizer_sha(tok),
    }
    log.info(
        "pretraining %s (%d blocks of %d tokens)", config.arch, blocks.shape[0], config.seq_len
    )
    loop = run_loop(
        model,
        list(blocks),
        lm_collate,
        lm_loss,
        config,
        run_dir,
        eval_fn=lambda m: bpb_by_language(m, tok, eval_texts),
        run_key=run_key,
        accelerator=acc,
        label="pretrain",
    )
    metrics = dict(loop.eval)
    if acc.is_main_process:
        for lang, items in eval_texts.items():
            uni = unigram_nll(tok, train_list, items)
            metrics[f"unigram_bpb_{lang}"] = uni.bits_per_byte
            metrics[f"unigram_loss_{lang}"] = uni.nats_per_token
    provenance = {
        "method": "pretrain",
        "parent": None,
        "config": config.to_dict(),
        "preset": preset,
        "data": data,
        "seed": config.seed,
        "metrics": metrics,
        "training": training_record(loop, config, acc),
        "command": command,
    }
    finish(out, run_dir, loop.model, tok, provenance, acc)
    return TrainResult(
        path=out,
        metrics=metrics,
        run_dir=run_dir,
        steps=loop.steps,
        tokens=loop.tokens,
        seconds=time.perf_counter() - t0,
        provenance=provenance,
    )
