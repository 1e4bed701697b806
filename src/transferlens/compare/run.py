"""``compare(base, adapted, out)``: chain the stages and write the report folder.

The orchestrator holds no analysis logic: it loads both models, decides which analyses
apply to the pair (and records why others are skipped), runs each stage through the
:class:`~transferlens.compare.cache.StageCache` (finished stages are reused when models and
configuration match), then writes ``results.json``, ``manifest.json`` and the rendered
report. An interrupted run leaves no ``results.json``/``report.html`` behind, so it is
never presented as complete.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..results import AnalysisResult, atomic_write_text, save_results, to_jsonable
from .cache import StageCache
from .config import ANALYSES, CompareConfig
from .tasks import task_key

__all__ = ["applicable_analyses", "compare"]

log = logging.getLogger(__name__)


def _vocab(tok: Any) -> dict[str, int] | None:
    return tok.get_vocab() if tok is not None and hasattr(tok, "get_vocab") else None


def applicable_analyses(base: Any, adapted: Any) -> tuple[list[str], dict[str, str]]:
    """Analyses that apply to the pair, and the reason for each one that does not."""
    skipped: dict[str, str] = {}
    same_arch = (
        base.family == adapted.family
        and base.n_layers == adapted.n_layers
        and base.sitemap.d_model == adapted.sitemap.d_model
        and base.sitemap.n_heads == adapted.sitemap.n_heads
    )
    same_tok = _vocab(base.tokenizer) == _vocab(adapted.tokenizer)
    if not same_arch:
        reason = (
            f"the models differ in architecture ({base.family}, {base.n_layers} layers vs "
            f"{adapted.family}, {adapted.n_layers} layers)"
        )
        skipped["patch"] = reason
        skipped["weights"] = reason
    elif not same_tok:
        skipped["patch"] = (
            "the tokenizers differ (e.g. vocabulary extension): cross-model "
            "patching needs the same tokens at the same positions"
        )
    if base.sitemap.lm_head is None or adapted.sitemap.lm_head is None:
        skipped["lens"] = "a model has no unembedding (encoder): no logit lens"
        skipped.setdefault("patch", "a model has no unembedding: no output metric to patch")
    return [a for a in ANALYSES if a not in skipped], skipped


@contextmanager
def _stages_progress(enabled: bool | None, total: int) -> Iterator[Callable[[str], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    show = console.is_terminal if enabled is None else enabled
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
        transient=False,
    ) as bar:
        task = bar.add_task("compare", total=total)

        def step(name: str) -> None:
            bar.update(task, description=name)
            bar.advance(task)

        yield step


def _default_out(base: Any, adapted: Any) -> Path:
    return Path("reports") / f"{base.name}-vs-{adapted.name}"


def compare(
    base: Any,
    adapted: Any,
    out: str | Path | None = None,
    config: CompareConfig | None = None,
    *,
    command: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Compare a base and an adapted model and write a report folder.

    Args:
        base, adapted: anything :func:`~transferlens.models.load_model` accepts.
        out: report folder (default ``reports/<base>-vs-<adapted>/``); an existing folder must
            be a transferlens report.
        config: :class:`CompareConfig` (defaults otherwise).
        command: the command line to record in the manifest.
        progress: show progress bars (default: when stderr is a terminal).

    Returns:
        The path of ``report.html``.
    """
    from ..models import load_model
    from ..report import check_report_dir, render_report
    from ..report.render import MARKER

    cfg = config or CompareConfig()
    hb = load_model(base, device=cfg.device, dtype=cfg.dtype)
    ha = load_model(adapted, device=cfg.device, dtype=cfg.dtype)
    out = check_report_dir(out or _default_out(hb, ha))
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    for stale in ("results.json", "report.html", "report.md", "manifest.json"):
        (out / stale).unlink(missing_ok=True)
    handles = {"base": hb, "adapted": ha}
    fps = {"base": hb.fingerprint, "adapted": ha.fingerprint}

    notes: list[str] = []
    if fps["base"] == fps["adapted"]:
        notes.append(
            "The same model was given twice: a sanity check. Every base–adapted "
            "CKA is 1 and every cross-model patching effect 0 by construction."
        )
        log.warning("the same model was given twice; running the comparison as a sanity check")
    can, cannot = applicable_analyses(hb, ha)
    wanted = cfg.analyses or list(ANALYSES)
    run = [a for a in wanted if a in can]
    skipped = [{"analysis": a, "reason": cannot[a]} for a in wanted if a in cannot]

    from .data import sample_paragraphs

    sample = sample_paragraphs(cfg)
    cache = StageCache(out / "stages")
    key_cfg = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in ("name_base", "name_adapted", "device", "analyses")
    }
    key_cfg["sample"] = sample.key()  # the paragraphs themselves, not only how they were drawn
    results: list[AnalysisResult] = []
    meta: dict[str, Any] = {}
    captured = None
    with (
        warnings.catch_warnings(record=True) as caught,
        _stages_progress(progress, len(run)) as step,
    ):
        warnings.simplefilter("always")
        for stage in run:
            step(stage)
            fn = _STAGES[stage]
            if stage in ("probe", "similarity") and captured is None:
                captured = _capture(handles, sample, cfg, out, progress)

            def compute(fn=fn, captured=captured):
                return fn(handles, sample, cfg, captured)

            # the probe stage also depends on the task definitions and their data files
            files = task_key(cfg.tasks) if stage == "probe" else []
            stage_cfg = dict(key_cfg, task_files=files) if files else key_cfg
            try:
                res, m = cache.run(stage, fps, stage_cfg, compute)
            except (ValueError, RuntimeError) as e:  # recorded, never silently dropped
                log.warning("stage %s failed: %s", stage, e)
                skipped.append({"analysis": stage, "reason": f"failed: {e}"})
                continue
            results += res
            meta.update(m)
    stage_warnings = sorted(
        {
            str(w.message)
            for w in caught
            if "bootstrap" in str(w.message) or "transferlens" in w.filename
        }
    )
    for r in results:  # display names are not part of the cache key
        r.config["display_names"] = cfg.display_names
    meta.update(
        {
            "title": f"{cfg.name_base} vs {cfg.name_adapted}",
            "warnings": notes + stage_warnings[:10],
            "skipped": skipped,
            "samples": [
                dict(s, model=cfg.display_names.get(s["model"], s["model"]))
                for s in meta.get("samples", [])
            ],
        }
    )
    manifest = _manifest(handles, cfg, command, cache, run, skipped)
    atomic_write_text(out / "manifest.json", json.dumps(to_jsonable(manifest), indent=1))
    save_results(out / "results.json", results, meta=meta)
    return render_report(out)


