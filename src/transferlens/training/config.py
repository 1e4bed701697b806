"""One small dataclass config per training method.

:class:`TrainConfig` holds the settings of the training loop that every method shares;
:class:`PretrainConfig`, :class:`AdaptConfig`, :class:`SFTConfig` and :class:`DPOConfig` add
what their method needs. Every config round-trips through plain JSON with
:meth:`~TrainConfig.to_dict` / :meth:`~TrainConfig.from_dict` and is stored in the provenance
of the checkpoint it made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "AdaptConfig",
    "DPOConfig",
    "FinetuneConfig",
    "PretrainConfig",
    "SFTConfig",
    "TrainConfig",
]

_SCHEDULES = ("cosine", "linear", "constant")
_PRECISIONS = ("auto", "no", "bf16", "fp16")


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """Convert strings (command-line values) and tuples to the field's declared type."""
    optional = "None" in annotation
    if value is None or (optional and value in ("None", "none", "")):
        if not optional:
            raise ValueError(f"{name} must not be None")
        return None
    base = annotation.replace(" | None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "float":
            return float(value)
        if base.startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {base}, got {value!r}") from None
    return value


@dataclass
class TrainConfig:
    """Settings of the training loop, shared by every method.

    Attributes:
        seed: seed for model init, data order and dropout; same seed -> same weights.
        steps: number of optimiser steps.
        batch_size: sequences per micro-batch on each process.
        grad_accum: micro-batches accumulated per optimiser step (effective batch =
            ``batch_size * grad_accum * processes``).
        lr: peak learning rate (AdamW).
        min_lr_ratio: the schedule decays to ``lr * min_lr_ratio``.
        schedule: ``cosine``, ``linear`` (decay after warm-up) or ``constant``.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        weight_decay: AdamW weight decay (matrices only; not norms, biases).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        max_grad_norm: clip the global gradient norm to this (0 = no clipping).
        seq_len: tokens per training sequence (packed blocks for language modelling,
            the truncation length for prompt/response data).
        eval_every: evaluate on held-out data every N steps (and at the end; 0 = end only).
        eval_texts: held-out texts (or examples) per language or task used for evaluation.
        save_every: save the resumable state in the run folder every N steps (0 = never).
        log_every: write a line to the JSONL log every N steps.
        mixed_precision: ``auto`` (bf16 on a GPU that has it, off on CPU), ``no``,
            ``bf16`` or ``fp16`` (GPU only).
        cpu: train on the CPU even when a GPU is present.
    """

    method: ClassVar[str] = "train"

    seed: int = 0
    steps: int = 200
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    seq_len: int = 128
    eval_every: int = 100
    eval_texts: int = 64
    save_every: int = 50
    log_every: int = 10
    mixed_precision: str = "auto"
    cpu: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (lists, not tuples)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict; unknown keys are an error (one line naming them)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ValueError(
                f"unknown {cls.method} config field(s) {', '.join(unknown)}; "
                f"valid fields: {', '.join(names)}"
            )
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        cfg = cls(**{k: _coerce(k, v, types[k]) for k, v in d.items()})
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names are an error)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Check ranges and choices; raises ValueError with a one-line message."""
        positive = ("steps", "batch_size", "grad_accum", "seq_len", "eval_texts", "log_every")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("eval_every", "save_every", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; use one of {', '.join(_SCHEDULES)}"
            )
        if self.mixed_precision not in _PRECISIONS:
            raise ValueError(
                f"unknown mixed_precision {self.mixed_precision!r}; use one of "
                f"{', '.join(_PRECISIONS)}"
            )
        if not self.max_grad_norm >= 0:  # inf: no clipping
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")


@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining a small causal LM (and its byte-level BPE tokenizer) from scratch.

    Attributes:
        languages: corpus languages to train on (default English + German, so Swedish is
            unseen by the base model).
        arch: ``llama`` (RMSNorm, rotary, SwiGLU; default) or ``gpt2``.
        vocab_size: BPE vocabulary size (special tokens included).
        n_layers: transformer blocks.
        d_model: hidden size.
        n_heads: attention heads.
        n_kv_heads: key/value heads (llama only; None = ``n_heads``).
        d_ff: MLP hidden size.
        max_texts: use at most this many training texts per language (None = all).
        eval_languages: languages of the held-out evaluation (None = ``languages`` plus
            Swedish, so the log shows the unseen language too).

    Defaults that differ from :class:`TrainConfig`: ``steps=260``, ``lr=5e-3``.
    """

    method: ClassVar[str] = "pretrain"

    steps: int = 260
    lr: float = 5e-3
    languages: list[str] = field(default_factory=lambda: ["en", "de"])
    arch: str = "llama"
    vocab_size: int = 4096
    n_layers: int = 4
    d_model: int = 96
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int = 288
    max_texts: int | None = None
    eval_languages: list[str] | None = None

    def validate(self) -> None:
        super().validate()
        if self.arch not in ("llama", "gpt2"):
            raise ValueError(f"unknown arch {self.arch!r}; use llama or gpt2")
        if not self.languages:
            raise ValueError("languages is empty; name at least one corpus language (e.g. en)")
        for name in ("n_layers", "d_model", "n_heads", "d_ff"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_kv_heads is not None and int(self.n_kv_heads) <= 0:
            raise ValueError(f"n_kv_heads must be a positive integer, got {self.n_kv_heads!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {kv}")
        if self.vocab_size < 300:
            raise ValueError(
                f"vocab_size {self.vocab_size} is too small for byte-level BPE (256 bytes + "
                "special tokens); use at least 300"
            )


@dataclass
class FinetuneConfig(TrainConfig):
    """Fields shared by the methods that start from a parent model (adapt, sft, dpo).

    Attributes:
        tuning: ``full`` (every weight trains) or ``lora`` (a peft LoRA adapter; the
            checkpoint stores only the adapter and names its parent).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA input.
        target_modules: names of the linear modules that get adapters (None = every
            linear layer in the transformer blocks); unknown names are an error that
            lists the model's linear modules.
        max_examples: use at most this many training texts/examples (None = all).
    """

    method: ClassVar[str] = "finetune"

    tuning: str = "full"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    max_examples: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.tuning not in ("full", "lora"):
            raise ValueError(f"unknown tuning {self.tuning!r}; use full or lora")
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be a positive integer, got {self.lora_r!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.max_examples is not None and int(self.max_examples) <= 0:
            raise ValueError(
                f"max_examples must be a positive integer (or None: all), got {self.max_examples!r}"
            )
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")


@dataclass
class AdaptConfig(FinetuneConfig):
    """Continued pretraining on a new language.

    Attributes:
        language: target language (default Swedish).
        extend_vocab: add this many new tokens from a BPE trained on the target language
            (0 = keep the vocabulary); new embeddings start as the mean of the embeddings of
            their pieces under the old tokenizer. Full fine-tuning only.
        eval_languages: other languages whose held-out loss is reported (forgetting).

    Defaults that differ from :class:`TrainConfig`: ``steps=150``, ``lr=5e-3``.
    """

    method: ClassVar[str] = "adapt"

    steps: int = 150
    lr: float = 5e-3
    language: str = "sv"
    extend_vocab: int = 0
    eval_languages: list[str] = field(default_factory=lambda: ["en", "de"])

    def validate(self) -> None:
        super().validate()
        if self.extend_vocab < 0:
            raise ValueError(f"extend_vocab must be >= 0, got {self.extend_vocab!r}")
        if self.extend_vocab and self.tuning == "lora":
            raise ValueError(
                "vocabulary extension needs full fine-tuning (the new embedding rows train); "
                "use tuning=full (--tuning full) or extend_vocab=0"
            )


@dataclass
class SFTConfig(FinetuneConfig):
    """Supervised instruction tuning on prompt/response pairs (loss on the response only).

    Attributes:
        task: ``topic`` (classify a help paragraph into its module), ``translation``
            (English -> ``target``), or a path to a JSONL file of ``{"prompt", "response"}``.
        eval_data: JSONL file of held-out pairs for a user task (None = hold out
            ``eval_fraction`` of ``task``).
        eval_fraction: share of a user JSONL file held out when ``eval_data`` is None.
        source: source language of the built-in tasks.
        target: target language of the translation task.
        topics: corpus topics of the topic task (None = every help module).
        max_label_candidates: a user task with at most this many distinct responses is
            also scored as classification (log-likelihood of each response).

    Defaults that differ from :class:`TrainConfig`: ``steps=250``, ``batch_size=32``,
    ``lr=5e-3``, ``eval_texts=400`` (held-out examples).
    """

    method: ClassVar[str] = "sft"

    steps: int = 250
    batch_size: int = 32
    lr: float = 5e-3
    eval_texts: int = 400
    task: str = "topic"
    eval_data: str | None = None
    eval_fraction: float = 0.1
    source: str = "en"
    target: str = "sv"
    topics: list[str] | None = None
    max_label_candidates: int = 20

    def validate(self) -> None:
        super().validate()
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        if self.eval_data and self.task in ("topic", "translation"):
            raise ValueError(
                f"eval_data (--eval-data) is for a user task (--task FILE.jsonl); the built-in "
                f"task {self.task!r} holds out the corpus test split itself"
            )


@dataclass
class DPOConfig(FinetuneConfig):
    """Direct preference optimisation against a frozen reference (the parent).

    Attributes:
        pairs: ``builtin`` (chosen = the Swedish translation; rejected = a Danish/German
            translation of the same paragraph or the Swedish text of another one) or a path
            to a JSONL file of ``{"prompt", "chosen", "rejected"}``.
        eval_data: JSONL file of held-out triples for user pairs (None = hold out
            ``eval_fraction``).
        eval_fraction: share of a user JSONL file held out when ``eval_data`` is None.
        beta: DPO temperature (strength of the pull towards the reference).
        swap: exchange chosen and rejected (the negative control).
        source: source language of the built-in prompts.
        target: language of the chosen answers.

    Defaults that differ from :class:`FinetuneConfig`: ``steps=100``, ``batch_size=8``
    (triples), ``lr=1e-3``, ``warmup_steps=10``, ``max_examples=2000``, ``eval_texts=300``
    (held-out triples).
    """

    method: ClassVar[str] = "dpo"

    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 10
    max_examples: int | None = 2000
    eval_texts: int = 300
    pairs: str = "builtin"
    eval_data: str | None = None
    eval_fraction: float = 0.1
    beta: float = 0.1
    swap: bool = False
    source: str = "en"
    target: str = "sv"

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        if self.eval_data and self.pairs == "builtin":
            raise ValueError(
                "eval_data (--eval-data) is for user pairs (--pairs FILE.jsonl); the built-in "
                "pairs hold out the corpus test split themselves"
            )
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
