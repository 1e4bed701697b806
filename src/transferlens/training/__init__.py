"""Compact training: pretrain a small base model, adapt it to a new language (full or LoRA,
optional vocabulary extension), instruction-tune (SFT) and preference-tune (DPO).

Every method runs the one loop in :mod:`~transferlens.training.loop` (torch + accelerate),
takes one dataclass config (:mod:`~transferlens.training.config`; named presets in
:mod:`~transferlens.training.presets`) and writes a transferlens ``.pt`` checkpoint whose
provenance names its parent, method, config, data and seed. See docs/training.md.
"""

from .adapt import adapt
from .common import TrainResult
from .config import AdaptConfig, DPOConfig, FinetuneConfig, PretrainConfig, SFTConfig, TrainConfig
from .datasets import (
    TOPIC_LABELS,
    corpus_texts,
    load_jsonl,
    preference_pairs,
    topic_task,
    translation_task,
)
from .dpo import dpo
from .loop import DivergenceError, LoopResult, lr_factor, run_loop
from .lora import linear_module_names
from .pair import train_pair
from .presets import PRESETS, preset_config
from .pretrain import pretrain
from .sft import sft
from .tokenizer import extend_vocabulary, train_bpe

__all__ = [
    "PRESETS",
    "TOPIC_LABELS",
    "AdaptConfig",
    "DPOConfig",
    "DivergenceError",
    "FinetuneConfig",
    "LoopResult",
    "PretrainConfig",
    "SFTConfig",
    "TrainConfig",
    "TrainResult",
    "adapt",
    "corpus_texts",
    "dpo",
    "extend_vocabulary",
    "linear_module_names",
    "load_jsonl",
    "lr_factor",
    "preference_pairs",
    "preset_config",
    "pretrain",
    "run_loop",
    "sft",
    "topic_task",
    "train_bpe",
    "train_pair",
    "translation_task",
]
