"""Probe tasks beyond compare's paragraph sample: any task file, probed on both models.

``language_id`` and ``topic`` are probed on the paragraph means that the similarity stage
captures anyway (:func:`~transferlens.compare.representations.probe_stage`). Every other task
(a built-in ``probes/`` name such as ``word_initial`` or ``position_bucket``, or the path of a
user task file) goes through :func:`probe_task`:

1. its examples (:meth:`~transferlens.data.tasks.ProbeTask.examples`) in the languages of the
   comparison that the task has, from the comparison's split when the source is the corpus;
   at most ``max_examples`` per language, drawn with the comparison's seed (a seeded ranking
   of the example ids, so parallel data keeps the same examples in every language);
2. a paired capture of both models on exactly these examples (``embed`` and ``resid_post`` of
   every layer, the task's selection), in chunks held in memory; where a selection gives
   several rows per example (tokens, words), at most :data:`ROWS_PER_EXAMPLE` rows of each
   example are kept (a seeded choice, the same rows for both models);
3. labels: the example label, the word's label, or the token's label from
   :func:`~transferlens.data.tasks.token_labels` (checked against the captured token ids);
   rows without a label are left out;
4. :func:`~transferlens.analysis.probe_methods.selectivity` per layer with the task's
   control (per example, word type or token type) and folds grouped by example id, so rows
   of one example never straddle training and test.

A task that cannot be run on the pair raises :class:`TaskSkipped` with the reason (the probe
stage writes it to the report's notes): token-level labels with different tokenizers, a
single class, too few examples.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.tasks import ProbeTask, load_task
from ..results import AnalysisResult

if TYPE_CHECKING:
    from .config import CompareConfig

__all__ = [
    "FAST_TASKS",
    "ROWS_PER_EXAMPLE",
    "TaskData",
    "TaskSkipped",
    "add_probe_records",
    "build_task_data",
    "probe_into",
    "probe_task",
    "task_key",
]

log = logging.getLogger(__name__)

#: Tasks probed on the paragraph means of the comparison's own capture.
FAST_TASKS = ("language_id", "topic")
#: Most rows kept per example when a selection gives several (tokens, words).
ROWS_PER_EXAMPLE = 8
_CHUNK = 64  # examples captured at once (activations of a chunk are held in memory)
_WORD_RE = re.compile(r"\S+")
_CONTROLS = {"example": "per example", "word_type": "per word type", "token_type": "per token type"}


class TaskSkipped(Exception):
    """A probe task that cannot be run on this pair or data; the message says why."""


@dataclass
class TaskData:
    """One task's rows, captured on both models.

    Attributes:
        name: the task's name (the ``task`` coordinate of the records).
        stacks: role -> list of ``(n, d)`` float32 arrays, one per layer (``embed`` first).
        layers: layer labels (``0`` = embeddings, ``l + 1`` = output of block ``l``).
        labels: ``(n,)`` labels as strings.
        groups: ``(n,)`` example id of each row (folds and bootstrap unit).
        types: ``(n,)`` word or token type of each row for a type control, else None.
        n_examples: examples with at least one labelled row (the folds group them by id).
        description: what was probed, for the caption.
    """

    name: str
    stacks: dict[str, list[np.ndarray]]
    layers: list[int]
    labels: np.ndarray
    groups: np.ndarray
    types: np.ndarray | None
    n_examples: int
    description: str


# --------------------------------------------------------------------------- cache key


def _sha256(path: Path) -> str | None:
    """sha256 of a data file; of a data folder (a saved Hugging Face dataset), the sha256 of
    its files' relative paths, sizes and modification times (cheap, and any change shows)."""
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def task_key(entries: list[str]) -> list[dict[str, Any]]:
    """What the probe stage's cache key needs to know about the tasks.

    For each task other than :data:`FAST_TASKS`: the definition (``ProbeTask.to_dict()``),
    the sha256 of its local data file (``jsonl``/``conllu``, or an ``hf`` data file or folder) and
    :data:`ROWS_PER_EXAMPLE`. Editing a task file or its data therefore recomputes the stage.
    """
    out: list[dict[str, Any]] = []
    for entry in entries:
        if entry in FAST_TASKS:
            continue
        task = load_task(entry)
        data = None
        if task.path:
            data = _sha256(task.data_path)
        out.append(
            {
                "entry": entry,
                "definition": task.to_dict(),
                "data_sha256": data,
                "rows_per_example": ROWS_PER_EXAMPLE,
            }
        )
    return out


# --------------------------------------------------------------------------- records


