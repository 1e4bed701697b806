"""One results shape for every analysis.

Every analysis (probing, similarity, patching, lenses, weights, behaviour) returns an
:class:`AnalysisResult`: a tidy table of *records*, one per measured number, plus the
configuration and the fingerprints of the models it was measured on. A record is a flat
dict of coordinates (``layer``, ``language``, ``model``, ``site``, ...) and the measured
``value``; numbers that go into a figure carry ``ci_low``/``ci_high`` (a confidence interval,
usually a bootstrap over examples) and ``n`` (how many units the number rests on).

The tidy form maps one-to-one onto the source-data CSV written for each figure and onto
``results.json`` (a list of serialised results under a schema version).

Schema (version 1)::

    {
      "schema_version": 1,
      "analysis": "similarity",          # family: behaviour|probe|similarity|patch|lens|weights
      "name": "linear_cka_base_adapted",  # unique within a report
      "metric": "linear_cka",             # what "value" measures
      "records": [{"layer": 0, "value": 0.98, "ci_low": 0.97, "ci_high": 0.99, "n": 200}, ...],
      "config": {...},                    # the analysis config (plain JSON)
      "models": {"base": "<fingerprint>", "adapted": "<fingerprint>"},
      "data": {...},                      # what data it was measured on
      "notes": ["..."]                    # exclusions, warnings, skipped parts
    }
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .jsonl import read_utf8

SCHEMA_VERSION = 1

__all__ = [
    "SCHEMA_VERSION",
    "AnalysisResult",
    "load_results",
    "save_results",
    "to_jsonable",
]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, tuples and paths to plain JSON types.

    Non-finite floats become ``None`` (JSON has no NaN), so a reader never mistakes them
    for numbers.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    # numpy / torch without importing them eagerly
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


@dataclass
class AnalysisResult:
    """A tidy table of measured numbers with the context needed to trust them.

    Attributes:
        analysis: family (``behaviour``, ``probe``, ``similarity``, ``patch``, ``lens``, ``weights``).
        name: unique name within a report (``linear_cka_base_adapted``).
        metric: what each record's ``value`` measures (``accuracy``, ``linear_cka``, ...).
        records: one dict per number: coordinates plus ``value`` and, where known,
            ``ci_low``, ``ci_high``, ``n``.
        config: the analysis configuration (plain JSON types).
        models: role -> model fingerprint (``{"base": ..., "adapted": ...}``).
        data: description of the data (languages, split, number of examples, store paths).
        notes: human-readable remarks (exclusions, skipped parts and why).
    """

    analysis: str
    name: str
    metric: str
    records: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # own copies: results built from one shared dict (a stage's common config) must not
        # see each other's later changes (one result's "layer" appearing in another's config)
        self.config, self.models = dict(self.config), dict(self.models)
        self.data, self.notes = dict(self.data), list(self.notes)

    def add(
        self,
        value: float,
        *,
        ci: Sequence[float] | None = None,
        n: int | None = None,
        **coords: Any,
    ) -> dict[str, Any]:
        """Append one record and return it."""
        rec: dict[str, Any] = dict(coords)
        rec["value"] = float(value)
        if ci is not None:
            rec["ci_low"], rec["ci_high"] = float(ci[0]), float(ci[1])
        if n is not None:
            rec["n"] = int(n)
        self.records.append(rec)
        return rec

    def where(self, **coords: Any) -> list[dict[str, Any]]:
        """Records whose coordinates equal all the given values."""
        return [r for r in self.records if all(r.get(k) == v for k, v in coords.items())]

    def columns(self) -> list[str]:
        """Column names in first-seen order (coordinates first, value/ci/n last)."""
        cols: list[str] = []
        for r in self.records:
            for k in r:
                if k not in cols:
                    cols.append(k)
        tail = [c for c in ("value", "ci_low", "ci_high", "n") if c in cols]
        return [c for c in cols if c not in tail] + tail

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalysisResult:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"results schema version {version!r} is not supported (this transferlens reads "
                f"version {SCHEMA_VERSION}); re-run the analysis with this version"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the records as a CSV (atomic)."""
        import csv
        import io

        cols = self.columns()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
        atomic_write_text(path, buf.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` through a temporary file in the same folder and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_results(
    path: str | os.PathLike, results: Iterable[AnalysisResult], meta: dict[str, Any] | None = None
) -> None:
    """Write ``results.json``: ``{"schema_version", "meta", "results": [...]}`` atomically."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "meta": to_jsonable(meta or {}),
        "results": [r.to_dict() for r in results],
    }
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False))


def load_results(path: str | os.PathLike) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Read ``results.json`` written by :func:`save_results`; returns (results, meta)."""
    path = Path(path)
    try:
        doc = json.loads(read_utf8(path, "results file"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or "results" not in doc:
        raise ValueError(f"{path}: not a transferlens results.json (no 'results' list)")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: results schema version {doc.get('schema_version')!r} is not supported "
            f"(expected {SCHEMA_VERSION})"
        )
    problem = _layout_problem(doc)
    if problem:
        raise ValueError(
            f"{path}: {problem}; restore the file or re-run the analysis that wrote it"
        )
    return [AnalysisResult.from_dict(r) for r in doc["results"]], doc.get("meta", {})


_NUMBER_FIELDS = ("value", "ci_low", "ci_high")
_INT_FIELDS = ("n", "layer", "layer_a", "layer_b", "head")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _layout_problem(doc: dict[str, Any]) -> str | None:
    """What in a parsed ``results.json`` does not have the schema's layout (None: nothing):
    the types every reader relies on, checked before anything is drawn."""
    if not isinstance(doc["results"], list):
        return "'results' must be a list of results"
    if not isinstance(doc.get("meta", {}), dict):
        return "'meta' must be an object"
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict):
            return f"result {i} must be an object, not {type(r).__name__}"
        for key in ("analysis", "name", "metric"):
            if not isinstance(r.get(key), str):
                return f"result {i} needs a string {key!r}"
        where = f"result {i} ({r['name']!r})"
        for key, kind in (("config", dict), ("models", dict), ("data", dict), ("notes", list)):
            if not isinstance(r.get(key, kind()), kind):
                return f"{where}: {key!r} must be a{'n object' if kind is dict else ' list'}"
        records = r.get("records", [])
        if not isinstance(records, list):
            return f"{where}: 'records' must be a list"
        for j, rec in enumerate(records):
            if not isinstance(rec, dict):
                return f"{where}, record {j}: must be an object"
            if "value" not in rec:
                return f"{where}, record {j}: no 'value'"
            for key in _NUMBER_FIELDS + _INT_FIELDS:
                v, number = rec.get(key), key in _NUMBER_FIELDS
                if v is not None and not (_is_number(v) if number else _is_int(v)):
                    want = "a number" if number else "an integer"
                    return f"{where}, record {j}: {key!r} must be {want} or null, not {v!r}"
            lo, hi = rec.get("ci_low"), rec.get("ci_high")
            if lo is not None and hi is not None and lo > hi:
                return f"{where}, record {j}: ci_low {lo} is above ci_high {hi}"
    return None
