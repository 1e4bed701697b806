"""Finished stages are kept in ``<report>/stages/`` and reused when their key matches.

A stage's key is a hash of the stage name, the fingerprints of the models it used, the part
of the configuration it depends on and the package version; a stage file is written
atomically only when the stage finished, so an interrupted stage is simply recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..results import AnalysisResult, atomic_write_text, to_jsonable

__all__ = ["StageCache", "stage_key"]


#: Raised whenever a stage's numbers change for the same configuration (a fixed estimator, a
#: new sampling rule), so that a re-run into an existing report folder recomputes them.
METHODS = 2


def stage_key(stage: str, fingerprints: dict[str, str], config: dict[str, Any]) -> str:
    from .. import __version__

    doc = {
        "stage": stage,
        "models": fingerprints,
        "config": to_jsonable(config),
        "version": __version__,
        "methods": METHODS,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class StageCache:
    """Stage results on disk, keyed by :func:`stage_key`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.reused: list[str] = []
        self.computed: list[str] = []

    def run(
        self,
        stage: str,
        fingerprints: dict[str, str],
        config: dict[str, Any],
        compute: Callable[[], tuple[list[AnalysisResult], dict[str, Any]]],
    ) -> tuple[list[AnalysisResult], dict[str, Any]]:
        """Return the cached stage output if its key matches, else compute and store it."""
        key = stage_key(stage, fingerprints, config)
        path = self.folder / f"{stage}.json"
        if path.exists():
            try:
                doc = json.loads(path.read_text())
                if doc.get("key") == key:
                    self.reused.append(stage)
                    return (
                        [AnalysisResult.from_dict(r) for r in doc["results"]],
                        doc.get("meta", {}),
                    )
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # unreadable, damaged or old: recompute
        results, meta = compute()
        doc = {
            "key": key,
            "stage": stage,
            "results": [r.to_dict() for r in results],
            "meta": to_jsonable(meta),
        }
        atomic_write_text(path, json.dumps(doc, allow_nan=False))
        self.computed.append(stage)
        return results, meta
