"""Causal and weight stages: cross-model patching, lenses, weight differences."""

from __future__ import annotations

from typing import Any

from ..results import AnalysisResult
from .config import CompareConfig
from .data import LAYER_NOTE, Sample

__all__ = ["lens_stage", "patch_stage", "weights_stage"]


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


def patch_stage(
    handles: dict[str, Any],
    sample: Sample,
    cfg: CompareConfig,
) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Cross-model patching, both directions, all positions, per component and layer."""
    from ..analysis.cross_model import cross_model_patching, default_prompts

    base, adapted = handles["base"], handles["adapted"]
    prompts = default_prompts(base.tokenizer, n=max(2, cfg.patch_prompts // 2), seed=cfg.seed)
    full = cross_model_patching(
        base,
        adapted,
        prompts,
        components=("resid_pre", "attn_out", "mlp_out"),
        n_boot=cfg.n_boot,
        ci=cfg.ci_level,
        seed=cfg.seed,
        batch_size=max(8, cfg.batch_size),
    )
    full.name = "patch_cross_model_full"
    kinds = ", ".join(full.data.get("kinds", []))
    n_ex = full.data.get("n_excluded", 0)
    fig = AnalysisResult(
        "patch",
        "patch_cross_model",
        "normalised_effect",
        **_common(handles, cfg),
        data={
            "description": f"{full.data.get('n_prompts')} prompts from the {sample.split} "
            f"split ({kinds}); target: log-probability of the reference "
            f"continuation; {n_ex} prompts excluded because the two models "
            "score them alike (|gap| ≤ min_gap).",
            "ci_unit": "prompts",
        },
    )
    for r in full.records:
        if r.get("metric") == "normalized_effect" and r.get("head") is None:
            ci = (r["ci_low"], r["ci_high"]) if r.get("ci_low") is not None else None
            fig.add(
                r["value"] if r["value"] is not None else float("nan"),
                ci=ci,
                n=r.get("n"),
                direction=r["direction"],
                component=r["component"],
                layer=r["layer"],
            )
    if n_ex:
        fig.notes.append(
            f"{n_ex} of {full.data.get('n_prompts')} prompts excluded from the "
            "normalised effect (the models' target log-probabilities differ by "
            "less than min_gap)"
        )
    return [fig, full], {}


def lens_stage(
    handles: dict[str, Any],
    sample: Sample,
    cfg: CompareConfig,
) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Latent language (Wendler et al.): logit-lens probability of the answer word in the
    target (Swedish), latent (English) and source language per layer, base vs adapted, on
    word-translation prompts mined from short aligned corpus entries."""
    import numpy as np

    from ..analysis.latent_language import latent_language, mine_word_pairs

    target = "sv"
    source = next((lang for lang in ("de", "da", "fi") if lang in cfg.languages), "de")
    pairs = mine_word_pairs(languages=("en", target, source), split=sample.split)
    rng = np.random.default_rng(cfg.seed)
    pick = rng.permutation(len(pairs.items))[: cfg.lens_items]
    items = [pairs.items[i] for i in sorted(pick.tolist())]
    for shots in (2, 1, 0):  # fewer solved examples when the context is short
        try:
            full = latent_language(
                handles["base"],
                items,
                source=source,
                target=target,
                adapted=handles["adapted"],
                latent="en",
                n_shots=shots,
                n_boot=cfg.n_boot,
                ci=cfg.ci_level,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
            )
            break
        except ValueError as e:
            if "context" not in str(e) or shots == 0:
                raise
    full.name = "latent_language_full"
    kept = full.data.get("filter", {})
    fig = AnalysisResult(
        "lens",
        "latent_language",
        "language_probability",
        **_common(handles, cfg),
        data={
            "description": f"{source}→{target} word-translation prompts ({shots}-shot) from "
            f"{len(items)} word pairs mined from short aligned entries of the "
            f"{sample.split} split ({pairs.counts.get('unique', '?')} pairs "
            f"mined; overlap filter: {_filter_text(kept)}). {LAYER_NOTE}",
            "ci_unit": "word pairs",
            "mined": pairs.counts,
        },
    )
    for r in full.records:
        if r.get("model") in ("base", "adapted"):
            ci = (r["ci_low"], r["ci_high"]) if r.get("ci_low") is not None else None
            fig.add(
                r["value"],
                ci=ci,
                n=r.get("n"),
                model=r["model"],
                language=r["language"],
                layer=r["layer"] + 1,  # the lens counts the embedding as -1: 0 here, as in
            )  # the probe and CKA figures
    fig.notes += full.notes
    return [fig, full], {}


def _filter_text(kept: dict[str, Any]) -> str:
    """The latent-language item filter in words (``{'items': 80, 'overlap': 47, ...}``)."""
    if not kept:
        return "none"
    parts = [f"{kept.get('items', '?')} items", f"{kept.get('kept', '?')} kept"]
    why = {
        "overlap": "answer token sets overlapping between languages",
        "missing_word": "a word missing",
        "no_tokens": "no prefix token in the vocabulary",
    }
    parts += [f"{kept[k]} dropped for {w}" for k, w in why.items() if kept.get(k)]
    return ", ".join(parts)


def _module_kind(name: str) -> str | None:
    parts = name.split(".")
    if any(p in ("attn", "self_attn", "attention") for p in parts):
        return "attention"
    if any(p in ("mlp", "feed_forward") for p in parts):
        return "mlp"
    return None


def weights_stage(
    handles: dict[str, Any],
    sample: Sample,
    cfg: CompareConfig,
) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Relative weight change ‖ΔW‖_F/‖W‖_F per layer for attention and MLP matrices."""
    import math

    from ..analysis.weights import weight_diff

    diff = weight_diff(handles["base"], handles["adapted"], spectra=True, n_singular=8)
    fig = AnalysisResult(
        "weights",
        "weight_change",
        "relative_change",
        **_common(handles, cfg),
        data={
            "description": "Frobenius norms summed over the attention (resp. MLP) weight "
            "matrices of each block; exact, no interval."
        },
    )
    sums: dict[tuple[int, str], list[float]] = {}
    for r in diff["modules"].records:
        kind = _module_kind(r["module"])
        if r.get("layer") is None or kind is None:
            continue
        acc = sums.setdefault((r["layer"], kind), [0.0, 0.0])
        acc[0] += r["delta_norm"] ** 2
        acc[1] += r["base_norm"] ** 2
    for (layer, kind), (d2, b2) in sorted(sums.items()):
        fig.add(math.sqrt(d2) / math.sqrt(b2) if b2 > 0 else float("nan"), layer=layer, module=kind)
    modules = diff["modules"]
    modules.name = "weight_change_modules"
    fig.notes += modules.notes
    return [fig, modules], {}
