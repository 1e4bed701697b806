"""LoRA through peft: target-module validation, wrapping, and the checkpoint's adapter record."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import FinetuneConfig

__all__ = [
    "adapter_record",
    "apply_lora",
    "check_target_modules",
    "linear_module_names",
    "lora_config_dict",
]


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted short names of the model's linear layers (``q_proj``, ``c_attn``, ...).

    GPT-2's ``Conv1D`` layers count as linear; the output head (``lm_head``) does not.
    """
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, Conv1D)):
            short = full.rsplit(".", 1)[-1]
            if short != "lm_head":
                names.add(short)
    return sorted(names)


def check_target_modules(model: nn.Module, targets: list[str] | None) -> list[str]:
    """The LoRA target modules to use (None = every linear layer but the output head).

    Raises:
        ValueError: a name the model does not have (the message lists the ones it has).
    """
    available = linear_module_names(model)
    chosen = list(targets) if targets else available
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise ValueError(
            f"unknown LoRA target module(s) {', '.join(unknown)}; this model's linear modules "
            f"are {', '.join(available)}"
        )
    return sorted(chosen)


def apply_lora(model: nn.Module, config: FinetuneConfig) -> tuple[nn.Module, Any]:
    """Wrap ``model`` in a peft LoRA adapter; only the adapter weights train.

    Args:
        model: a Hugging Face causal LM.
        config: ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` (None =
            every linear layer of the transformer blocks).

    The adapter's random start weights are drawn from ``config.seed`` (on a forked random
    state: the caller's stays as it was), so the same config gives the same adapter in any
    process and another seed another one.

    Returns:
        (peft model, LoraConfig).

    Raises:
        ValueError: a target module the model does not have (the message lists the ones it
            has).
    """
    from peft import LoraConfig, get_peft_model

    targets = check_target_modules(model, config.target_modules)
    from transformers.pytorch_utils import Conv1D

    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())
    lcfg = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
    )
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)
        return get_peft_model(model, lcfg), lcfg


def lora_config_dict(lcfg: Any) -> dict[str, Any]:
    """The LoraConfig as plain JSON (sets become sorted lists; non-JSON fields are dropped)."""
    import json

    out = {}
    for k, v in lcfg.to_dict().items():
        if isinstance(v, set):
            v = sorted(v)
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    out.pop("runtime_config", None)
    out.pop("base_model_name_or_path", None)  # the checkpoint's adapter.parent names the parent
    return out


def adapter_record(model: nn.Module, lcfg: Any, parent: dict[str, str]) -> dict[str, Any]:
    """The ``adapter=`` argument of :func:`~transferlens.models.save_checkpoint`."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {"state_dict": state, "peft_config": lora_config_dict(lcfg), "parent": parent}