def add_probe_records(
    acc: AnalysisResult, best: AnalysisResult, res: AnalysisResult, task: str
) -> None:
    """Copy a :func:`selectivity` result into compare's ``probe_accuracy`` (task and control
    accuracy per model and layer) and ``probe_best`` (best layer by task accuracy); fits that
    stopped at the iteration limit become a note of ``probe_accuracy``."""
    fits = res.data.get("probe_fits") or {}
    if fits.get("unconverged"):
        acc.notes.append(
            f"probe task {task!r}: {fits['unconverged']} of {fits['total']} probe fits stopped "
            "at the iteration limit (max_iter); their accuracies come from unfinished fits"
        )
    for r in res.records:
        kind = {"task_accuracy": "task", "control_accuracy": "control"}.get(r.get("quantity"))
        if kind is None or r.get("model") not in ("base", "adapted"):
            continue
        acc.add(
            r["value"],
            ci=(r.get("ci_low"), r.get("ci_high")) if r.get("ci_low") is not None else None,
            n=r.get("n_groups", r.get("n")),  # units (paragraphs, examples): the bootstrap's
            rows=r.get("n"),  # rows scored (tokens or texts)
            task=task,
            model=r["model"],
            kind=kind,
            layer=r["layer"],
        )
    for role in ("base", "adapted"):
        rr = [
            r
            for r in acc.records
            if r["task"] == task and r["model"] == role and r["kind"] == "task"
        ]
        top = max(rr, key=lambda r: r["value"])
        best.add(
            top["value"],
            ci=(top.get("ci_low"), top.get("ci_high")) if top.get("ci_low") is not None else None,
            task=task,
            model=role,
            layer=top["layer"],
        )


# --------------------------------------------------------------------------- examples


def _languages(task: ProbeTask, cfg: CompareConfig) -> list[str]:
    langs = [lang for lang in cfg.languages if not task.languages or lang in task.languages]
    if not langs:
        raise TaskSkipped(
            f"it has none of the compared languages ({', '.join(cfg.languages)}; "
            f"the task has {', '.join(task.languages)})"
        )
    return langs


def _sample(task: ProbeTask, cfg: CompareConfig) -> list[Any]:
    """At most ``max_examples`` examples per language, by a seeded ranking of the ids."""
    split = cfg.split if task.source == "corpus" else None
    exs = list(task.examples(languages=_languages(task, cfg), split=split))
    if not exs:
        raise TaskSkipped("it has no examples in the compared languages")
    ids = sorted({ex.id for ex in exs})
    perm = np.random.default_rng(cfg.seed).permutation(len(ids)).tolist()
    rank = dict(zip(ids, perm, strict=True))
    by_lang: dict[Any, list[int]] = {}
    for i, ex in enumerate(exs):
        by_lang.setdefault(ex.language, []).append(i)
    keep: list[int] = []
    for idx in by_lang.values():
        keep += sorted(idx, key=lambda i: (rank[exs[i].id], i))[: cfg.max_examples]
    return [exs[i] for i in sorted(keep)]


def _selection(task: ProbeTask) -> tuple[str, str | None]:
    if task.level == "word" and task.selection in ("mean", "last"):
        return task.selection, "word"
    if task.level == "token" and task.selection == "mean":
        raise TaskSkipped("a token-level task needs token rows; selection 'mean' has none")
    return task.selection, None


def _words(ex: Any) -> list[str]:
    return list(ex.words) if ex.words else _WORD_RE.findall(ex.text)


# --------------------------------------------------------------------------- capture


def _same_tokenizer(handles: dict[str, Any]) -> bool:
    from ..capture.tokens import tokenizer_hash

    return tokenizer_hash(handles["base"].tokenizer) == tokenizer_hash(handles["adapted"].tokenizer)


def _row_labels(task: ProbeTask, exs: list[Any], rows: Any, offset: int, tok: Any) -> list[Any]:
    """The label of each captured row (None: no label)."""
    ex_idx = rows["example"].to_numpy() + offset
    words = rows["word"].to_numpy()
    if task.level == "example":
        return [exs[e].label for e in ex_idx.tolist()]
    if task.level == "word":
        out = []
        for e, w in zip(ex_idx.tolist(), words.tolist(), strict=True):
            labels = exs[e].word_labels
            out.append(labels[w] if 0 <= w < len(labels) else None)
        return out
    cache: dict[int, Any] = {}
    out = []
    pos, tid = rows["position"].to_numpy(), rows["token_id"].to_numpy()
    for e, p, t in zip(ex_idx.tolist(), pos.tolist(), tid.tolist(), strict=True):
        if e not in cache:
            cache[e] = task.token_labels(exs[e], tok)
        tl = cache[e]
        if p < 0 or p >= len(tl.token_ids) or int(tl.token_ids[p]) != t:
            raise TaskSkipped(
                f"its token labels do not match the captured tokens (example {exs[e].id!r}, "
                f"position {p}); the capture and the labels tokenise differently"
            )
        out.append(tl.labels[p])
    return out


