"""Representation stages: paired capture, then probing and similarity on the stores.

One paired capture (mean-pooled ``embed`` + ``resid_post`` of every layer, each paragraph in
each language, special tokens excluded) feeds both analyses, so base and adapted are compared
on exactly the same rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..results import AnalysisResult
from .config import CompareConfig
from .data import LAYER_NOTE, Sample
from .tasks import FAST_TASKS, add_probe_records, probe_into

log = logging.getLogger(__name__)

__all__ = ["PairedStacks", "capture_stage", "probe_stage", "similarity_stage"]


class PairedStacks:
    """Per-layer activations of both models on the same rows.

    Attributes:
        stacks: role -> list of ``(n, d)`` float32 arrays, one per layer (``embed`` first).
        layers: layer labels (``0`` = embeddings, ``l + 1`` = output of block ``l``).
        ids: paragraph id of each row (the bootstrap unit).
        languages: language of each row.
        topics: topic label of each row.
    """

    def __init__(
        self,
        stacks: dict[str, list[np.ndarray]],
        layers: list[int],
        ids: np.ndarray,
        languages: np.ndarray,
        topics: np.ndarray,
        description: str,
    ):
        self.stacks, self.layers = stacks, layers
        self.ids, self.languages, self.topics = ids, languages, topics
        self.description = description

    def rows(self, language: str) -> np.ndarray:
        return np.flatnonzero(self.languages == language)


def capture_stage(
    handles: dict[str, Any],
    sample: Sample,
    cfg: CompareConfig,
    folder: Path,
    progress: bool | None = None,
) -> PairedStacks:
    """Capture both models (resumable store under ``folder``) and load the layer stacks.

    The stores belong to the report folder: stores of another capture there (other
    paragraphs, models or settings from an earlier run) are replaced; an interrupted capture
    of the same one resumes."""
    from ..capture import capture_pair
    from ..capture.manifest import StoreMismatch

    data = [
        {"id": pid, "language": lang, "text": sample.texts[lang][i], "topic": sample.topics[i]}
        for i, pid in enumerate(sample.ids)
        for lang in sample.texts
    ]

    def run(overwrite: bool):
        return capture_pair(
            handles["base"],
            handles["adapted"],
            data,
            ["embed", "resid_post"],
            select="mean",
            out=folder,
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            label_columns=["topic"],
            progress=progress,
            data_name=sample.describe(),
            overwrite=overwrite,
        )

    try:
        pair = run(False)
    except StoreMismatch as e:
        log.info("capturing again: %s", e)
        pair = run(True)
    stacks = {}
    for role, store in (("base", pair.base), ("adapted", pair.adapted)):
        order = ["embed"] + [f"resid_post.{layer}" for layer in range(handles[role].n_layers)]
        stacks[role] = [np.asarray(store.read(s), dtype=np.float32) for s in order]
    rows = pair.base.rows
    n_layers = min(len(v) for v in stacks.values())
    for role in stacks:
        stacks[role] = stacks[role][:n_layers]
    return PairedStacks(
        stacks,
        list(range(n_layers)),
        rows["example_id"].to_numpy(),
        rows["language"].to_numpy(),
        rows["topic"].to_numpy(),
        sample.describe() + ", mean over each paragraph's tokens (layer 0: the embeddings; "
        "layer l: the residual stream after the l-th block)",
    )


def _common(handles, cfg: CompareConfig) -> dict[str, Any]:
    return {
        "config": {
            "display_names": cfg.display_names,
            "ci_level": cfg.ci_level,
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
        },
        "models": {r: h.fingerprint for r, h in handles.items()},
    }


def probe_stage(
    handles: dict[str, Any],
    acts: PairedStacks,
    cfg: CompareConfig,
) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Probe accuracy per layer with control tasks (language identity, topic on the paragraph
    means; any other task on its own examples, see :mod:`transferlens.compare.tasks`),
    cross-lingual transfer at the best topic layer."""
    from ..analysis.probe_methods import ProbeConfig, cross_lingual_transfer, selectivity

    pc = ProbeConfig(
        n_folds=5,
        seeds=(cfg.seed,),
        n_boot=cfg.n_boot,
        level=cfg.ci_level,
        boot_seed=cfg.seed,
        C=1.0,
    )
    common = _common(handles, cfg)
    fast = [t for t in cfg.tasks if t in FAST_TASKS]
    acc = AnalysisResult(
        "probe",
        "probe_accuracy",
        "accuracy",
        data={
            "description": acts.description + ". 5-fold CV grouped by paragraph." if fast else "",
            "ci_unit": "paragraphs",
            "chance": {},
        },
        **common,
    )
    best = AnalysisResult(
        "probe",
        "probe_best",
        "accuracy",
        **common,
        data={"description": "Best layer by task accuracy."},
    )
    transfer = None
    notes: list[str] = []
    tasks = {"language_id": acts.languages, "topic": acts.topics}
    for task in cfg.tasks:
        if task not in tasks:
            probe_into(handles, task, cfg, pc, acc, best, notes)
            continue
        labels = tasks[task]
        if len(set(labels.tolist())) < 2:
            notes.append(f"probe task {task!r} skipped: a single class in the sample")
            continue
        # Folds and the bootstrap by paragraph for every task: no translation of a test
        # paragraph is trained on, and the five translations of a paragraph (which share its
        # length and difficulty) resample together. Control labels: topic, one per paragraph;
        # language identity, one per (paragraph, language) text (one label per paragraph would
        # give its five texts of five languages the same control label).
        per_text = np.char.add(acts.ids.astype(str), np.char.add("|", acts.languages.astype(str)))
        res = selectivity(
            {r: acts.stacks[r] for r in ("base", "adapted")},
            labels,
            acts.ids,
            types=None if task == "topic" else per_text,
            config=pc,
            layer_ids=acts.layers,
            task=task,
        )
        values, counts = np.unique(labels, return_counts=True)
        acc.data["chance"][task] = float(counts.max() / counts.sum())
        add_probe_records(acc, best, res, task)
        if task == "topic" and transfer is None:
            transfer = _topic_transfer(acts, labels, pc, cross_lingual_transfer, common, best)
    out = [acc, best] + ([transfer] if transfer is not None else [])
    for r in out:
        r.notes += notes
    return out, {}


