"""Configs: JSON round trip, validation with one-line errors, presets."""

from __future__ import annotations

import json

import pytest

from transferlens.training import (
    PRESETS,
    AdaptConfig,
    DPOConfig,
    PretrainConfig,
    SFTConfig,
    preset_config,
)

CONFIGS = [PretrainConfig, AdaptConfig, SFTConfig, DPOConfig]


@pytest.mark.parametrize("cls", CONFIGS)
def test_round_trip_through_json(cls):
    cfg = cls(seed=3, steps=7)
    d = json.loads(json.dumps(cfg.to_dict()))
    back = cls.from_dict(d)
    assert back == cfg
    assert back.to_dict() == d


def test_unknown_field_lists_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown adapt config field\(s\) stepz; valid fields:.*steps"
    ):
        AdaptConfig.from_dict({"stepz": 3})


def test_strings_are_coerced_like_command_line_values():
    cfg = AdaptConfig.from_dict(
        {
            "lr": "0.01",
            "steps": "5",
            "cpu": "true",
            "max_examples": "None",
            "target_modules": "q_proj, v_proj",
            "tuning": "lora",
        }
    )
    assert (cfg.lr, cfg.steps, cfg.cpu, cfg.max_examples) == (0.01, 5, True, None)
    assert cfg.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="steps must be int, got 'x'"):
        AdaptConfig.from_dict({"steps": "x"})


@pytest.mark.parametrize(
    "cls, bad, message",
    [
        (PretrainConfig, {"steps": 0}, "steps must be a positive integer"),
        (PretrainConfig, {"lr": -1.0}, "lr must be a finite number > 0"),
        (PretrainConfig, {"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
        (PretrainConfig, {"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
        (PretrainConfig, {"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        (PretrainConfig, {"max_grad_norm": float("nan")}, "max_grad_norm must be >= 0"),
        (PretrainConfig, {"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\), got 1.0"),
        (AdaptConfig, {"lora_alpha": float("nan")}, "lora_alpha must be a finite number > 0"),
        (AdaptConfig, {"max_examples": -1}, "max_examples must be a positive integer"),
        (SFTConfig, {"max_examples": 0}, "max_examples must be a positive integer"),
        (PretrainConfig, {"schedule": "step"}, "unknown schedule 'step'; use one of cosine"),
        (PretrainConfig, {"arch": "rnn"}, "unknown arch 'rnn'"),
        (PretrainConfig, {"d_model": 30, "n_heads": 4}, "not divisible by n_heads"),
        (PretrainConfig, {"n_heads": 0}, "n_heads must be a positive integer, got 0"),
        (PretrainConfig, {"n_kv_heads": -2}, "n_kv_heads must be a positive integer, got -2"),
        (PretrainConfig, {"vocab_size": 100}, "too small for byte-level BPE"),
        (PretrainConfig, {"languages": []}, "languages is empty"),
        (AdaptConfig, {"tuning": "qlora"}, "unknown tuning 'qlora'; use full or lora"),
        (AdaptConfig, {"tuning": "lora", "extend_vocab": 10}, "vocabulary extension needs full"),
        (DPOConfig, {"beta": 0.0}, "beta must be a finite number > 0"),
        (DPOConfig, {"beta": float("inf")}, "beta must be a finite number > 0, got inf"),
        (SFTConfig, {"eval_fraction": 1.5}, "eval_fraction must be in"),
        (SFTConfig, {"eval_data": "held.jsonl"}, r"eval_data \(--eval-data\) is for a user task"),
        (DPOConfig, {"eval_data": "held.jsonl"}, r"eval_data \(--eval-data\) is for user pairs"),
        (PretrainConfig, {"mixed_precision": "fp8"}, "unknown mixed_precision 'fp8'"),
    ],
)
def test_bad_values_are_one_line_errors(cls, bad, message):
    with pytest.raises(ValueError, match=message) as info:
        cls.from_dict(bad)
    assert "\n" not in str(info.value)


def test_presets_build_every_method_and_apply_overrides():
    for preset in PRESETS:
        for method in ("pretrain", "adapt", "sft", "dpo"):
            cfg = preset_config(method, preset)
            assert cfg.method == method
    tiny = preset_config("pretrain", "tiny", seed=4)
    assert tiny.seed == 4 and tiny.d_model == PRESETS["tiny"]["pretrain"]["d_model"]
    # the defaults are the dataclass defaults: the "default" preset overrides nothing
    assert preset_config("pretrain") == PretrainConfig()
    with pytest.raises(ValueError, match="unknown preset 'huge'; use one of default, tiny"):
        preset_config("pretrain", "huge")
    with pytest.raises(ValueError, match="unknown method 'rlhf'"):
        preset_config("rlhf")
