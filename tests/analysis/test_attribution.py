"""Attribution patching: exact where the metric is linear, first-order correct, grad mode kept."""

from __future__ import annotations

import pytest
import torch

from transferlens.analysis.attribution import attribution_correlation, attribution_patching
from transferlens.analysis.patching import GaussianNoise, activation_patching
from transferlens.models import tiny_model

ANSWER, WRONG = 5, 7


@pytest.fixture(scope="module")
def models(tiny_tok):
    out = {}
    for fam in ("gpt2", "llama", "gemma3"):
        h = tiny_model(fam, n_layers=2, seed=3, tokenizer=tiny_tok)
        h.model.double()
        out[fam] = h
    return out


def _pair(tok):
    ids = tok("Choose Format - Cells to open the dialog")["input_ids"][:7]
    clean = torch.tensor([ids, ids[:3] + [40] + ids[4:]])
    corrupt = clean.clone()
    corrupt[:, 2] = 50
    corrupt[:, 4] = 61
    return clean, corrupt


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("component", ["final_norm", "logits"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_exact_when_metric_is_linear_in_the_site(models, tiny_tok, family, component, direction):
    # logits = W_U · final_norm (+ bias), and the logit difference is linear in the logits, so
    # the first-order estimate is the patching result itself.
    h = models[family]
    clean, corrupt = _pair(tiny_tok)
    kw = dict(answer=ANSWER, wrong=WRONG, direction=direction)
    real = activation_patching(h, clean, corrupt, "logit_diff", component, **kw)
    est = attribution_patching(h, clean, corrupt, "logit_diff", component, **kw)
    assert est.method == "attribution" and est.axes == ("pos",)
    assert (real.values - real.corrupt_value).abs().max() > 1e-3
    torch.testing.assert_close(est.values, real.values, atol=1e-10, rtol=0)
    torch.testing.assert_close(est.clean, real.clean, atol=1e-12, rtol=0)


# Hugging Face's Llama/Gemma RMSNorm computes in float32 even in a float64 model, which puts a
# ~1e-7 floor under any difference; their patches must stay well above it.
@pytest.mark.parametrize("family,scale", [("gpt2", 1e-4), ("llama", 1e-4), ("gemma3", 1e-3)])
@pytest.mark.parametrize(
    "component,by_position",
    [
        ("resid_pre", True),
        ("resid_mid", True),
        ("attn_out", True),
        ("mlp_out", False),
        ("head", True),
        ("head", False),
        ("resid_post", False),
    ],
)
def test_first_order_correct_for_small_patches(
    models, tiny_tok, family, scale, component, by_position
):
    # A tiny corruption makes patching linear to first order: the estimate's error is second
    # order in the patch size, so it must be a small fraction of the effect.
    h = models[family]
    clean, _ = _pair(tiny_tok)
    noise = GaussianNoise(positions=[2, 4], scale=scale, seed=1)
    kw = dict(answer=ANSWER, wrong=WRONG, by_position=by_position)
    real = activation_patching(h, clean, noise, "logit_diff", component, **kw)
    est = attribution_patching(h, clean, noise, "logit_diff", component, **kw)
    eff_real = real.per_prompt - real.corrupt
    eff_est = est.per_prompt - est.corrupt
    size = eff_real.abs().max()
    assert size > 1e-6
    assert (eff_est - eff_real).abs().max() < 1e-2 * size


@pytest.mark.parametrize("component,by_position", [("resid_pre", True), ("head", False)])
def test_first_order_correct_when_noising_with_gaussian_noise(
    models, tiny_tok, component, by_position
):
    # noising inserts the noisy run's activations (the embedding site included) into the clean run
    h = models["gpt2"]
    clean, _ = _pair(tiny_tok)
    noise = GaussianNoise(positions=[2, 4], scale=1e-4, seed=1)
    kw = dict(answer=ANSWER, wrong=WRONG, by_position=by_position, direction="noising")
    real = activation_patching(h, clean, noise, "logit_diff", component, **kw)
    est = attribution_patching(h, clean, noise, "logit_diff", component, **kw)
    torch.testing.assert_close(est.corrupt, real.corrupt, atol=1e-12, rtol=0)
    eff_real = real.per_prompt - real.clean
    eff_est = est.per_prompt - est.clean
    size = eff_real.abs().max()
    assert size > 1e-6
    assert (eff_est - eff_real).abs().max() < 1e-2 * size


def test_correlation_with_real_patching_is_reported(models, tiny_tok):
    h = models["gpt2"]
    clean, corrupt = _pair(tiny_tok)
    kw = dict(answer=ANSWER, wrong=WRONG)
    for component in ("attn_out", "mlp_out", "resid_post"):
        real = activation_patching(h, clean, corrupt, "logit_diff", component, **kw)
        est = attribution_patching(h, clean, corrupt, "logit_diff", component, **kw)
        x = torch.stack(
            [
                (real.values - real.corrupt_value).flatten(),
                (est.values - est.corrupt_value).flatten(),
            ]
        )
        r = attribution_correlation(est, real)
        assert r == pytest.approx(float(torch.corrcoef(x)[0, 1]), abs=1e-12)
        assert r > 0.5, component
    # exact estimate (linear metric at the unembedding input): correlation 1
    real = activation_patching(h, clean, corrupt, "logit_diff", "final_norm", **kw)
    est = attribution_patching(h, clean, corrupt, "logit_diff", "final_norm", **kw)
    assert attribution_correlation(est, real) == pytest.approx(1.0, abs=1e-9)
    # a badly non-linear case (tiny Llama's residual stream, see docs/patching.md) is negative
    hl = models["llama"]
    real = activation_patching(hl, clean, corrupt, "logit_diff", "resid_pre", **kw)
    est = attribution_patching(hl, clean, corrupt, "logit_diff", "resid_pre", **kw)
    assert attribution_correlation(est, real) < 0
    other = attribution_patching(hl, clean, corrupt, "logit_diff", "resid_pre", layers=[0], **kw)
    with pytest.raises(ValueError, match="the grids differ in coords"):
        attribution_correlation(other, real)


@pytest.mark.parametrize("outer", ["no_grad", "enable_grad"])
def test_grad_mode_and_parameter_grads_untouched(models, tiny_tok, outer):
    h = models["llama"]
    clean, corrupt = _pair(tiny_tok)
    ctx = torch.no_grad() if outer == "no_grad" else torch.enable_grad()
    with ctx:
        before = torch.is_grad_enabled()
        g = attribution_patching(h, clean, corrupt, "kl", "head", by_position=False)
        assert torch.is_grad_enabled() == before
    assert g.values.shape == (2, 4)
    assert all(p.grad is None for p in h.model.parameters())
    assert not g.values.requires_grad