def _topic_transfer(acts: PairedStacks, labels, pc, cross_lingual_transfer, common, best):
    """Train on one language, test on another, at the adapted model's best topic layer."""
    langs = sorted(set(acts.languages.tolist()))
    top = [r for r in best.records if r["task"] == "topic" and r["model"] == "adapted"]
    layer = top[0]["layer"] if top else acts.layers[-1]
    li = acts.layers.index(layer)
    out = AnalysisResult(
        "probe",
        "probe_transfer",
        "accuracy",
        **common,
        data={
            "description": f"Topic probe at layer {layer}, trained on one "
            "language and tested on the parallel paragraphs of another.",
            "ci_unit": "paragraphs",
        },
    )
    out.config["layer"] = layer
    for role in ("base", "adapted"):
        by_lang = {lang: [acts.stacks[role][li][acts.rows(lang)]] for lang in langs}
        res = cross_lingual_transfer(
            by_lang,
            {lang: labels[acts.rows(lang)] for lang in langs},
            {lang: acts.ids[acts.rows(lang)] for lang in langs},
            config=pc,
            layer_ids=[layer],
            model=role,
            task="topic",
        )
        for r in res.records:
            if "train_language" in r and r.get("quantity", "accuracy") == "accuracy":
                out.add(
                    r["value"],
                    ci=(r["ci_low"], r["ci_high"]) if r.get("ci_low") is not None else None,
                    n=r.get("n"),
                    model=role,
                    train_language=r["train_language"],
                    test_language=r["test_language"],
                )
    return out


