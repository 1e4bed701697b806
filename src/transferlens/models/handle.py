"""The model handle every stage receives: model, tokenizer, site map, fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .sitemap import SiteMap, unwrap_model

__all__ = ["ModelHandle", "fingerprint"]


def fingerprint(model: nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (buffers excluded), as hex.

    Tied parameters count once, under their first name. The fingerprint is the cache key of
    every later stage: the same weights give the same fingerprint whatever file they came from.
    TransformerLens ``TransformerBridge`` wraps the modules of the Hugging Face model it holds
    (``..._original_component...``); those wrapper segments are left out of the names, so a
    bridged model has the fingerprint of the model it wraps.
    """
    h = hashlib.sha256()
    for name, p in unwrap_model(model).named_parameters():
        name = name.replace("._original_component", "")
        t = p.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class ModelHandle:
    """A loaded model with what the analyses need to use it.

    Attributes:
        model: the torch module (a Hugging Face model, possibly PEFT-wrapped), in eval mode.
        tokenizer: its tokenizer (with chat template, if any).
        sitemap: resolved sites (:class:`~transferlens.models.sitemap.SiteMap`).
        spec: what it was loaded from (a path, hub id or ``"<module>"``).
        source: kind of spec (``checkpoint``, ``hf``, ``gguf``, ``peft``, ``module``,
            ``transformer_lens``, ``nnsight``, ``hub``).
        provenance: the checkpoint's provenance (empty for other sources).
        name: short display name.
    """

    model: nn.Module
    tokenizer: Any
    sitemap: SiteMap
    spec: str = "<module>"
    source: str = "module"
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = "model"
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights (computed once, on first use)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model)
        return self._fingerprint

    @property
    def config(self) -> Any:
        return self.sitemap.root.config

    @property
    def family(self) -> str:
        return self.sitemap.family.name

    @property
    def n_layers(self) -> int:
        return self.sitemap.n_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description for manifests and reports."""
        return {
            "name": self.name,
            "spec": self.spec,
            "source": self.source,
            "family": self.family,
            "model_type": getattr(self.config, "model_type", None),
            "n_layers": self.n_layers,
            "n_heads": self.sitemap.n_heads,
            "d_model": self.sitemap.d_model,
            "n_params": sum(p.numel() for p in unwrap_model(self.model).parameters()),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fingerprint": self.fingerprint,
            "provenance": self.provenance,
        }
