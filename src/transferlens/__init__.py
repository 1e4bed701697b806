"""transferlens: what did adaptation change inside a language model, and where?

The names below are imported on first use, so ``import transferlens`` stays cheap (torch and
transformers load when a model is first touched).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AnalysisResult": ".results",
    "load_results": ".results",
    "save_results": ".results",
    "ModelHandle": ".models",
    "load_model": ".models",
    "save_checkpoint": ".models",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
