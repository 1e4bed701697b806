"""Writing activations: shards on disk through a background thread, or tensors in memory.

A shard is a run of consecutive batches. Its files are written to temporary names
(``.00003.npy.tmp``) batch by batch as the capture goes, renamed when the shard is full,
and only then is the shard recorded as finished in ``manifest.json`` (itself replaced
atomically). A capture killed at any point therefore leaves a store whose finished shards
are whole; running the same call again skips them and rewrites the rest, giving the same
bytes as an uninterrupted capture.

Writes happen in one background thread fed through a bounded queue, so the forward pass
of the next batch overlaps the disk writes of the last one and at most a few batches of
rows are held in memory at any time.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TransferlensError
from ..results import atomic_write_text
from .select import ROW_DTYPE
from .store import MANIFEST, shard_name, site_dir_name, storage_numpy_dtype

__all__ = ["MemoryWriter", "StoreWriteError", "StoreWriter", "to_numpy", "write_manifest"]

_STOP = object()


class StoreWriteError(OSError, TransferlensError):
    """The store could not be written (disk full, I/O error); finished shards stay valid."""


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU NumPy view of a rows tensor (bfloat16 as its raw ``uint16`` bit patterns)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace ``manifest.json`` atomically."""
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def _write(f: Any, buf: np.ndarray) -> None:
    """Append an array's bytes to an open file (one place, so tests can make it fail)."""
    f.write(memoryview(np.ascontiguousarray(buf)).cast("B"))


def _open_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]):
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(
        f,
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(int(s) for s in shape),
        },
    )
    return f


class StoreWriter:
    """Writes the shards of one store (see module docstring).

    Args:
        path: store folder (exists).
        manifest: the manifest; its ``finished`` list is updated as shards complete.
        background: write in a background thread (False: write inline, for debugging).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, background: bool = True):
        self.path = path
        self.manifest = manifest
        self.dtype = storage_numpy_dtype(manifest["dtype"])
        self.error: BaseException | None = None
        self._files: dict[str, Any] = {}
        self._tmp: dict[Path, Path] = {}
        self._shard: int | None = None
        self._expect = 0
        self._written = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        for site in manifest["sites"]:
            (path / "acts" / site_dir_name(site)).mkdir(parents=True, exist_ok=True)
        (path / "rows").mkdir(parents=True, exist_ok=True)
        if background:
            self._queue = queue.Queue(maxsize=3)
            self._thread = threading.Thread(
                target=self._loop, name="transferlens-store-writer", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ main thread
    def _submit(self, item: tuple) -> None:
        self._raise_if_failed()
        if self._queue is None:
            self._do(item)
        else:
            self._queue.put(item)
        self._raise_if_failed()

    def start_shard(self, k: int, n_rows: int) -> None:
        self._submit(("start", k, n_rows))

    def add(self, arrays: dict[str, torch.Tensor], meta: np.ndarray) -> None:
        """Queue one batch's rows (tensors are moved to CPU here, in the caller's thread)."""
        self._submit(("data", {k: to_numpy(v) for k, v in arrays.items()}, meta))

    def finish_shard(self, k: int) -> None:
        self._submit(("finish", k))

    def close(self) -> None:
        """Wait for pending writes; raise the writer's error if there was one. Unfinished
        shard files are removed."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)  # type: ignore[union-attr]
            self._thread.join()
        self._discard()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        err = self.error
        if err is None:
            return
        shard = f" (shard {self._shard})" if self._shard is not None else ""
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            e = StoreWriteError(
                f"disk full while writing the activation store {self.path}{shard}: finished "
                "shards are kept; free space and run the same call again to resume"
            )
            e.errno = errno.ENOSPC
            raise e from err
        if isinstance(err, PermissionError):
            raise PermissionError(
                f"cannot write the activation store {self.path}{shard}: permission denied; "
                "choose a writable folder with out="
            ) from err
        if isinstance(err, OSError):
            e = StoreWriteError(
                f"could not write the activation store {self.path}{shard}: "
                f"{err.strerror or err}; finished shards are kept: run the same call again "
                "to resume"
            )
            e.errno = err.errno
            raise e from err
        raise err

    # ------------------------------------------------------------------ writer thread
    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue  # drain: the main thread raises on its next call
            try:
                self._do(item)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self.error = e
                self._discard()

    def _do(self, item: tuple) -> None:
        kind = item[0]
        if kind == "start":
            self._start(item[1], item[2])
        elif kind == "data":
            arrays, meta = item[1], item[2]
            for site, a in arrays.items():
                _write(self._files[site], a)
            _write(self._files["__rows__"], np.asarray(meta, dtype=ROW_DTYPE))
            self._written += len(meta)
        elif kind == "finish":
            self._finish(item[1])

    def _start(self, k: int, n_rows: int) -> None:
        self._discard()
        self._shard, self._expect, self._written = k, n_rows, 0
        shapes = self.manifest["row_shapes"]
        for site in self.manifest["sites"]:
            final = self.path / "acts" / site_dir_name(site) / shard_name(k)
            tmp = final.with_name(f".{final.name}.tmp")
            self._tmp[tmp] = final
            self._files[site] = _open_npy(tmp, self.dtype, (n_rows, *shapes[site]))
        final = self.path / "rows" / shard_name(k)
        tmp = final.with_name(f".{final.name}.tmp")
        self._tmp[tmp] = final
        self._files["__rows__"] = _open_npy(tmp, ROW_DTYPE, (n_rows,))

    def _finish(self, k: int) -> None:
        if k != self._shard or self._written != self._expect:
            raise RuntimeError(
                f"shard {k}: wrote {self._written} rows, planned {self._expect} (internal error)"
            )
        for f in self._files.values():
            f.close()
        self._files = {}
        for tmp, final in self._tmp.items():
            os.replace(tmp, final)
        self._tmp = {}
        finished = sorted(set(self.manifest["finished"]) | {k})
        self.manifest["finished"] = finished
        write_manifest(self.path, self.manifest)
        self._shard = None
        after_shard(self.path, k)

    def _discard(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files = {}
        for tmp in self._tmp:
            try:
                tmp.unlink()
            except OSError:
                pass
        self._tmp = {}


def after_shard(path: Path, k: int) -> None:
    """Called after each shard is committed (a no-op; tests patch it to pause or count)."""


class MemoryWriter:
    """Collects rows in memory (``capture(..., out=None)``)."""

    def __init__(self, sites: list[str]):
        self.parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
        self.meta: list[np.ndarray] = []

    def start_shard(self, k: int, n_rows: int) -> None:
        pass

    def finish_shard(self, k: int) -> None:
        pass

    def add(self, arrays: dict[str, torch.Tensor], meta: np.ndarray) -> None:
        for site, t in arrays.items():
            self.parts[site].append(t if t.requires_grad else t.detach().cpu())
        self.meta.append(meta)

    def close(self) -> None:
        pass

    def tensors(self, row_shapes: dict[str, list[int]], dtype: torch.dtype) -> dict[str, Any]:
        out = {}
        for site, parts in self.parts.items():
            out[site] = (
                torch.cat(parts) if parts else torch.zeros((0, *row_shapes[site]), dtype=dtype)
            )
        return out

    def rows(self) -> np.ndarray:
        return np.concatenate(self.meta) if self.meta else np.zeros(0, dtype=ROW_DTYPE)
