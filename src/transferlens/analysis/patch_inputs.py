"""Inputs of a patching run: prompts as token ids, clean/corrupt pairs, Gaussian-noise
corruption, and the plain-JSON description of a run. Re-exported by
:mod:`transferlens.analysis.patching`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.handle import ModelHandle
from .patch_metrics import vocab_size

__all__ = ["GaussianNoise", "encode_prompts", "prepare_inputs", "run_config"]


@dataclass(frozen=True)
class GaussianNoise:
    """ROME-style corruption: add ``N(0, σ²)`` noise to the ``embed`` site at ``positions``.

    ``σ = scale × std(W_E) × embed_scale``, where ``W_E`` is the input-embedding matrix and
    ``embed_scale`` the family's embedding multiplier (√d_model in Gemma, 1 elsewhere), so the
    noise has the same size relative to the embeddings in every family. Seeded.
    """

    positions: Sequence[int]
    scale: float = 3.0
    seed: int = 0

    def sigma(self, handle: ModelHandle) -> float:
        """The noise standard deviation for this model."""
        emb = handle.sitemap.root.get_input_embeddings()
        mult = float(getattr(emb, "scalar_embed_scale", 1.0))
        return self.scale * float(emb.weight.detach().double().std()) * mult

    def delta(self, handle: ModelHandle, tokens: torch.Tensor) -> torch.Tensor:
        """``(n_prompts, pos, d_model)`` noise, zero outside ``positions``."""
        n, t = tokens.shape
        pos = _positions(self.positions, t, what="noise position")
        gen = torch.Generator().manual_seed(int(self.seed))
        eps = torch.randn((n, len(pos), handle.sitemap.d_model), generator=gen, dtype=torch.float64)
        out = torch.zeros((n, t, handle.sitemap.d_model), dtype=torch.float64)
        out[:, pos] = self.sigma(handle) * eps
        return out.to(device=handle.device, dtype=handle.dtype)


def _positions(positions: Sequence[int], n_pos: int, *, what: str = "position") -> list[int]:
    out = []
    for p in positions:
        q = int(p) + n_pos if int(p) < 0 else int(p)
        if not 0 <= q < n_pos:
            raise ValueError(f"{what} {p} is out of range for {n_pos} tokens")
        if q in out:
            raise ValueError(f"{what} {p} is given twice")
        out.append(q)
    return out


def encode_prompts(
    handle: ModelHandle, prompts: str | Sequence[str] | torch.Tensor, *, what: str = "prompt"
) -> torch.Tensor:
    """Token ids ``(n_prompts, pos)`` of prompts that must all have the same token length.

    Strings are tokenised one by one with the tokenizer's special tokens (BOS); a tensor of
    ids is checked against the vocabulary.
    """
    vocab = vocab_size(handle)
    if isinstance(prompts, torch.Tensor):
        ids = prompts.long()
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(
                f"{what} ids must be (n_prompts, pos), got shape {tuple(prompts.shape)}"
            )
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"{what} ids must be in 0..{vocab - 1}")
        return ids.to(handle.device)
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise ValueError(f"no {what}s given")
    if handle.tokenizer is None:
        raise ValueError("the model has no tokenizer; pass token ids or load it with tokenizer=...")
    enc = [handle.tokenizer(t)["input_ids"] for t in texts]
    lengths = sorted({len(e) for e in enc})
    if len(lengths) > 1:
        raise ValueError(
            f"the {what}s have different token lengths ({', '.join(map(str, lengths))}); "
            "patch prompts of one length per call"
        )
    return torch.tensor(enc, dtype=torch.long, device=handle.device)


def prepare_inputs(
    handle: ModelHandle,
    clean: str | Sequence[str] | torch.Tensor,
    corrupt: str | Sequence[str] | torch.Tensor | GaussianNoise,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(clean_ids, corrupt_ids, embed_delta)`` for a clean/corrupt pair.

    Raises:
        ValueError: clean and corrupt prompts of different token lengths (both named).
    """
    clean_ids = encode_prompts(handle, clean, what="clean prompt")
    if isinstance(corrupt, GaussianNoise):
        return clean_ids, clean_ids, corrupt.delta(handle, clean_ids)
    corrupt_ids = encode_prompts(handle, corrupt, what="corrupt prompt")
    if corrupt_ids.shape[0] != clean_ids.shape[0]:
        raise ValueError(
            f"{clean_ids.shape[0]} clean prompts but {corrupt_ids.shape[0]} corrupt prompts"
        )
    if corrupt_ids.shape[1] != clean_ids.shape[1]:
        raise ValueError(
            f"the clean prompt is {clean_ids.shape[1]} tokens but the corrupt prompt is "
            f"{corrupt_ids.shape[1]} tokens; counterfactual prompts must have the same token length"
        )
    return clean_ids, corrupt_ids, None


def run_config(
    handle: ModelHandle,
    corrupt: Any,
    component: str,
    direction: str,
    by_position: bool,
    metric: str,
    n_prompts: int,
    n_pos: int,
) -> dict[str, Any]:
    """The plain-JSON description of a within-model patching run."""
    config: dict[str, Any] = {
        "component": component,
        "direction": direction,
        "by_position": by_position,
        "metric": metric,
        "n_prompts": n_prompts,
        "n_pos": n_pos,
        "corruption": "gaussian_noise" if isinstance(corrupt, GaussianNoise) else "counterfactual",
    }
    if isinstance(corrupt, GaussianNoise):
        config.update(
            noise_positions=list(corrupt.positions),
            noise_scale=corrupt.scale,
            noise_seed=corrupt.seed,
            noise_sigma=corrupt.sigma(handle),
        )
    return config
