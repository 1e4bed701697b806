"""A base model and its Swedish-adapted child, trained (or reused) in one call (the demo's
first step)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import TransferlensError
from .adapt import adapt
from .presets import preset_config
from .pretrain import pretrain

__all__ = ["train_pair"]

log = logging.getLogger(__name__)


def _reusable(path: Path, method: str, config: dict, parent_fp: str | None = None) -> bool:
    """Whether ``path`` is a readable checkpoint made by ``method`` with ``config`` (and, for a
    child, from the parent with fingerprint ``parent_fp``)."""
    from ..models import read_checkpoint

    if not path.exists():
        return False
    try:
        prov = read_checkpoint(path)["provenance"]
    except (TransferlensError, ValueError, OSError) as e:
        log.warning("not reusing %s: %s", path, e)
        return False
    if prov.get("method") != method or prov.get("config") != config:
        log.info("not reusing %s: made by another method or config", path)
        return False
    if parent_fp is not None and (prov.get("parent") or {}).get("fingerprint") != parent_fp:
        log.info("not reusing %s: its parent is not the current base model", path)
        return False
    return True


def train_pair(
    out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, reuse: bool = True
) -> tuple[Path, Path]:
    """Pretrain a base model and adapt it to Swedish; reuse valid checkpoints.

    Writes ``out_dir/base.pt`` (pretrain on English + German) and ``out_dir/adapted.pt``
    (continued pretraining on Swedish, full fine-tuning). A checkpoint is reused when it
    reads back, was made with the same method and config (preset + seed), and, for the
    adapted model, from the base model now on disk. An interrupted run resumes.

    Args:
        out_dir: folder for the two checkpoints (and their run folders).
        preset: ``tiny`` (seconds) or ``default`` (a few minutes on a laptop CPU).
        seed: training seed of both models.
        reuse: reuse valid checkpoints (False: always retrain).

    Returns:
        (base checkpoint path, adapted checkpoint path).
    """
    out_dir = Path(out_dir)
    base, adapted = out_dir / "base.pt", out_dir / "adapted.pt"
    base_cfg = preset_config("pretrain", preset, seed=seed)
    adapt_cfg = preset_config("adapt", preset, seed=seed)
    if not (reuse and _reusable(base, "pretrain", base_cfg.to_dict())):
        pretrain(base, base_cfg, overwrite=base.exists() or not reuse, preset=preset)
    from ..models import load_model

    base_fp = load_model(base).fingerprint
    if not (reuse and _reusable(adapted, "adapt", adapt_cfg.to_dict(), base_fp)):
        adapt(base, adapted, adapt_cfg, overwrite=adapted.exists() or not reuse, preset=preset)
    return base, adapted
