"""The embedded demo: a tiny base model, its Swedish-adapted child, and their report.

``run_demo(out)`` trains both models with the training module's ``tiny`` preset (reusing the
checkpoints when they are valid), then runs ``compare`` on the pair and returns the path of
``report.html``. Every number in the report is measured on the models trained here: the
fingerprints in ``results.json`` are those of ``out/models/base.pt`` and ``adapted.pt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["DEMO_CONFIG", "run_demo"]

log = logging.getLogger(__name__)

#: Settings of the demo's comparison (small enough for a few minutes on 2 CPU cores).
DEMO_CONFIG = dict(
    languages=["en", "sv", "da", "de", "fi"],
    max_examples=60,
    n_boot=500,
    patch_prompts=20,
    lens_items=80,
    batch_size=16,
    max_length=64,
    name_base="base (en+de)",
    name_adapted="Swedish-adapted",
)


def run_demo(
    out: str | Path = "runs/demo", *, seed: int = 0, progress: bool | None = None, **overrides
) -> Path:
    """Train (or reuse) the tiny pair under ``out/models`` and write ``out/report``.

    Args:
        out: demo folder.
        seed: seed of training and analysis.
        progress: progress bars (default: on a terminal).
        overrides: fields of :class:`~transferlens.compare.CompareConfig` to change.

    Returns:
        The path of ``report.html``.
    """
    from .compare import CompareConfig, compare
    from .training.pair import train_pair

    out = Path(out)
    base, adapted = train_pair(out / "models", preset="tiny", seed=seed)
    cfg = CompareConfig(**{**DEMO_CONFIG, "seed": seed, **overrides})
    return compare(
        base, adapted, out / "report", cfg, command="transferlens demo", progress=progress
    )