def _capture(handles, sample, cfg, out, progress):
    from .representations import capture_stage

    return capture_stage(handles, sample, cfg, out / "stores", progress=progress)


def _manifest(handles, cfg: CompareConfig, command, cache: StageCache, run, skipped):
    from ..models.checkpoint import package_versions

    return {
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "models": {role: h.describe() for role, h in handles.items()},
        "versions": package_versions(),
        "analyses": run,
        "skipped": skipped,
        "stages_reused": cache.reused,
        "stages_computed": cache.computed,
        "complete": True,
    }


def _behaviour(handles, sample, cfg, captured):
    from .behaviour import behaviour_stage

    return behaviour_stage(handles, sample, cfg)


def _probe(handles, sample, cfg, captured):
    from .representations import probe_stage

    return probe_stage(handles, captured, cfg)


def _similarity(handles, sample, cfg, captured):
    from .representations import similarity_stage

    return similarity_stage(handles, captured, cfg)


def _patch(handles, sample, cfg, captured):
    from .causal import patch_stage

    return patch_stage(handles, sample, cfg)


def _lens(handles, sample, cfg, captured):
    from .causal import lens_stage

    return lens_stage(handles, sample, cfg)


def _weights(handles, sample, cfg, captured):
    from .causal import weights_stage

    return weights_stage(handles, sample, cfg)


_STAGES: dict[str, Callable[..., tuple[list[AnalysisResult], dict[str, Any]]]] = {
    "behaviour": _behaviour,
    "probe": _probe,
    "similarity": _similarity,
    "patch": _patch,
    "lens": _lens,
    "weights": _weights,
}
