"""The store folder: checking it can hold a store, and that the disk has room."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .manifest import human_bytes
from .plan import Plan
from .store import EXAMPLES, MANIFEST
from .writer import StoreWriteError

__all__ = ["check_space", "new_folders", "prepare_out", "remove_empty", "unwritable"]

log = logging.getLogger("transferlens.capture")

LARGE = 2**30  # from this size on, the disk estimate is logged as a warning (seen by default)

_OURS = {MANIFEST, EXAMPLES, "rows", "acts"}


def prepare_out(path: Path, overwrite: bool) -> dict[str, Any] | None:
    """Make sure ``path`` can hold a store; return its manifest if it already is one."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"out={path} is a file; give a folder for the store")
    if path.exists():
        entries = {p.name for p in path.iterdir() if not p.name.endswith(".tmp")}
        if MANIFEST in entries and not overwrite:
            try:
                manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            except ValueError:  # cut JSON or not UTF-8
                manifest = None
            if not isinstance(manifest, dict):
                raise ValueError(
                    f"out={path} holds a store whose {MANIFEST} is damaged; pass "
                    "overwrite=True (--overwrite) to capture it again"
                )
            return manifest
        if entries - _OURS:
            raise FileExistsError(
                f"out={path} exists and is not an activation store; choose a new or empty folder"
            )
        for name in sorted(entries & _OURS):
            p = path / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        for tmp in path.rglob(".*.tmp"):
            tmp.unlink()
    except OSError as e:
        raise unwritable(path, e) from None
    return None


def new_folders(path: Path) -> list[Path]:
    """The folders that creating ``path`` (with its parents) would make, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: undo a failed start."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:  # not empty (or gone): leave it and everything above
            return


def unwritable(path: Path, err: OSError) -> OSError:
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionError(
            f"cannot write the activation store to {path}: "
            f"{err.strerror or 'permission denied'}; choose a writable folder "
            "with out="
        )
    e = StoreWriteError(f"cannot write the activation store to {path}: {err.strerror or err}")
    e.errno = err.errno
    return e


def check_space(
    outs: Sequence[Path], manifests: list[dict[str, Any]], plan: Plan, finished: list[set[int]]
) -> None:
    for m, path in enumerate(outs):
        todo_rows = sum(s["rows"] for s in plan.shards if s["index"] not in finished[m])
        need = manifests[m]["bytes"] * (todo_rows / max(1, plan.rows))
        log.log(
            logging.WARNING if need >= LARGE else logging.INFO,
            "capture of %d rows x %d sites (%s) will need %s on disk in %s",
            plan.rows,
            len(manifests[m]["sites"]),
            manifests[m]["dtype"],
            human_bytes(need),
            path,
        )
        free = shutil.disk_usage(path).free
        if need > free:
            e = StoreWriteError(
                f"not enough disk space for the activation store {path}: it "
                f"needs {human_bytes(need)}, {human_bytes(free)} are free"
            )
            e.errno = errno.ENOSPC
            raise e
