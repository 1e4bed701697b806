"""Reading activations: the on-disk :class:`ActivationStore` and the in-memory result.

Store layout (one folder)::

    manifest.json              what was captured, how, from which model; finished shards
    examples.jsonl             one line per example: index, id, language, labels, text,
                               word spans, word labels, n_tokens, truncated
    rows/00000.npy             row metadata of shard 0 (example, position, token_id, word)
    acts/<site>/00000.npy      activations of shard 0 at <site>, shape (rows, *row_shape)

Every ``.npy`` is a plain NumPy file, read memory-mapped. ``bfloat16`` activations (which
NumPy has no type for) are stored as their raw 16-bit patterns (``<u2``); reading converts
them exactly to float32, and :meth:`ActivationStore.tensor` gives them back as
``torch.bfloat16`` without conversion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import first_line
from ..jsonl import json_lines
from .select import ROW_DTYPE

__all__ = ["ActivationStore", "Activations", "ShardedArray", "bf16_to_float32"]

MANIFEST = "manifest.json"
_RESERVED = {
    "example",
    "example_id",
    "language",
    "text",
    "n_tokens",
    "truncated",
    "position",
    "token_id",
    "word",
}
EXAMPLES = "examples.jsonl"
_RECAPTURE = "run the capture again with overwrite=True (--overwrite)"


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact float32 values of bfloat16 bit patterns (``uint16``)."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def site_dir_name(site: str) -> str:
    return site


def storage_numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype shards of a store in ``dtype`` are written in (bfloat16 as raw bits)."""
    return np.dtype({"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}[dtype])


def shard_name(k: int) -> str:
    return f"{k:05d}.npy"


class ShardedArray:
    """A read-only ``(n_rows, ...)`` array made of per-shard memory-mapped parts.

    Indexing (an int, a slice, an integer or boolean array over rows, optionally followed by
    indices of the other axes) reads only the shards it touches. ``np.asarray(a)`` loads the
    whole array. ``bfloat16`` parts are returned as float32.
    """

    def __init__(self, parts: Sequence[np.ndarray], bf16: bool = False):
        if not parts:
            raise ValueError("a ShardedArray needs at least one part")
        self.parts = list(parts)
        self.bf16 = bf16
        lengths = [len(p) for p in self.parts]
        self._bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self._bounds[-1]), *self.parts[0].shape[1:])
        self.dtype = np.dtype(np.float32) if bf16 else self.parts[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self.parts)})"

    def _conv(self, a: np.ndarray) -> np.ndarray:
        return bf16_to_float32(a) if self.bf16 else np.asarray(a)

    def shards(self) -> Iterator[np.ndarray]:
        """Each shard's rows in order (memory-mapped unless bfloat16)."""
        for p in self.parts:
            yield self._conv(p)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if len(self.parts) == 1:
            out = self._conv(self.parts[0])
            out = np.array(out) if copy else out
        else:
            out = np.concatenate([self._conv(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        n = len(self)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        shard = np.searchsorted(self._bounds, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._conv(self.parts[s][idx[sel] - self._bounds[s]])
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = self._rows(np.array([key]))[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                pieces = []
                for s, p in enumerate(self.parts):
                    lo, hi = max(start, self._bounds[s]), min(stop, self._bounds[s + 1])
                    if lo < hi:
                        pieces.append(self._conv(p[lo - self._bounds[s] : hi - self._bounds[s]]))
                if len(pieces) == 1:
                    out = pieces[0]
                elif pieces:
                    out = np.concatenate(pieces)
                else:
                    out = np.empty((0, *self.shape[1:]), dtype=self.dtype)
            else:
                out = self._rows(np.arange(start, stop, step))
        else:
            out = self._rows(np.asarray(key))
        if not rest:
            return out
        return out[rest] if isinstance(key, (int, np.integer)) else out[(slice(None), *rest)]


class _Table:
    """Row and example tables shared by the store and the in-memory result."""

    manifest: dict[str, Any]

    def _meta(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _example_records(self) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def sites(self) -> list[str]:
        """Captured sites, in capture order."""
        return list(self.manifest["sites"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dtype(self) -> str:
        """Storage dtype: ``float32``, ``float16`` or ``bfloat16``."""
        return self.manifest["dtype"]

    @property
    def selection(self) -> dict[str, Any]:
        return dict(self.manifest["selection"])

    @cached_property
    def examples(self):
        """Examples table (``pandas.DataFrame``): index, id, language, text, labels..."""
        import pandas as pd

        recs = []
        for r in self._example_records():
            rec = {
                "example": r["index"],
                "example_id": r["id"],
                "language": r["language"],
                "text": r["text"],
                "n_tokens": r.get("n_tokens"),
                "truncated": r.get("truncated"),
            }
            for k, v in r.get("labels", {}).items():
                rec[f"label_{k}" if k in _RESERVED else k] = v
            recs.append(rec)
        return pd.DataFrame.from_records(recs)

    @cached_property
    def rows(self):
        """Row metadata table (``pandas.DataFrame``), one line per activation row: example
        (index), example_id, language, position, token_id, word, then the example labels and,
        for word rows, the word labels."""
        import pandas as pd

        meta = self._meta()
        df = pd.DataFrame({k: meta[k] for k in ROW_DTYPE.names})
        ex = self.examples.drop(columns=["text", "n_tokens", "truncated"])
        df = df.merge(ex, on="example", how="left", sort=False)
        word_cols: dict[str, dict[tuple[int, int], Any]] = {}
        for r in self._example_records():
            for col, vals in (r.get("word_labels") or {}).items():
                d = word_cols.setdefault(col, {})
                for w, v in enumerate(vals):
                    d[(r["index"], w)] = v
        if word_cols:
            keys = list(zip(df["example"].tolist(), df["word"].tolist(), strict=True))
            for col, d in word_cols.items():
                name = col if col not in df.columns else f"word_{col}"
                df[name] = [d.get(k) for k in keys]
        cols = ["example", "example_id", "language", "position", "token_id", "word"]
        return df[cols + [c for c in df.columns if c not in cols]]


class ActivationStore(_Table):
    """An activation store on disk, read memory-mapped.

    Args:
        path: the store folder (written by :func:`~transferlens.capture.capture`).
        allow_incomplete: open a store whose capture has not finished (reads finished
            shards only).

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: the store is incomplete (and ``allow_incomplete`` is False) or not a
            transferlens store.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{self.path}: no activation store here (no {MANIFEST})")
        try:
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{mpath} is damaged ({first_line(e)}); {_RECAPTURE}") from None
        if (
            not isinstance(self.manifest, dict)
            or self.manifest.get("format") != "transferlens.activations"
        ):
            raise ValueError(
                f"{mpath} is not a transferlens activation store manifest; {_RECAPTURE}"
            )
        finished = set(self.manifest.get("finished", []))
        n_shards = len(self.manifest["shards"])
        if not self.manifest.get("complete") and not allow_incomplete:
            raise ValueError(
                f"{self.path}: capture incomplete ({len(finished)}/{n_shards} shards); run "
                "the same capture call again to resume it, or open it with "
                "allow_incomplete=True"
            )
        self.shard_ids = [s["index"] for s in self.manifest["shards"] if s["index"] in finished]

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, sites={len(self.sites)}, "
            f"rows={self.n_rows}, dtype={self.dtype})"
        )

    @property
    def n_rows(self) -> int:
        by_index = {s["index"]: s["rows"] for s in self.manifest["shards"]}
        return int(sum(by_index[k] for k in self.shard_ids))

    def _check_site(self, site: str) -> str:
        site = str(site)
        if site not in self.manifest["sites"]:
            from ..models import parse_site

            try:
                canon = str(parse_site(site))
            except ValueError:
                canon = site
            if canon not in self.manifest["sites"]:
                raise ValueError(
                    f"site {site!r} is not in this store; it holds: "
                    f"{', '.join(self.manifest['sites'])}"
                )
            site = canon
        return site

    def _shard(self, rel: str, k: int, dtype: np.dtype, row_shape: tuple[int, ...]) -> np.ndarray:
        """Shard ``k`` under ``rel`` (memory-mapped), checked against the manifest."""
        path = self.path / rel / shard_name(k)
        where = f"{self.path}: shard {rel}/{shard_name(k)}"
        if not path.is_file():
            raise FileNotFoundError(f"{where} is missing; {_RECAPTURE}")
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{where} is damaged ({first_line(e)}); {_RECAPTURE}") from None
        want = (self._shard_rows[k], *row_shape)
        if a.shape != want or a.dtype != dtype:
            raise ValueError(
                f"{where} holds {a.dtype} {a.shape}, the manifest says {dtype} {want}; {_RECAPTURE}"
            )
        return a

    @cached_property
    def _shard_rows(self) -> dict[int, int]:
        return {s["index"]: int(s["rows"]) for s in self.manifest["shards"]}

    def _parts(self, site: str) -> list[np.ndarray]:
        rel = f"acts/{site_dir_name(site)}"
        dtype = storage_numpy_dtype(self.dtype)
        shape = tuple(self.manifest["row_shapes"][site])
        return [self._shard(rel, k, dtype, shape) for k in self.shard_ids]

    def read(self, site: str) -> ShardedArray:
        """Activations at ``site``: a memory-mapped ``(n_rows, ...)`` array (see
        :class:`ShardedArray`; ``np.asarray`` loads it, ``.shards()`` streams it)."""
        site = self._check_site(site)
        parts = self._parts(site)
        if not parts:
            shape = tuple(self.manifest["row_shapes"][site])
            parts = [np.zeros((0, *shape), dtype=np.float32)]
        return ShardedArray(parts, bf16=self.dtype == "bfloat16")

    def iter_shards(self, site: str) -> Iterator[np.ndarray]:
        """Stream ``site`` shard by shard (each a ``(rows_k, ...)`` array)."""
        return self.read(site).shards()

    def tensor(self, site: str) -> torch.Tensor:
        """Activations at ``site`` as a torch tensor in the storage dtype (bfloat16 exact)."""
        parts = self._parts(self._check_site(site))
        ts = []
        for p in parts:
            if self.dtype == "bfloat16":
                ts.append(torch.from_numpy(np.array(p).view(np.int16)).view(torch.bfloat16))
            else:
                ts.append(torch.from_numpy(np.array(p)))
        return torch.cat(ts) if len(ts) != 1 else ts[0]

    def _meta(self) -> np.ndarray:
        parts = [self._shard("rows", k, ROW_DTYPE, ()) for k in self.shard_ids]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=ROW_DTYPE)

    def _example_records(self) -> list[dict[str, Any]]:
        path = self.path / EXAMPLES
        try:
            return [rec for _, rec in json_lines(path, "examples file of the store")]
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{e}; {_RECAPTURE}") from None


class Activations(_Table):
    """Activations captured in memory (``capture(..., out=None)``): same reading interface
    as :class:`ActivationStore`; :meth:`tensor` keeps the autograd graph when the capture
    asked for gradients."""

    def __init__(
        self,
        manifest: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        meta: np.ndarray,
        examples: list[dict[str, Any]],
    ):
        self.manifest = manifest
        self._tensors = tensors
        self._meta_arr = meta
        self._examples = examples

    def __repr__(self) -> str:
        return f"Activations(sites={len(self.sites)}, rows={self.n_rows}, dtype={self.dtype})"

    def _check_site(self, site: str) -> str:
        return ActivationStore._check_site(self, site)  # type: ignore[arg-type]

    def tensor(self, site: str) -> torch.Tensor:
        """Activations at ``site`` as a torch tensor (storage dtype; graph kept if grad)."""
        return self._tensors[self._check_site(site)]

    def read(self, site: str) -> np.ndarray:
        """Activations at ``site`` as a NumPy array (bfloat16 converted exactly to float32)."""
        t = self.tensor(site).detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.float().numpy()
        return t.numpy()

    def iter_shards(self, site: str) -> Iterator[np.ndarray]:
        yield self.read(site)

    def _meta(self) -> np.ndarray:
        return self._meta_arr

    def _example_records(self) -> list[dict[str, Any]]:
        return self._examples
