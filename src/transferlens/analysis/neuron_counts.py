"""MLP neuron activation counts per language: the input of the LAPE selection
(:mod:`transferlens.analysis.neurons`).

A *neuron* is one unit of an MLP's hidden layer after the nonlinearity, as in Tang et al.'s
reference implementation: for gated MLPs (Llama, Gemma 3) the output of the activation
function, ``act(gate(x))`` — not the down projection's input ``act(gate(x)) · up(x)``, whose
sign also depends on ``up(x)``; for GPT-2 and BERT (no gate) the down projection's input.
:data:`NEURON_INPUTS` names the module per model family. Counts are kept per language and
per group of texts, so that the selection can be bootstrapped over texts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.handle import ModelHandle
from ..models.sitemap import SiteMap
from .lens import encode_right_padded

__all__ = ["NEURON_INPUTS", "NeuronCounts", "neuron_activation_counts"]

# family -> (path relative to a block, "input" or "output"): the module whose input or
# output holds the MLP's neurons, act(gate(x)) for gated MLPs.
NEURON_INPUTS: dict[str, tuple[str, str]] = {
    "gpt2": ("mlp.c_proj", "input"),
    "llama": ("mlp.act_fn", "output"),
    "gemma3": ("mlp.act_fn", "output"),
    "bert": ("output.dense", "input"),
}


def _module(block: nn.Module, path: str) -> nn.Module:
    mod = block
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


@contextmanager
def _neuron_inputs(sitemap: SiteMap, fn: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(layer, neurons)`` with each block's MLP hidden activations
    (``(batch, pos, n_neurons)``) for the duration of the block; hooks removed in ``finally``."""
    where = NEURON_INPUTS.get(sitemap.family.name)
    if where is None:
        raise ValueError(
            f"neuron activations are not mapped for the {sitemap.family.name} family; "
            "add its activation's path to transferlens.analysis.neurons.NEURON_INPUTS"
        )
    path, side = where
    handles = []
    try:
        for layer, block in enumerate(sitemap.blocks):
            mod = _module(block, path)
            if side == "input":

                def pre_hook(module, args, layer=layer):
                    fn(layer, args[0])

                handles.append(mod.register_forward_pre_hook(pre_hook))
            else:

                def hook(module, args, output, layer=layer):
                    fn(layer, output)

                handles.append(mod.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class NeuronCounts:
    """How often each neuron was positive, per language and group of texts.

    Attributes:
        languages: language codes, in order.
        positive: ``(K, U, L, N)`` int64: tokens with activation > 0, per language, text
            group, layer, neuron.
        tokens: ``(K, U)`` int64: tokens counted per language and group.
        n_groups: per language, how many of the U groups are real (a language with fewer
            texts than groups has fewer; the rest hold zeros).
        n_texts: per language, the number of texts.
    """

    languages: tuple[str, ...]
    positive: np.ndarray
    tokens: np.ndarray
    n_groups: tuple[int, ...]
    n_texts: tuple[int, ...] = ()

    def probabilities(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``(K, L, N)`` activation probabilities; ``weights`` (``(K, U)``) re-weights groups
        (a bootstrap resample)."""
        if weights is None:
            pos = self.positive.sum(axis=1)
            tok = self.tokens.sum(axis=1)
        else:
            pos = np.einsum("ku,kuln->kln", weights, self.positive)
            tok = (weights * self.tokens).sum(axis=1)
        return pos / np.maximum(tok, 1)[:, None, None]

    def resample_weights(self, rng: np.random.Generator) -> np.ndarray:
        """Bootstrap weights ``(K, U)``: each language's groups drawn with replacement."""
        K, U = self.tokens.shape
        w = np.zeros((K, U))
        for k, g in enumerate(self.n_groups):
            w[k, :g] = np.bincount(rng.integers(0, g, size=g), minlength=g)
        return w


def neuron_activation_counts(
    handle: ModelHandle,
    texts_by_language: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 8,
    n_groups: int = 20,
    max_length: int | None = None,
) -> NeuronCounts:
    """Count, per language, how often each MLP neuron is positive over the texts' tokens.

    Padding and special tokens (BOS, EOS, CLS, SEP) are not counted. Text ``i`` of a language
    goes to group ``i mod n_groups``; the groups are the units of the bootstrap.

    Args:
        handle: the model.
        texts_by_language: language code -> texts (e.g. parallel corpus columns).
        batch_size: texts per forward pass.
        n_groups: text groups per language (bootstrap units).
        max_length: truncate texts to this many tokens.

    Returns:
        :class:`NeuronCounts`.
    """
    if not texts_by_language:
        raise ValueError("no languages given; pass {language: [texts, ...]}")
    if n_groups < 1 or batch_size < 1:
        raise ValueError("n_groups and batch_size must be at least 1")
    langs = tuple(texts_by_language)
    empty = [lang for lang in langs if not texts_by_language[lang]]
    if empty:
        raise ValueError(f"no texts for {empty}; every language needs at least one text")
    sm = handle.sitemap
    n_layers = len(sm.blocks)
    mask: dict[str, torch.Tensor] = {}
    per_row: dict[int, torch.Tensor] = {}

    def grab(layer: int, act: torch.Tensor) -> None:
        valid = mask["valid"]
        per_row[layer] = ((act > 0) & valid[..., None]).sum(dim=1).cpu()  # (b, N)

    counts: np.ndarray | None = None
    tokens = np.zeros((len(langs), n_groups), dtype=np.int64)
    with _neuron_inputs(sm, grab), torch.no_grad():
        for k, lang in enumerate(langs):
            texts = list(texts_by_language[lang])
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                enc = encode_right_padded(handle.tokenizer, batch, max_length=max_length)
                valid = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
                mask["valid"] = valid.to(handle.device)
                per_row.clear()
                handle.model(
                    input_ids=enc["input_ids"].to(handle.device),
                    attention_mask=enc["attention_mask"].to(handle.device),
                )
                if len(per_row) != n_layers:
                    raise RuntimeError(f"{handle.name}: not every MLP ran in the forward pass")
                stacked = torch.stack([per_row[li] for li in range(n_layers)], dim=1).numpy()
                if counts is None:
                    counts = np.zeros(
                        (len(langs), n_groups, n_layers, stacked.shape[-1]), dtype=np.int64
                    )
                n_tok = valid.sum(dim=1).numpy()
                for i in range(len(batch)):
                    g = (start + i) % n_groups
                    counts[k, g] += stacked[i]
                    tokens[k, g] += int(n_tok[i])
    assert counts is not None
    n_texts = tuple(len(texts_by_language[lang]) for lang in langs)
    no_tokens = [lang for k, lang in enumerate(langs) if tokens[k].sum() == 0]
    if no_tokens:
        raise ValueError(f"the texts of {no_tokens} hold no tokens besides special tokens")
    return NeuronCounts(
        languages=langs,
        positive=counts,
        tokens=tokens,
        n_groups=tuple(min(n_groups, n) for n in n_texts),
        n_texts=n_texts,
    )
