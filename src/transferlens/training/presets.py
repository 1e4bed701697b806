"""Named settings: ``default`` (what a user runs on a laptop CPU) and ``tiny`` (demo, tests).

A preset is a set of config overrides per method; :func:`preset_config` builds the config.
Measured run times and losses of both presets are in docs/training.md.
"""

from __future__ import annotations

from typing import Any

from .config import AdaptConfig, DPOConfig, PretrainConfig, SFTConfig, TrainConfig

__all__ = ["CONFIGS", "PRESETS", "preset_config"]

#: Method name -> config class.
CONFIGS: dict[str, type[TrainConfig]] = {
    "pretrain": PretrainConfig,
    "adapt": AdaptConfig,
    "sft": SFTConfig,
    "dpo": DPOConfig,
}

#: Preset name -> method -> field overrides (fields not named keep the config's default).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "pretrain": {},
        "adapt": {},
        "sft": {},
        "dpo": {},
    },
    "tiny": {
        "pretrain": {
            "steps": 250,
            "batch_size": 16,
            "seq_len": 64,
            "vocab_size": 1024,
            "n_layers": 2,
            "d_model": 64,
            "n_heads": 4,
            "d_ff": 192,
            "lr": 5e-3,
            "warmup_steps": 10,
            "max_texts": 6000,
            "eval_every": 0,
            "eval_texts": 48,
            "save_every": 50,
        },
        "adapt": {
            "steps": 100,
            "batch_size": 16,
            "seq_len": 64,
            "lr": 5e-3,
            "warmup_steps": 5,
            "max_examples": 3000,
            "eval_every": 0,
            "eval_texts": 48,
            "save_every": 40,
        },
        "sft": {
            "steps": 120,
            "batch_size": 32,
            "seq_len": 96,
            "lr": 1e-2,
            "warmup_steps": 10,
            "eval_every": 0,
            "eval_texts": 200,
            "save_every": 40,
        },
        "dpo": {
            "steps": 40,
            "batch_size": 8,
            "seq_len": 96,
            "lr": 2e-3,
            "warmup_steps": 4,
            "max_examples": 600,
            "eval_every": 0,
            "eval_texts": 300,
            "save_every": 20,
            "beta": 0.05,
        },
    },
}


def preset_config(method: str, preset: str = "default", **overrides: Any) -> TrainConfig:
    """The config of ``method`` under ``preset``, with ``overrides`` applied.

    Raises:
        ValueError: unknown method, preset or field (one line listing the valid ones).
    """
    if method not in CONFIGS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(CONFIGS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    fields = {**PRESETS[preset][method], **overrides}
    return CONFIGS[method].from_dict(fields)