def similarity_stage(
    handles: dict[str, Any],
    acts: PairedStacks,
    cfg: CompareConfig,
) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Layer × layer CKA, per-language base–adapted CKA per layer, and Swedish–English
    similarity (CKA and translation retrieval) per layer, with paragraph bootstrap intervals.

    CKA is debiased linear CKA (unbiased HSIC): with a few hundred paragraphs and hundreds of
    dimensions the biased estimator sits far above the population value, and its bootstrap
    further above (copies of a paragraph pair with themselves); the debiased intervals resample
    without such ties (:func:`~transferlens.analysis.cka_stats.cka_bootstrap`)."""
    from ..analysis.alignment import retrieval_hits
    from ..analysis.cka_matrix import cka_matrix
    from ..analysis.cka_stats import cka_bootstrap
    from ..analysis.stats import bootstrap_ci, percentile_interval

    common = _common(handles, cfg)
    boot = {"n_boot": cfg.n_boot, "level": cfg.ci_level, "seed": cfg.seed}
    base, adapted = acts.stacks["base"], acts.stacks["adapted"]
    mat = AnalysisResult(
        "similarity",
        "cka_matrix",
        "debiased_linear_cka",
        **common,
        data={"description": acts.description + ", all languages pooled."},
    )
    for pair, (A, B) in {
        "base-base": (base, None),
        "adapted-adapted": (adapted, None),
        "base-adapted": (base, adapted),
    }.items():
        m = cka_matrix(A, B, kind="linear", debiased=True, name=pair)
        for i, la in enumerate(acts.layers):
            for j, lb in enumerate(acts.layers):
                mat.add(float(m[i, j]), pair=pair, layer_a=la, layer_b=lb)
    per = AnalysisResult(
        "similarity",
        "cka_base_adapted",
        "debiased_linear_cka",
        **common,
        data={"description": acts.description + ".", "ci_unit": "paragraphs"},
    )
    summary = AnalysisResult(
        "similarity",
        "cka_summary",
        "debiased_linear_cka",
        **common,
        data={
            "description": "Mean over layers of base–adapted CKA; interval: the same "
            "paragraph resamples for every layer.",
            "ci_unit": "paragraphs",
        },
    )
    for lang in sorted(set(acts.languages.tolist())):
        rows = acts.rows(lang)
        vals, dists = [], []
        for li, layer in enumerate(acts.layers):
            ci = cka_bootstrap(
                base[li][rows],
                adapted[li][rows],
                debiased=True,
                keep_distribution=True,
                **boot,
                name=f"{lang} layer {layer}",
            )
            per.add(ci.value, ci=(ci.ci_low, ci.ci_high), n=len(rows), language=lang, layer=layer)
            vals.append(ci.value)
            dists.append(ci.distribution)  # draw k is the same resample in every layer (seed)
        lo, hi = percentile_interval(np.mean(dists, axis=0), cfg.ci_level)
        summary.add(
            float(np.mean(vals)), ci=(lo, hi), n=len(rows), language=lang, model="base vs adapted"
        )
    out = [mat, per, summary]
    src, tgt = ("sv", "en")
    if src in acts.languages and tgt in acts.languages:
        out.append(
            _crosslingual(acts, src, tgt, common, boot, cka_bootstrap, retrieval_hits, bootstrap_ci)
        )
    return out, {}


def _crosslingual(
    acts: PairedStacks,
    src: str,
    tgt: str,
    common,
    boot,
    cka_bootstrap,
    retrieval_hits,
    bootstrap_ci,
) -> AnalysisResult:
    rs, rt = acts.rows(src), acts.rows(tgt)
    order_s = np.argsort(acts.ids[rs], kind="stable")
    order_t = np.argsort(acts.ids[rt], kind="stable")
    rs, rt = rs[order_s], rt[order_t]
    assert (acts.ids[rs] == acts.ids[rt]).all()  # parallel rows, same paragraph
    n = len(rs)
    res = AnalysisResult(
        "similarity",
        "crosslingual",
        "mixed",
        **common,
        data={
            "description": f"{n} parallel {src}/{tgt} paragraphs; retrieval: "
            "nearest neighbour by cosine after per-language mean centring, "
            f"{src}→{tgt}. {LAYER_NOTE}",
            "ci_unit": "paragraphs",
            "chance": 1.0 / n,
        },
    )
    res.config["languages"] = [src, tgt]
    res.config["debiased"] = True  # its CKA records: debiased linear CKA
    for role in ("base", "adapted"):
        for li, layer in enumerate(acts.layers):
            X, Y = acts.stacks[role][li][rs], acts.stacks[role][li][rt]
            ci = cka_bootstrap(X, Y, debiased=True, **boot, name=f"{role} layer {layer}")
            res.add(
                ci.value, ci=(ci.ci_low, ci.ci_high), n=n, metric="cka", model=role, layer=layer
            )
            hits = retrieval_hits(X, Y).astype(float)
            rci = bootstrap_ci(np.mean, hits, **boot)
            res.add(
                rci.value,
                ci=(rci.ci_low, rci.ci_high),
                n=n,
                metric="retrieval",
                model=role,
                layer=layer,
            )
    return res
