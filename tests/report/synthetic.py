"""Synthetic results in the report's shapes (for figure and render tests)."""

from __future__ import annotations

import numpy as np

from transferlens.results import AnalysisResult


def synthetic_results(n_layers: int = 4, seed: int = 0) -> list[AnalysisResult]:
    rng = np.random.default_rng(seed)
    langs = ["en", "sv", "de"]
    models = {"base": "a" * 64, "adapted": "b" * 64}
    cfg = {"display_names": {"base": "Base", "adapted": "Swedish-adapted"}}
    out = []
    bpb = AnalysisResult(
        "behaviour",
        "behaviour_bpb",
        "bits_per_byte",
        config=cfg,
        models=models,
        data={"description": "Test split.", "ci_unit": "paragraphs"},
    )
    fert = AnalysisResult(
        "behaviour", "behaviour_fertility", "tokens_per_word", config=cfg, models=models
    )
    for m in models:
        for lang in langs:
            v = 1.5 + rng.random()
            bpb.add(v, ci=(v - 0.1, v + 0.1), n=100, model=m, language=lang)
            f = 1.2 + rng.random()
            fert.add(f, ci=(f - 0.05, f + 0.05), n=100, model=m, language=lang)
    out += [bpb, fert]
    probe = AnalysisResult(
        "probe",
        "probe_accuracy",
        "accuracy",
        config=cfg,
        models=models,
        data={"chance": {"language_id": 1 / 3}},
    )
    for m in models:
        for kind in ("task", "control"):
            for layer in range(n_layers):
                v = float(
                    np.clip(
                        0.5
                        + 0.1 * layer
                        + 0.05 * rng.standard_normal()
                        - (0.3 if kind == "control" else 0),
                        0,
                        1,
                    )
                )
                probe.add(
                    v,
                    ci=(max(0, v - 0.05), min(1, v + 0.05)),
                    n=200,
                    task="language_id",
                    model=m,
                    kind=kind,
                    layer=layer,
                )
    out.append(probe)
    tr = AnalysisResult("probe", "probe_transfer", "accuracy", config=cfg, models=models)
    for m in models:
        for a in langs:
            for b in langs:
                tr.add(float(rng.random()), model=m, train_language=a, test_language=b)
    out.append(tr)
    cka = AnalysisResult("similarity", "cka_matrix", "linear_cka", config=cfg, models=models)
    for pair in ("base-base", "adapted-adapted", "base-adapted"):
        for i in range(n_layers):
            for j in range(n_layers):
                cka.add(float(np.exp(-abs(i - j) / 2)), pair=pair, layer_a=i, layer_b=j)
    out.append(cka)
    per = AnalysisResult("similarity", "cka_base_adapted", "linear_cka", config=cfg, models=models)
    for lang in langs:
        for layer in range(n_layers):
            v = 1 - 0.05 * layer
            per.add(v, ci=(v - 0.02, v + 0.01), n=50, language=lang, layer=layer)
    out.append(per)
    xl = AnalysisResult(
        "similarity",
        "crosslingual",
        "mixed",
        config=dict(cfg, languages=["sv", "en"]),
        models=models,
        data={"chance": 0.02},
    )
    for met in ("cka", "retrieval"):
        for m in models:
            for layer in range(n_layers):
                v = float(rng.random())
                xl.add(v, ci=(v * 0.9, min(1, v * 1.1)), metric=met, model=m, layer=layer)
    out.append(xl)
    pt = AnalysisResult(
        "patch", "patch_cross_model", "normalised_effect", config=cfg, models=models
    )
    for d in ("adapted_to_base", "base_to_adapted"):
        for comp in ("resid_pre", "attn_out", "mlp_out"):
            for layer in range(n_layers):
                pt.add(float(rng.uniform(-0.2, 1.0)), direction=d, component=comp, layer=layer)
    out.append(pt)
    ll = AnalysisResult("lens", "latent_language", "probability", config=cfg, models=models)
    for m in models:
        for lang in ("en", "sv"):
            for layer in range(n_layers):
                v = float(rng.random() * 0.5)
                ll.add(v, ci=(v * 0.8, v * 1.2), model=m, language=lang, layer=layer)
    out.append(ll)
    wc = AnalysisResult("weights", "weight_change", "relative_change", config=cfg, models=models)
    for layer in range(n_layers):
        for mod in ("attn", "mlp"):
            wc.add(float(rng.random() * 0.1), layer=layer, module=mod)
    out.append(wc)
    return out