def _row_types(task: ProbeTask, exs: list[Any], rows: Any, offset: int) -> list[str] | None:
    if task.control == "token_type":
        return [str(t) for t in rows["token_id"].tolist()]
    if task.control == "word_type":
        out = []
        ex_idx = rows["example"].to_numpy() + offset
        cache: dict[int, list[str]] = {}
        for e, w, t in zip(
            ex_idx.tolist(), rows["word"].tolist(), rows["token_id"].tolist(), strict=True
        ):
            words = cache[e] if e in cache else cache.setdefault(e, _words(exs[e]))
            out.append(words[w] if 0 <= w < len(words) else f"<token {t}>")
        return out
    return None


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _grouping(task: ProbeTask, labels: list[str], ids: list[str], texts: list[str]) -> bool:
    """Whether one control label per example id fits the task (True) or one per text is
    needed (False).

    Rows are always grouped by example id for the folds and the bootstrap (the translations
    of a corpus paragraph share its difficulty, and no translation of a test example is
    trained on). The example control draws one label per id, unless an example-level label
    differs between the texts of an id (it depends on the language): then one per text (the
    same rule as compare's ``topic`` and ``language_id``).
    """
    if task.level != "example" or len(set(ids)) == len(set(texts)):
        return True
    first: dict[str, str] = {}
    return all(first.setdefault(i, y) == y for i, y in zip(ids, labels, strict=True))


