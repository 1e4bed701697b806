"""Attribution patching: a first-order estimate of an activation-patching grid.

Patching a site from the source run into the target run changes the metric by approximately

    Δm ≈ (a_source − a_target)ᵀ ∂m/∂a |_target

(Nanda 2023; Syed et al. 2023). For denoising the target is the corrupt run and the source the
clean run; for noising the reverse. The whole grid (every layer, position and head of one
component) costs two forward passes (source and target) and one backward pass on the target
run, instead of one forward pass per cell. The estimate is exact when the metric is linear in
the patched activation (e.g. a logit difference patched at ``final_norm`` or ``logits``, since
the unembedding is linear) and degrades where the model is strongly non-linear in it (large
patches, saturated softmaxes, a KL at its minimum, whose gradient is zero).

:func:`attribution_correlation` measures how far to trust an estimate: its Pearson correlation,
over the cells of a grid, with real activation patching of the same grid.

Gradients come from ``torch.autograd.grad`` inside ``torch.enable_grad()``: the caller's grad
mode is restored, and no ``.grad`` is written on the model's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models.handle import ModelHandle
from ..models.hooks import SiteFn
from ..models.sites import Site
from .patch_metrics import Metric, PatchGrid, build_metric
from .patching import (
    DIRECTIONS,
    GaussianNoise,
    _logits,
    _with_delta,
    cache_activations,
    grid_cells,
    prepare_inputs,
    run_config,
)

__all__ = ["attribution_correlation", "attribution_patching"]


def _gradient_run(
    handle: ModelHandle,
    tokens: torch.Tensor,
    sites: Sequence[Site],
    delta: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[Site, torch.Tensor], dict[Site, torch.Tensor]]:
    """Forward the target run with a zero perturbation at each site that gradients can reach.

    Returns ``(logits, activations, zeros)``; ``∂m/∂zeros[site]`` is ``∂m/∂a`` at the site.
    """
    acts: dict[Site, torch.Tensor] = {}
    zeros: dict[Site, torch.Tensor] = {}

    def tap(site: Site) -> SiteFn:
        def fn(act: torch.Tensor) -> torch.Tensor:
            z = torch.zeros_like(act, requires_grad=True)
            acts[site], zeros[site] = act.detach().clone(), z
            return act + z

        return fn

    def read(site: Site) -> SiteFn:
        def fn(act: torch.Tensor) -> None:
            acts[site] = act.detach().clone()

        return fn

    def grad_only(site: Site) -> SiteFn:
        def fn(act: torch.Tensor) -> torch.Tensor:
            zeros[site] = z = torch.zeros_like(act, requires_grad=True)
            return act + z

        return fn

    fns: dict[Site, SiteFn] = {}
    for s in sites:
        if s.component == "resid_mid":
            # resid_mid = resid_pre + attn_out, and attn_out reaches the rest of the model only
            # through it, so ∂m/∂resid_mid = ∂m/∂attn_out (a zero added to resid_mid itself
            # would be no change to write back).
            fns[s] = read(s)
            fns[Site("attn_out", s.layer)] = grad_only(s)
        else:
            fns[s] = tap(s)
    _with_delta(fns, delta, 1)
    logits = _logits(handle, tokens, fns)
    return logits, acts, zeros


def attribution_patching(
    handle: ModelHandle,
    clean: str | Sequence[str] | torch.Tensor,
    corrupt: str | Sequence[str] | torch.Tensor | GaussianNoise,
    metric: str | Metric = "logit_diff",
    component: str = "resid_pre",
    *,
    answer: Any = None,
    wrong: Any = None,
    direction: str = "denoising",
    by_position: bool = True,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> PatchGrid:
    """Estimate the grid of :func:`~transferlens.analysis.patching.activation_patching`.

    Arguments are those of ``activation_patching`` (without ``batch_size``). The grid's values
    are ``m_target + Δm`` per prompt (averaged over prompts), so they read like patched metric
    values and :meth:`PatchGrid.normalized` applies unchanged; ``method`` is
    ``"attribution"``. Over all positions, Δm sums the per-position terms.

    Raises:
        ValueError: as ``activation_patching``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: use 'denoising' or 'noising'")
    clean_ids, corrupt_ids, delta = prepare_inputs(handle, clean, corrupt)
    n, t = clean_ids.shape
    cells, axes, coords = grid_cells(
        handle,
        component,
        t,
        by_position=by_position,
        layers=layers,
        positions=positions,
        heads=heads,
    )
    sites = sorted({c.cache_site for c in cells})
    denoise = direction == "denoising"
    src_ids, src_delta = (clean_ids, None) if denoise else (corrupt_ids, delta)
    tgt_ids, tgt_delta = (corrupt_ids, delta) if denoise else (clean_ids, None)
    source, src_logits = cache_activations(handle, src_ids, sites, embed_delta=src_delta)
    idx = torch.arange(n, device=clean_ids.device)
    with torch.enable_grad():
        logits, target, zeros = _gradient_run(handle, tgt_ids, sites, tgt_delta)
        clean_logits = src_logits if denoise else logits.detach()
        fn = build_metric(
            handle, metric, n, answer=answer, wrong=wrong, reference_logits=clean_logits
        )
        m = fn(logits, idx)
        grads = torch.autograd.grad(m.sum(), [zeros[s] for s in sites], allow_unused=True)
    grad = {
        s: g if g is not None else torch.zeros_like(zeros[s])
        for s, g in zip(sites, grads, strict=True)
    }
    m_target = m.detach().double().cpu()
    m_source = fn(src_logits, idx).detach().double().cpu()
    terms = {s: ((source[s] - target[s]) * grad[s]).sum(-1).double().cpu() for s in sites}
    out = torch.empty((len(cells), n), dtype=torch.float64)
    for i, c in enumerate(cells):
        term = terms[c.cache_site]  # (n, pos) or (n, pos, heads)
        if c.component == "head":
            term = term[:, :, c.head]
        out[i] = (term.sum(1) if c.position is None else term[:, c.position]) + m_target
    per_prompt = out.reshape(*[len(coords[a]) for a in axes], n)
    name = metric if isinstance(metric, str) else getattr(metric, "name", "custom")
    m_clean, m_corrupt = (m_source, m_target) if denoise else (m_target, m_source)
    config = run_config(handle, corrupt, component, direction, by_position, name, n, t)
    return PatchGrid(
        per_prompt.mean(-1),
        per_prompt,
        axes,
        coords,
        component,
        name,
        direction,
        m_clean,
        m_corrupt,
        "attribution",
        config,
    )


def attribution_correlation(estimate: PatchGrid, real: PatchGrid) -> float:
    """Pearson correlation, over the cells of one grid, of an attribution estimate with real
    activation patching (prompt means of the metric, so of the effects too).

    Args:
        estimate: a grid from :func:`attribution_patching`.
        real: the same grid from :func:`~transferlens.analysis.patching.activation_patching`.

    Returns:
        The correlation in [-1, 1]; NaN for fewer than 2 cells or a constant grid.

    Raises:
        ValueError: the grids differ in component, direction, metric, axes or coordinates.
    """
    for attr in ("component", "direction", "metric", "axes", "coords"):
        a, b = getattr(estimate, attr), getattr(real, attr)
        if a != b:
            raise ValueError(f"the grids differ in {attr} ({a!r} vs {b!r}); compare one grid")
    x = torch.stack([estimate.values.flatten(), real.values.flatten()]).double()
    if x.shape[1] < 2 or bool((x.std(dim=1) == 0).any()):
        return float("nan")
    return float(torch.corrcoef(x)[0, 1])
