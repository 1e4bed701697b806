"""``capture`` and ``capture_pair``: the public entry points of activation capture."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .align import alignment_record, check_pair_selection
from .config import CaptureConfig, as_handle, make_side, resolve_sites
from .engine import STORAGE_DTYPES, engines
from .folder import check_space, new_folders, prepare_out, remove_empty, unwritable
from .inputs import ExampleSource
from .manifest import build_manifest, check_compatible
from .plan import Plan, Side, make_plan, prepare_batch
from .select import plan_rows, resolve_selection
from .store import EXAMPLES, Activations, ActivationStore
from .tokens import collate, pad_token_id
from .writer import MemoryWriter, StoreWriter, write_manifest

__all__ = ["CaptureConfig", "PairedActivations", "capture", "capture_pair", "resolve_sites"]

log = logging.getLogger("transferlens.capture")


@dataclass
class PairedActivations:
    """Activations of a base and an adapted model on the same batches, rows aligned."""

    base: ActivationStore | Activations
    adapted: ActivationStore | Activations

    @property
    def alignment(self) -> dict[str, Any]:
        return dict(self.base.manifest.get("alignment") or {})


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[], None]]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("capturing", total=total)
        yield lambda: bar.advance(task)


# --------------------------------------------------------------------------- core
def _run(
    models: Sequence[Any],
    data: Any,
    sites: Any,
    cfg: CaptureConfig,
    outs: Sequence[Path] | None,
    *,
    overwrite: bool,
    columns: dict[str, Any],
    data_name: str | None,
    progress: bool | None,
) -> list[ActivationStore | Activations]:
    cfg.check()
    sel = resolve_selection(cfg.select, cfg.unit, cfg.exclude_special)
    if cfg.grad and outs is not None:
        raise ValueError("grad=True keeps the autograd graph in memory; use it with out=None")
    handles = [as_handle(m) for m in models]
    sides = [make_side(h, sites, cfg) for h in handles]
    same_tok = len({s.tok_hash for s in sides}) == 1
    if len(sides) > 1 and same_tok:
        # one tokenizer, tokens matched one to one: both models read the same tokens, cut at
        # the shorter of their limits (e.g. a context-extended adapted model)
        lens = [s.max_len for s in sides if s.max_len is not None]
        for s in sides:
            s.max_len = min(lens) if lens else None
    if len(sides) > 1:
        check_pair_selection(sel, same_tok)
        if [str(s) for s in sides[0].sites] != [str(s) for s in sides[1].sites]:
            raise ValueError(
                "the base and adapted models resolve the sites differently "
                "(different number of layers?); name the sites explicitly"
            )
    source = ExampleSource(data, **columns)
    made = [f for p in outs or () for f in new_folders(p)]  # removed again if the pre-pass fails
    existing = [prepare_out(p, overwrite) for p in outs] if outs is not None else None

    # pre-pass: examples to temporary files (stores) or lists (memory)
    records: list[list[dict[str, Any]]] = [[] for _ in sides]
    tmp_files = []
    if outs is not None:
        for p in outs:
            try:
                tmp_files.append(open(p / f".{EXAMPLES}.tmp", "w", encoding="utf-8"))
            except OSError as e:
                for f in tmp_files:
                    f.close()
                raise unwritable(p, e) from None

    def sink(m: int, rec: dict[str, Any]) -> None:
        if outs is None:
            records[m].append(rec)
        else:
            tmp_files[m].write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")

    itemsize = 4 if cfg.dtype == "float32" else 2
    try:
        plan = make_plan(
            source,
            sides,
            sel,
            batch_size=cfg.batch_size,
            on_overflow=cfg.on_overflow,
            shard_rows=cfg.shard_rows,
            itemsize=itemsize,
            same_tokenizer=same_tok,
            sink=sink,
        )
    except BaseException:
        for f in tmp_files:
            f.close()
            Path(f.name).unlink(missing_ok=True)
        remove_empty(made)
        raise
    for f in tmp_files:
        f.close()
    manifests = [
        build_manifest(s, cfg, sel, source, plan, m, data_name, cfg.padding_side)
        for m, s in enumerate(sides)
    ]
    if len(sides) > 1:
        for m, role in enumerate(("base", "adapted")):
            other = handles[1 - m]
            manifests[m]["alignment"] = alignment_record(
                sel,
                same_tok,
                plan.dropped,
                role,
                {"name": other.name, "fingerprint": other.fingerprint},
            )
    for side, man in zip(sides, manifests, strict=True):
        for msg in man["warnings"]:
            log.warning("%s: %s", side.handle.name, msg)

    finished: list[set[int]] = [set() for _ in sides]
    if outs is not None:
        for m, path in enumerate(outs):
            tmp = path / f".{EXAMPLES}.tmp"
            old = existing[m]  # type: ignore[index]
            if old is not None:
                try:
                    check_compatible(old, manifests[m], str(path))
                except ValueError:
                    tmp.unlink()
                    raise
                finished[m] = set(old.get("finished", []))
                manifests[m]["finished"] = sorted(finished[m])
            if old is None or not (path / EXAMPLES).exists():
                os.replace(tmp, path / EXAMPLES)
            else:
                tmp.unlink()
            if old is None or old.get("complete") is not True:
                write_manifest(path, manifests[m])
        if all(len(f) == len(plan.shards) for f in finished):
            for m, path in enumerate(outs):
                if not existing[m].get("complete"):  # type: ignore[index]
                    manifests[m]["complete"] = True
                    write_manifest(path, manifests[m])
            log.info("activation store(s) already complete: %s", ", ".join(map(str, outs)))
            return [ActivationStore(p) for p in outs]
        check_space(outs, manifests, plan, finished)

    if outs is None:
        writers: list[Any] = [MemoryWriter([str(s) for s in side.sites]) for side in sides]
    else:
        writers = [StoreWriter(p, man) for p, man in zip(outs, manifests, strict=True)]
    try:
        _capture_loop(sides, source, sel, cfg, plan, finished, writers, same_tok, progress)
    except BaseException:
        for w in writers:
            with contextlib.suppress(Exception):
                w.close()
        raise
    for w in writers:
        w.close()
    if outs is None:
        out = []
        for m, side in enumerate(sides):
            manifests[m]["complete"] = True
            manifests[m]["finished"] = [s["index"] for s in plan.shards]
            tensors = writers[m].tensors(side.row_shapes, STORAGE_DTYPES[cfg.dtype])
            out.append(Activations(manifests[m], tensors, writers[m].rows(), records[m]))
        return out
    for m, path in enumerate(outs):
        manifests[m]["complete"] = True
        write_manifest(path, manifests[m])
    return [ActivationStore(p) for p in outs]


def _capture_loop(
    sides: Sequence[Side],
    source: ExampleSource,
    sel: Any,
    cfg: CaptureConfig,
    plan: Plan,
    finished: list[set[int]],
    writers: Sequence[Any],
    same_tok: bool,
    progress: bool | None,
) -> None:
    truncate = cfg.on_overflow == "truncate"
    todo_batches = sum(
        s["batches"][1] - s["batches"][0]
        for s in plan.shards
        if any(s["index"] not in f for f in finished)
    )
    pads = [pad_token_id(s.tokenizer) for s in sides]
    with (
        engines([s.handle for s in sides], [s.sites for s in sides], cfg.dtype, cfg.grad) as engs,
        _progress(todo_batches, progress) as advance,
    ):
        for shard in plan.shards:
            k = shard["index"]
            todo = [m for m in range(len(sides)) if k not in finished[m]]
            if not todo:
                continue
            for m in todo:
                writers[m].start_shard(k, shard["rows"])
            for b in range(*shard["batches"]):
                a, z = plan.batches[b]
                examples, encoded, keep, _ = prepare_batch(
                    source, a, z, sides, sel, truncate, same_tok
                )
                index = [ex.index for ex in examples]
                for m in todo:
                    side = sides[m]
                    device = side.handle.device
                    inputs, offsets, T = collate(
                        encoded[m], padding_side=cfg.padding_side, pad_id=pads[m], device=device
                    )
                    rows = plan_rows(encoded[m], index, sel, offsets, T, device, keep[m])
                    out = engs[m].run(inputs, rows)
                    for site, t in out.items():
                        if list(t.shape[1:]) != side.row_shapes[site]:
                            raise RuntimeError(
                                f"site {site}: rows of shape {tuple(t.shape[1:])}"
                                f", expected {side.row_shapes[site]}"
                            )
                    writers[m].add(out, rows.meta)
                advance()
            for m in todo:
                writers[m].finish_shard(k)


# --------------------------------------------------------------------------- public
def capture(
    model: Any,
    data: Any,
    sites: Any,
    *,
    select: str = "all",
    unit: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = None,
    on_overflow: str = "truncate",
    dtype: str = "float32",
    exclude_special: bool = True,
    grad: bool = False,
    shard_rows: int | None = None,
    overwrite: bool = False,
    text_column: str = "text",
    id_column: str = "id",
    language_column: str = "language",
    label_columns: Sequence[str] | None = None,
    words_column: str | None = None,
    word_label_columns: Sequence[str] | None = None,
    data_name: str | None = None,
    progress: bool | None = None,
) -> ActivationStore | Activations:
    """Capture a model's activations at named sites on text.

    Args:
        model: a :class:`~transferlens.models.ModelHandle`, or anything ``load_model``
            accepts as an object (a TransformerBridge, an nnsight model).
        data: a list of strings; a ``datasets.Dataset`` or list of dicts with a text column
            and optional id, language and label columns; or records with a list of words
            and per-word labels (see :mod:`~transferlens.capture.inputs`).
        sites: site names (``"resid_post.3"``), bare components (``"resid_post"``: every
            layer), or a comma-separated string of them.
        select: ``all`` (every token), ``last``, ``mean`` or ``first_subtoken`` (per word).
        unit: ``example`` or ``word`` for ``last``/``mean``.
        out: store folder; None keeps the activations in memory (small data).
        batch_size: examples per forward pass.
        padding_side: ``right`` or ``left``; activations do not depend on it.
        max_length: most tokens per example (default and maximum: the model's context).
        on_overflow: ``truncate`` longer examples (recorded in the manifest) or ``error``.
        dtype: storage dtype, ``float32``, ``float16`` or ``bfloat16``.
        exclude_special: keep BOS/EOS and other special tokens out of rows, means and last.
        grad: keep the autograd graph (``out=None`` only).
        shard_rows: rows per shard (default: about 256 MiB of activations).
        overwrite: replace an existing store at ``out`` instead of resuming/reusing it.
        text_column, id_column, language_column, label_columns, words_column,
            word_label_columns: column names of record data.
        data_name: a description of the data for the manifest.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        The opened :class:`ActivationStore` (``out`` given) or in-memory
        :class:`Activations`. A complete store with the same inputs is returned without
        recomputing; an incomplete one is resumed.

    Raises:
        ValueError: unknown sites, bad options, empty data or text, a store at ``out`` made
            by another model or with other sites, selection or data.
        StoreWriteError: disk full or an I/O error (finished shards are kept; the same call
            resumes).
        PermissionError: ``out`` is not writable.
    """
    cfg = CaptureConfig(
        select=select,
        unit=unit,
        batch_size=batch_size,
        padding_side=padding_side,
        max_length=max_length,
        on_overflow=on_overflow,
        dtype=dtype,
        exclude_special=exclude_special,
        grad=grad,
        shard_rows=shard_rows,
    )
    columns = dict(
        text_column=text_column,
        id_column=id_column,
        language_column=language_column,
        label_columns=label_columns,
        words_column=words_column,
        word_label_columns=word_label_columns,
    )
    outs = [Path(out).expanduser()] if out is not None else None
    return _run(
        [model],
        data,
        sites,
        cfg,
        outs,
        overwrite=overwrite,
        columns=columns,
        data_name=data_name,
        progress=progress,
    )[0]


def capture_pair(
    base: Any,
    adapted: Any,
    data: Any,
    sites: Any,
    *,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    data_name: str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> PairedActivations:
    """Capture a base and an adapted model on exactly the same batches, rows aligned.

    With one tokenizer, rows correspond token by token. With different tokenizers each
    model tokenises its own way and rows are aligned per example (``mean``, ``last``) or
    per word (``first_subtoken``, ``unit='word'``); ``select='all'`` is refused. The
    alignment is recorded in both manifests (see :mod:`~transferlens.capture.align`).

    Args:
        base, adapted: the two models (as for :func:`capture`).
        data, sites: as for :func:`capture`.
        out: folder holding the stores ``base/`` and ``adapted/``; None: in memory.
        options: the other keyword arguments of :func:`capture`.

    Returns:
        :class:`PairedActivations` with ``.base`` and ``.adapted``.
    """
    col_keys = (
        "text_column",
        "id_column",
        "language_column",
        "label_columns",
        "words_column",
        "word_label_columns",
    )
    columns = {k: options.pop(k) for k in col_keys if k in options}
    unknown = set(options) - set(CaptureConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"capture_pair() got unexpected options: {', '.join(sorted(unknown))}")
    cfg = CaptureConfig(**options)
    outs = None
    if out is not None:
        root = Path(out).expanduser()
        outs = [root / "base", root / "adapted"]
    base_acts, adapted_acts = _run(
        [base, adapted],
        data,
        sites,
        cfg,
        outs,
        overwrite=overwrite,
        columns=columns,
        data_name=data_name,
        progress=progress,
    )
    return PairedActivations(base=base_acts, adapted=adapted_acts)