def build_task_data(handles: dict[str, Any], task: ProbeTask, cfg: CompareConfig) -> TaskData:
    """Examples, paired capture and labels of one task (see the module docstring).

    Raises:
        TaskSkipped: the task cannot be run on this pair or its data (the reason).
    """
    from ..capture import capture_pair

    same_tok = _same_tokenizer(handles)
    select, unit = _selection(task)
    if not same_tok:
        if task.level == "token":
            raise TaskSkipped(
                "the tokenizers differ, and token-level labels need the same tokens in both models"
            )
        if select == "all":
            raise TaskSkipped(
                "the tokenizers differ, and selection 'all' needs the same tokens in both "
                "models (use mean, last or first_subtoken)"
            )
        if task.control == "token_type":
            raise TaskSkipped("the tokenizers differ, so there is no shared token-type control")
    exs = _sample(task, cfg)
    n_layers = min(handles[r].n_layers for r in ("base", "adapted"))
    order = ["embed"] + [f"resid_post.{layer}" for layer in range(n_layers)]
    parts: dict[str, list[list[np.ndarray]]] = {r: [[] for _ in order] for r in handles}
    labels: list[Any] = []
    groups: list[str] = []  # example ids (shared by the translations of a paragraph)
    texts: list[str] = []  # example id and language: one text
    seen: set[int] = set()
    types: list[str] = []
    multi = select in ("all", "first_subtoken") or unit == "word"
    step = cfg.batch_size * max(1, _CHUNK // cfg.batch_size)
    kw: dict[str, Any] = dict(
        select=select,
        unit=unit,
        max_length=cfg.max_length,
        batch_size=cfg.batch_size,
        label_columns=[],
        progress=False,
    )
    for start in range(0, len(exs), step):
        chunk = exs[start : start + step]
        if task.level == "word":
            data = [{"id": ex.id, "language": ex.language, "words": list(ex.words)} for ex in chunk]
            kw.update(words_column="words", word_label_columns=[])
        else:
            data = [{"id": ex.id, "language": ex.language, "text": ex.text} for ex in chunk]
        pair = capture_pair(
            handles["base"], handles["adapted"], data, ["embed", "resid_post"], **kw
        )
        rows = pair.base.rows
        other = pair.adapted.rows
        cols = ["example", "word"] + (["position", "token_id"] if same_tok else [])
        if len(rows) != len(other) or not (rows[cols].to_numpy() == other[cols].to_numpy()).all():
            raise RuntimeError(f"probe task {task.name!r}: the paired capture's rows differ")
        lab = _row_labels(task, exs, rows, start, handles["base"].tokenizer)
        typ = _row_types(task, exs, rows, start)
        ok = np.array([not _missing(v) for v in lab], dtype=bool)
        ex_of = rows["example"].to_numpy()
        pick = []
        for e in np.unique(ex_of[ok]).tolist():
            idx = np.flatnonzero(ok & (ex_of == e))
            if multi and idx.size > ROWS_PER_EXAMPLE:
                rng = np.random.default_rng([cfg.seed, start + e])
                idx = np.sort(rng.choice(idx, size=ROWS_PER_EXAMPLE, replace=False))
            pick.append(idx)
        sel = np.concatenate(pick) if pick else np.zeros(0, np.int64)
        for role, acts in (("base", pair.base), ("adapted", pair.adapted)):
            for li, site in enumerate(order):
                parts[role][li].append(np.asarray(acts.read(site), dtype=np.float32)[sel])
        labels += [str(lab[i]) for i in sel.tolist()]
        groups += [str(chunk[e].id) for e in ex_of[sel].tolist()]
        texts += [f"{chunk[e].id}|{chunk[e].language}" for e in ex_of[sel].tolist()]
        seen.update((start + ex_of[sel]).tolist())
        if typ is not None:
            types += [typ[i] for i in sel.tolist()]
    if len(set(labels)) < 2:
        raise TaskSkipped("a single class in the sample")
    by_id = _grouping(task, labels, groups, texts)
    y = np.asarray(labels, dtype=object)
    g = np.asarray(groups, dtype=object)
    n_groups = len(set(g.tolist()))
    if n_groups < 5:
        raise TaskSkipped(f"{n_groups} examples with labels; 5-fold CV needs at least 5")
    stacks = {r: [np.concatenate(p) for p in parts[r]] for r in parts}
    rows_desc = {
        "all": "every token",
        "first_subtoken": "the first sub-token of each word",
        "mean": "the mean over each word's sub-tokens" if unit == "word" else "the mean",
        "last": "the last sub-token of each word" if unit == "word" else "the last token",
    }[select]
    cap = f" (at most {ROWS_PER_EXAMPLE} per example)" if multi else ""
    langs = sorted({ex.language for ex in exs if ex.language is not None})
    desc = (
        f"{task.name}: {task.level}-level task from {task.source} "
        f"({', '.join(langs) or 'no language given'}), {len(seen)} examples "
        f"({n_groups} ids), "
        f"{len(labels)} rows: {rows_desc}{cap}; control {_CONTROLS[task.control]}"
        f"{'' if by_id else ' (one label per text: the label depends on the language)'}; "
        "5-fold CV and intervals grouped by example id."
    )
    if task.control in ("word_type", "token_type"):
        control_types = np.asarray(types, dtype=object)
    elif not by_id:  # example control, one label per text (types: one per text)
        control_types = np.asarray(texts, dtype=object)
    else:
        control_types = None
    return TaskData(
        task.name, stacks, list(range(len(order))), y, g, control_types, len(seen), desc
    )


def probe_task(
    handles: dict[str, Any], task: ProbeTask, cfg: CompareConfig, config: Any
) -> tuple[AnalysisResult, TaskData]:
    """Selectivity per layer of one task on both models.

    Args:
        handles: ``{"base": ModelHandle, "adapted": ModelHandle}``.
        task: the task definition.
        cfg: the comparison's configuration.
        config: the :class:`~transferlens.analysis.probe_methods.ProbeConfig`.

    Returns:
        The :func:`selectivity` result and the :class:`TaskData` it was computed on.

    Raises:
        TaskSkipped: the task cannot be run on this pair or its data (the reason).
    """
    from ..analysis.probe_methods import selectivity

    data = build_task_data(handles, task, cfg)
    res = selectivity(
        {r: data.stacks[r] for r in ("base", "adapted")},
        data.labels,
        data.groups,
        types=data.types,
        config=config,
        layer_ids=data.layers,
        task=data.name,
    )
    return res, data


def probe_into(
    handles: dict[str, Any],
    entry: str,
    cfg: CompareConfig,
    config: Any,
    acc: AnalysisResult,
    best: AnalysisResult,
    notes: list[str],
) -> None:
    """Probe one task (a ``probes/`` name or a task file) and add its records to compare's
    ``probe_accuracy`` and ``probe_best`` results, with ``data["chance"][task]`` (the
    majority-class share of the probed rows); a task that cannot run adds a note instead.
    """
    task = load_task(entry)
    try:
        res, data = probe_task(handles, task, cfg, config)
    except (TaskSkipped, ValueError) as e:
        log.warning("probe task %r skipped: %s", task.name, e)
        notes.append(f"probe task {task.name!r} skipped: {e}")
        return
    _, counts = np.unique(data.labels, return_counts=True)
    acc.data["chance"][task.name] = float(counts.max() / counts.sum())
    add_probe_records(acc, best, res, task.name)
    acc.data.setdefault("tasks", {})[task.name] = data.description
    acc.data["description"] = (acc.data["description"] + " " + data.description).strip()
    if task.source != "corpus":
        acc.data["ci_unit"] = "examples (paragraphs for the corpus tasks)"
