"""Continued pretraining on a new language (default Swedish): full fine-tuning or LoRA,
optionally with vocabulary extension.

Held-out bits per byte are measured on the target language and on ``eval_languages`` before
(the parent) and after training, so the checkpoint records both the gain on the new language
and any forgetting of the old ones. Bits per byte do not depend on the tokenizer, so they
compare across a vocabulary extension.
"""

from __future__ import annotations

import logging
import os
import time

from ..analysis.behaviour import fertility
from .common import (
    TrainResult,
    bpb_by_language,
    finish_finetune,
    lm_collate,
    lm_loss,
    load_parent,
    pack_texts,
    parent_record,
    prepare_output,
    tokenizer_sha,
)
from .config import AdaptConfig
from .datasets import check_languages, corpus_texts
from .loop import make_accelerator, run_loop
from .lora import apply_lora, check_target_modules
from .tokenizer import extend_vocabulary

__all__ = ["adapt"]

log = logging.getLogger(__name__)


def adapt(
    parent: str | os.PathLike,
    out: str | os.PathLike,
    config: AdaptConfig | None = None,
    *,
    overwrite: bool = False,
    resume: bool = True,
    texts: list[str] | None = None,
    eval_texts: dict[str, list[str]] | None = None,
    preset: str | None = None,
    command: str | None = None,
) -> TrainResult:
    """Continue pretraining ``parent`` on ``config.language``; write the checkpoint ``out``.

    Args:
        parent: the parent model (a ``.pt`` checkpoint, HF folder, GGUF file, ...).
        out: checkpoint path (``.pt``). LoRA runs store only the adapter and name the parent
            (path relative to ``out``'s folder, plus its fingerprint).
        config: settings (default: the ``default`` preset).
        overwrite: replace an existing checkpoint and start over.
        resume: continue an interrupted run from its saved state.
        texts: target-language training texts (default: the corpus ``train`` split).
        eval_texts: held-out texts per language (default: ``config.eval_texts`` texts of the
            target and each of ``config.eval_languages`` from the corpus ``test`` split).
        preset: preset name (provenance).
        command: the command line (provenance).

    Returns:
        The checkpoint path and metrics: ``bpb_<lang>``/``loss_<lang>`` after training,
        ``parent_bpb_<lang>``/``parent_loss_<lang>`` before, and the tokenizer's fertility on
        the target language (``fertility``, ``parent_fertility``).

    Raises:
        ValueError: unknown language, too little data, unknown LoRA target modules.
        TransferlensError: the parent is not a causal LM.
    """
    t0 = time.perf_counter()
    if config is None:
        from .presets import preset_config

        config, preset = preset_config("adapt", preset or "default"), preset or "default"
    config.validate()
    lang = check_languages([config.language])[0]
    others = [x for x in check_languages(config.eval_languages or [lang]) if x != lang]
    acc = make_accelerator(config)
    out, run_dir = prepare_output(out, overwrite, resume, acc)
    handle = load_parent(parent)
    parent_rec = parent_record(handle)
    model, tok = handle.model, handle.tokenizer
    if config.tuning == "lora":
        check_target_modules(model, config.target_modules)
    source = "user" if texts is not None else "corpus"
    if texts is None:
        texts = corpus_texts([lang], "train", max_texts=config.max_examples, seed=config.seed)[lang]
    texts = [t for t in texts if t.strip()]
    if eval_texts is None:
        eval_texts = corpus_texts(
            [lang, *others], "test", max_texts=config.eval_texts, seed=config.seed
        )
    metrics = {}
    if acc.is_main_process:
        before = bpb_by_language(model, tok, eval_texts)
        metrics.update({f"parent_{k}": v for k, v in before.items()})
        metrics["parent_fertility"] = fertility(tok, eval_texts.get(lang, texts)).value
    vocab = None
    if config.extend_vocab:
        tok, vocab = extend_vocabulary(tok, model, texts, config.extend_vocab)
    lcfg = None
    if config.tuning == "lora":
        model, lcfg = apply_lora(model, config)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    blocks = pack_texts(tok, texts, config.seq_len)
    data = {
        "source": source,
        "language": lang,
        "split": "train",
        "n_texts": len(texts),
        "n_tokens": int(blocks.numel()),
        "n_blocks": int(blocks.shape[0]),
        "eval": {"split": "test", "n_texts": {k: len(v) for k, v in eval_texts.items()}},
    }
    run_key = {
        "method": "adapt",
        "config": config.to_dict(),
        "data": data,
        "parent": parent_rec["fingerprint"],
        "tokenizer": tokenizer_sha(tok),
    }
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
        label=f"adapt:{lang}",
    )
    metrics.update(loop.eval)
    if acc.is_main_process:
        metrics["fertility"] = fertility(tok, eval_texts.get(lang, texts)).value
    return finish_finetune(
        "adapt",
        out,
        run_dir,
        loop,
        tok,
        config,
        acc,
        parent=parent_rec,
        lora_config=lcfg,
        preset=preset,
        data=data,
        metrics=metrics,
        command=command,
        started=t0,
        extra={"vocab_extension": vocab},
    )
