"""Activation capture and the on-disk activation store.

``capture(model, data, sites, select=..., out=...)`` runs a model over text with hooks on
named sites (through :func:`transferlens.models.site_hooks`), selects rows (every token,
last token, mean, first sub-token of each word) and writes them to a sharded, resumable,
memory-mapped :class:`ActivationStore` (or returns them in memory).
``capture_pair(base, adapted, ...)`` does the same for two models on the same batches, with
rows aligned across tokenizers. See docs/capture.md.
"""

from .api import CaptureConfig, PairedActivations, capture, capture_pair, resolve_sites
from .inputs import Example, ExampleSource
from .select import SELECTS, Selection
from .store import Activations, ActivationStore, ShardedArray
from .writer import StoreWriteError

__all__ = [
    "SELECTS",
    "ActivationStore",
    "Activations",
    "CaptureConfig",
    "Example",
    "ExampleSource",
    "PairedActivations",
    "Selection",
    "ShardedArray",
    "StoreWriteError",
    "capture",
    "capture_pair",
    "resolve_sites",
]
