"""Cross-model patching on a planted pair: two models identical except one layer's MLP."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from transferlens.analysis.cross_model import (
    PatchPrompt,
    check_compatible,
    cross_model_patching,
    default_prompts,
    load_prompts_jsonl,
)
from transferlens.analysis.patch_metrics import bootstrap_ratio_ci
from transferlens.models import tiny_model

K = 1  # the layer whose MLP differs
PROMPTS = [
    PatchPrompt("Choose Format - Cells to", " open the dialog"),
    PatchPrompt("Välj Format - Celler för att", " öppna"),
    PatchPrompt("Inserts a new table into", " the document"),
    PatchPrompt("The quick brown fox jumps", " over the lazy dog"),
]
COMPONENTS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")


def _copy_handle(h, model):
    return type(h)(
        model=model,
        tokenizer=h.tokenizer,
        sitemap=type(h.sitemap)(model),
        spec=h.spec,
        source=h.source,
        name=h.name + "-copy",
    )


@pytest.fixture(scope="module")
def pair(tiny_tok):
    base = tiny_model("gpt2", n_layers=3, seed=5, tokenizer=tiny_tok)
    base.model.double()
    model = copy.deepcopy(base.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = model.transformer.h[K].mlp.c_fc.weight
        w.add_(0.5 * torch.randn(w.shape, generator=g, dtype=w.dtype))
    return base, _copy_handle(base, model)


@pytest.fixture(scope="module")
def result(pair):
    base, adapted = pair
    return cross_model_patching(base, adapted, PROMPTS, components=COMPONENTS, n_boot=200)


def _one(res, **coords):
    recs = res.where(**coords)
    assert len(recs) == 1, coords
    return recs[0]


def test_layers_before_k_carry_nothing_and_k_carries_everything(result, pair):
    res = result
    base_lp = res.data["baselines"]["target_logprob"]["base"]
    adapted_lp = res.data["baselines"]["target_logprob"]["adapted"]
    assert abs(adapted_lp - base_lp) > 0.05
    for d in ("adapted_to_base", "base_to_adapted"):
        here = base_lp if d == "adapted_to_base" else adapted_lp
        zero_effect = (
            [("resid_pre", layer) for layer in range(K + 1)]
            + [("attn_out", layer) for layer in range(K + 1)]
            + [("mlp_out", layer) for layer in range(K)]
            + [("resid_post", layer) for layer in range(K)]
        )
        for comp, layer in zero_effect:
            rec = _one(
                res,
                direction=d,
                component=comp,
                layer=layer,
                position="all",
                metric="target_logprob",
            )
            # identical activations: no effect, up to float64 rounding of batched kernels
            assert abs(rec["value"] - here) < 1e-12, (d, comp, layer)
        for layer in range(K + 1):
            for head in range(4):
                rec = _one(
                    res,
                    direction=d,
                    component="head",
                    layer=layer,
                    head=head,
                    metric="target_logprob",
                )
                assert abs(rec["value"] - here) < 1e-12
    # patching the adapted MLP output into the base model makes it the adapted model
    for comp in ("mlp_out", "resid_post"):
        rec = _one(
            res, direction="adapted_to_base", component=comp, layer=K, metric="normalized_effect"
        )
        assert rec["value"] == pytest.approx(1.0, abs=1e-10)
        assert rec["n"] == len(PROMPTS) and rec["n_excluded"] == 0
        assert rec["q25"] == pytest.approx(1.0, abs=1e-9)
        assert rec["q75"] == pytest.approx(1.0, abs=1e-9)
        kl = _one(res, direction="adapted_to_base", component=comp, layer=K, metric="kl")
        assert kl["value"] == pytest.approx(0.0, abs=1e-12)
        back = _one(
            res, direction="base_to_adapted", component=comp, layer=K, metric="normalized_effect"
        )
        assert back["value"] == pytest.approx(0.0, abs=1e-10)
    rec = _one(
        res,
        direction="adapted_to_base",
        component="resid_pre",
        layer=K + 1,
        metric="normalized_effect",
    )
    assert rec["value"] == pytest.approx(1.0, abs=1e-10)
    before = _one(
        res,
        direction="adapted_to_base",
        component="mlp_out",
        layer=K - 1,
        metric="normalized_effect",
    )
    assert before["value"] == pytest.approx(0.0, abs=1e-10)
    assert res.data["baselines"]["kl_unpatched"]["adapted_to_base"] > 1e-4


def test_records_carry_intervals_and_serialise(result):
    res = result
    assert res.analysis == "patch"
    rec = _one(
        res, direction="adapted_to_base", component="attn_out", layer=2, metric="normalized_effect"
    )
    assert rec["ci_low"] <= rec["value"] <= rec["ci_high"] or math.isclose(
        rec["ci_low"], rec["ci_high"]
    )
    assert {"q25", "median", "q75", "n", "n_excluded"} <= set(rec)
    lp = _one(
        res, direction="adapted_to_base", component="attn_out", layer=2, metric="target_logprob"
    )
    assert lp["ci_low"] <= lp["value"] <= lp["ci_high"] and lp["n"] == len(PROMPTS)
    n_per_dir = 3 * 4 + 3 * 4  # 4 layer components x 3 layers + 3 layers x 4 heads
    assert len(res.records) == 2 * n_per_dir * 3
    json.dumps(res.to_dict(), allow_nan=False)


def test_by_position_zero_before_k(pair):
    base, adapted = pair
    res = cross_model_patching(
        base,
        adapted,
        PROMPTS[:2],
        components=["resid_pre", "mlp_out"],
        positions=[0, 2, -1],
        directions=["adapted_to_base"],
        n_boot=50,
    )
    base_lp = res.data["baselines"]["target_logprob"]["base"]
    for pos in (0, 2, -1):
        for layer in range(K + 1):
            rec = _one(
                res, component="resid_pre", layer=layer, position=pos, metric="target_logprob"
            )
            assert abs(rec["value"] - base_lp) < 1e-12
    moved = [
        abs(_one(res, component="mlp_out", layer=K, position=p, metric="kl")["value"])
        for p in (0, 2, -1)
    ]
    assert max(moved) > 0  # some position of the changed layer matters
    with pytest.raises(ValueError, match="position 40 is out of range"):
        cross_model_patching(base, adapted, PROMPTS[:1], components=["mlp_out"], positions=[40])


def test_identical_models_have_no_effect_and_undefined_normalisation(pair):
    base, _ = pair
    twin = _copy_handle(base, copy.deepcopy(base.model))
    for other in (twin, base):  # a copy, and the same model patched into itself
        res = cross_model_patching(
            base, other, PROMPTS, components=["resid_pre", "mlp_out"], n_boot=50
        )
        assert res.data["n_excluded"] == len(PROMPTS)
        assert any("excluded" in note for note in res.notes)
        lp = res.data["baselines"]["target_logprob"]["base"]
        for rec in res.where(metric="target_logprob"):
            assert abs(rec["value"] - lp) < 1e-12
        for rec in res.where(metric="kl"):
            assert abs(rec["value"]) < 1e-12
        for rec in res.where(metric="normalized_effect"):
            assert math.isnan(rec["value"]) and rec["n"] == 0
            assert rec["n_excluded"] == len(PROMPTS)
        written = [r for r in res.to_dict()["records"] if r["metric"] == "normalized_effect"]
        assert written[0]["value"] is None  # NaN is written as null


def test_min_gap_excludes_and_counts(pair):
    base, adapted = pair
    res = cross_model_patching(
        base, adapted, PROMPTS, components=["mlp_out"], layers=[K], min_gap=1e9, n_boot=50
    )
    rec = _one(res, direction="adapted_to_base", metric="normalized_effect")
    assert rec["n"] == 0 and rec["n_excluded"] == len(PROMPTS) and math.isnan(rec["value"])


def test_normalised_effect_is_a_ratio_of_means_with_exclusions_and_spread(pair):
    """Each prompt run alone gives its m_patched, m_base, m_adapted; the joint run's
    normalised effect must be mean(m_patched - m_base) / mean(m_adapted - m_base) over the
    prompts kept by min_gap (not the mean of per-prompt ratios), with the excluded counted."""
    base, adapted = pair
    kw = dict(components=["mlp_out"], layers=[K + 1], directions=["adapted_to_base"])
    per = []
    for p in PROMPTS:
        r = cross_model_patching(base, adapted, [p], n_boot=10, **kw)
        b = r.data["baselines"]["target_logprob"]
        per.append((_one(r, metric="target_logprob")["value"], b["base"], b["adapted"]))
    patched, m_base, m_adapted = np.array(per).T
    num, gap = patched - m_base, m_adapted - m_base
    smallest = np.sort(np.abs(gap))
    min_gap = float(smallest[:2].mean())  # excludes exactly one prompt
    keep = np.abs(gap) > min_gap
    ratios = num[keep] / gap[keep]
    want = num[keep].mean() / gap[keep].mean()
    assert abs(want - ratios.mean()) > 0.05  # the two estimators differ on these prompts
    res = cross_model_patching(base, adapted, PROMPTS, min_gap=min_gap, n_boot=200, **kw)
    rec = _one(res, metric="normalized_effect")
    assert rec["value"] == pytest.approx(want, abs=1e-9)
    assert rec["n"] == len(PROMPTS) - 1 and rec["n_excluded"] == 1
    assert res.data["n_excluded"] == 1 and any("1 of 4 prompts" in n for n in res.notes)
    q = np.quantile(ratios, [0.25, 0.5, 0.75])
    assert [rec["q25"], rec["median"], rec["q75"]] == pytest.approx(list(q), abs=1e-9)
    lo, hi = bootstrap_ratio_ci(num[keep], gap[keep], n_boot=200, seed=0)
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
    lp = _one(res, metric="target_logprob")  # the raw metric keeps every prompt
    assert lp["value"] == pytest.approx(patched.mean(), abs=1e-9) and lp["n"] == len(PROMPTS)


def test_sites_the_models_lack_are_refused(pair):
    base, adapted = pair
    with pytest.raises(ValueError, match="layer 3 out of range"):
        cross_model_patching(base, adapted, PROMPTS, components=["mlp_out"], layers=[3])
    with pytest.raises(ValueError, match="cannot patch component 'embed'"):
        cross_model_patching(base, adapted, PROMPTS, components=["embed"])


def test_incompatible_models_are_refused(pair, tiny_tok):
    base, _ = pair
    deeper = tiny_model("gpt2", n_layers=4, seed=5, tokenizer=tiny_tok)
    with pytest.raises(ValueError, match="n_layers: base 3, adapted 4"):
        check_compatible(base, deeper)
    llama = tiny_model("llama", n_layers=3, tokenizer=tiny_tok)
    with pytest.raises(ValueError, match="family: base gpt2, adapted llama"):
        cross_model_patching(base, llama, PROMPTS)

    class Swapped:
        def get_vocab(self):
            v = dict(tiny_tok.get_vocab())
            a, b = sorted(v)[10:12]
            v[a], v[b] = v[b], v[a]
            return v

    other = copy.copy(base)
    other.tokenizer = Swapped()
    with pytest.raises(ValueError, match="tokenizers differ.*2 tokens with other ids"):
        check_compatible(base, other)
    with pytest.raises(ValueError, match="unknown direction"):
        cross_model_patching(base, base, PROMPTS, directions=["sideways"])


def test_jsonl_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "English: cat\\nSwedish:", "target": " katt"}\n\n'
        '{"prompt": "a", "target": "b", "kind": "x"}\n',
        encoding="utf-8",
    )
    ps = load_prompts_jsonl(path)
    assert ps == [PatchPrompt("English: cat\nSwedish:", " katt"), PatchPrompt("a", "b", "x")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "target": "b"}\n{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'target' must be a non-empty string"):
        load_prompts_jsonl(bad)
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        load_prompts_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="no such prompts file"):
        load_prompts_jsonl(tmp_path / "missing.jsonl")


def test_default_prompts_from_rows(tiny_tok):
    rows = [
        {
            "en": "Choose Format - Cells to open the dialog.",
            "sv": "Välj Format - Celler för att öppna dialogrutan.",
        },
        {
            "en": "Inserts a new table into the document at the cursor position.",
            "sv": "Infogar en ny tabell i dokumentet vid markörens position.",
        },
        {"en": "Short.", "sv": "Kort."},
    ]
    ps = default_prompts(tiny_tok, n=5, prompt_tokens=8, target_tokens=3, rows=rows, seed=1)
    cont = [p for p in ps if p.kind == "continuation_sv"]
    trans = [p for p in ps if p.kind == "translation_en_sv"]
    assert len(cont) == 2  # "Kort." is too short to cut 11 tokens from
    assert all(len(p.ids) == 11 and p.n_prompt == 8 for p in cont)
    assert len(trans) == 3
    assert all(p.prompt.startswith("English: ") and p.prompt.endswith("\nSwedish:") for p in trans)
    assert all(1 <= len(p.ids) - p.n_prompt <= 3 for p in trans)
    assert ps == default_prompts(tiny_tok, n=5, prompt_tokens=8, target_tokens=3, rows=rows, seed=1)
    with pytest.raises(ValueError, match="unknown prompt kind"):
        default_prompts(tiny_tok, rows=rows, kinds=["poetry"])


def test_default_prompts_run_end_to_end(pair, tiny_tok):
    base, adapted = pair
    rows = [
        {
            "en": "Choose Format - Cells to open the dialog.",
            "sv": "Välj Format - Celler för att öppna dialogrutan.",
        }
    ]
    ps = default_prompts(tiny_tok, n=1, prompt_tokens=6, target_tokens=2, rows=rows)
    res = cross_model_patching(base, adapted, ps, components=["mlp_out"], layers=[K], n_boot=20)
    rec = _one(res, direction="adapted_to_base", metric="normalized_effect")
    assert rec["value"] == pytest.approx(1.0, abs=1e-10)
    assert sorted(res.data["kinds"]) == ["continuation_sv", "translation_en_sv"]


@pytest.mark.slow
def test_default_prompts_from_the_bundled_corpus(tiny_tok):
    ps = default_prompts(tiny_tok, n=4, prompt_tokens=12, target_tokens=3, max_tokens=48)
    kinds = [p.kind for p in ps]
    assert kinds.count("continuation_sv") == 4 and kinds.count("translation_en_sv") == 4
    assert all(len(p.ids) == 15 for p in ps if p.kind == "continuation_sv")
    assert all(len(p.ids) <= 48 for p in ps)
    assert len({p.prompt for p in ps}) == len(ps)  # repeated paragraphs are used once
    with pytest.raises(ValueError, match="together at most max_tokens"):
        default_prompts(tiny_tok, prompt_tokens=60, target_tokens=8, rows=[])
