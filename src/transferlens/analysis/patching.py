"""Activation patching: one engine that runs a batch where each row is a different patched run.

Denoising runs the corrupt input and inserts a clean activation (is the site *sufficient*?);
noising runs the clean input and inserts a corrupt activation (is it *necessary*?). A *cell*
is one patch: a component at a layer, at one position or at all positions, for ``head`` sites
one head. Sweeping a grid of cells is:

1. one forward pass of the source run (clean for denoising) caching every site the grid needs;
2. the target input repeated once per cell in a batch (``batch_size`` rows per forward pass);
   one hook per site that appears in the batch replaces only the rows assigned to it, so one
   forward pass covers many positions, heads *and layers*;
3. the metric of every row (:mod:`transferlens.analysis.patch_metrics`).

The hooks are :func:`transferlens.models.site_hooks`, so the engine works on every family the
site map covers. Head cells use ``head.l.h`` sites ("this head now contributes the source
head's output"). Corruptions: counterfactual prompts of the same token length, or
:class:`GaussianNoise` on the embeddings of chosen positions (ROME).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.handle import ModelHandle
from ..models.hooks import SiteFn, site_hooks
from ..models.sites import Site
from .patch_inputs import GaussianNoise, _positions, encode_prompts, prepare_inputs, run_config
from .patch_metrics import Metric, PatchGrid, build_metric, output_logits

__all__ = [
    "PATCH_COMPONENTS",
    "Cell",
    "GaussianNoise",
    "PatchGrid",
    "activation_patching",
    "cache_activations",
    "encode_prompts",
    "grid_cells",
    "prepare_inputs",
    "run_cells",
    "run_config",
]

log = logging.getLogger(__name__)

PATCH_COMPONENTS = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "head",
    "final_norm",
    "logits",
)
_LAYERLESS = ("final_norm", "logits")
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class Cell:
    """One patch: ``component`` at ``layer`` (None for ``final_norm``/``logits``), at
    ``position`` (None = all positions), for ``head`` cells one ``head``."""

    component: str
    layer: int | None = None
    position: int | None = None
    head: int | None = None

    @property
    def hook_site(self) -> Site:
        """The site whose hook applies this patch."""
        return Site(self.component, self.layer, self.head)

    @property
    def cache_site(self) -> Site:
        """The site whose source activation this patch needs (all heads for head cells)."""
        return Site(self.component, self.layer)


# --------------------------------------------------------------------------- engine
def _forward_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _logits(handle: ModelHandle, tokens: torch.Tensor, fns: Mapping[Site, SiteFn]) -> torch.Tensor:
    with site_hooks(handle.sitemap, fns):
        out = handle.model(input_ids=tokens, **_forward_kwargs(handle.model))
    return output_logits(handle, out)


def _with_delta(fns: dict[Site, SiteFn], delta: torch.Tensor | None, copies: int) -> None:
    """Add the corruption ``delta`` (per prompt) at the embeddings, before any patch there."""
    if delta is None:
        return
    site = Site("resid_pre", 0)
    rep = delta.repeat(copies, 1, 1)
    inner = fns.get(site)

    def fn(act: torch.Tensor) -> torch.Tensor:
        noisy = act + rep.to(act.dtype)
        out = None if inner is None else inner(noisy)  # a reader returns None: keep noisy
        return noisy if out is None else out

    fns[site] = fn


def cache_activations(
    handle: ModelHandle,
    tokens: torch.Tensor,
    sites: Sequence[Site | str],
    *,
    embed_delta: torch.Tensor | None = None,
) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
    """One forward pass that records the activations at ``sites``.

    Args:
        handle: the model.
        tokens: ``(n_prompts, pos)`` ids.
        sites: sites to record (``head.l`` gives ``(n, pos, n_heads, d_model)``).
        embed_delta: optional ``(n_prompts, pos, d_model)`` added to the embeddings
            (a :class:`GaussianNoise` corruption).

    Returns:
        ``({site: activation}, logits)``, all detached.
    """
    store: dict[Site, torch.Tensor] = {}

    def rec(site: Site) -> SiteFn:
        def fn(act: torch.Tensor) -> None:
            store[site] = act.detach().clone()

        return fn

    fns: dict[Site, SiteFn] = {}
    for s in sites:
        site = handle.sitemap.validate(s)
        fns[site] = rec(site)
    _with_delta(fns, embed_delta, 1)
    with torch.no_grad():
        logits = _logits(handle, tokens, fns)
    return store, logits.detach()


def _source_for(cell: Cell, source: Mapping[Site, torch.Tensor]) -> torch.Tensor:
    src = source.get(cell.cache_site)
    if src is None:
        raise ValueError(f"no source activation cached for site '{cell.cache_site}'")
    return src[:, :, cell.head] if cell.component == "head" else src


def _setter(
    src: torch.Tensor,
    rows_all: torch.Tensor,
    rows_pos: torch.Tensor,
    pos: torch.Tensor,
    n_prompts: int,
) -> SiteFn:
    """Replace the rows assigned to one site: whole rows (all positions) or one position."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        new = act.clone()
        s = src.to(device=act.device, dtype=act.dtype)
        if rows_all.numel():
            new[rows_all] = s[rows_all % n_prompts]
        if rows_pos.numel():
            new[rows_pos, pos] = s[rows_pos % n_prompts, pos]
        return new

    return fn


def _chunk_fns(
    cells: Sequence[Cell], source: Mapping[Site, torch.Tensor], n_prompts: int, device: torch.device
) -> dict[Site, SiteFn]:
    plan: dict[Site, tuple[list[int], list[int], list[int], torch.Tensor]] = {}
    for i, cell in enumerate(cells):
        site = cell.hook_site
        if site not in plan:
            plan[site] = ([], [], [], _source_for(cell, source))
        rows = range(i * n_prompts, (i + 1) * n_prompts)
        if cell.position is None:
            plan[site][0].extend(rows)
        else:
            plan[site][1].extend(rows)
            plan[site][2].extend([cell.position] * n_prompts)
    fns: dict[Site, SiteFn] = {}
    for site, (rows_all, rows_pos, pos, src) in plan.items():
        t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        fns[site] = _setter(src, t(rows_all), t(rows_pos), t(pos), n_prompts)
    return fns


def run_cells(
    handle: ModelHandle,
    tokens: torch.Tensor,
    source: Mapping[Site, torch.Tensor],
    cells: Sequence[Cell],
    metric: Metric,
    *,
    embed_delta: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Run every cell as a patched copy of the target input and measure it.

    Args:
        handle: the model that runs (the target).
        tokens: ``(n_prompts, pos)`` ids of the target run.
        source: activations to insert, from :func:`cache_activations` (of the other input,
            or of another model on the same input), keyed by :attr:`Cell.cache_site`.
        cells: the patches; each becomes ``n_prompts`` batch rows.
        metric: ``metric(logits, prompt_idx) -> (rows,)``.
        embed_delta: optional corruption of the target run (added at the embeddings of every
            row, before a patch at ``resid_pre.0``).
        batch_size: rows per forward pass (at least one cell's ``n_prompts`` rows).

    Returns:
        ``(n_cells, n_prompts)`` float64 metric values on the CPU, or
        ``(n_cells, n_prompts, m)`` for a metric that returns ``(rows, m)`` (several metrics
        from one forward pass).

    Raises:
        ValueError: a site the model lacks, a position out of range, a missing source.
    """
    n, t = tokens.shape
    for site in {c.hook_site for c in cells}:
        handle.sitemap.validate(site)
    for c in cells:
        if c.position is not None and not 0 <= c.position < t:
            raise ValueError(f"cell {c}: position {c.position} out of range for {t} tokens")
    for key, src in source.items():
        if src.shape[:2] != (n, t):
            raise ValueError(
                f"source '{key}' has shape {tuple(src.shape)}; expected ({n}, {t}, ...)"
            )
    per = max(1, int(batch_size) // n)
    parts: list[torch.Tensor] = []
    for start in range(0, len(cells), per):
        chunk = cells[start : start + per]
        k = len(chunk)
        fns = _chunk_fns(chunk, source, n, tokens.device)
        _with_delta(fns, embed_delta, k)
        prompt_idx = torch.arange(n, device=tokens.device).repeat(k)
        with torch.no_grad():
            logits = _logits(handle, tokens.repeat(k, 1), fns)
            vals = metric(logits, prompt_idx)
        parts.append(vals.detach().reshape(k, n, *vals.shape[1:]).double().cpu())
        log.debug("patched %d/%d cells", start + k, len(cells))
    if not parts:
        return torch.empty((0, n), dtype=torch.float64)
    return torch.cat(parts)


# --------------------------------------------------------------------------- grids
def grid_cells(
    handle: ModelHandle,
    component: str,
    n_pos: int,
    *,
    by_position: bool = True,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> tuple[list[Cell], tuple[str, ...], dict[str, list[int]]]:
    """The cells of a grid, in row-major order of its axes.

    Axes: ``(layer, pos)`` by position or ``(layer,)`` over all positions; ``head`` grids are
    ``(layer, pos, head)`` / ``(layer, head)``; ``final_norm``/``logits`` have no layer axis.

    Returns:
        ``(cells, axes, coords)`` with ``coords[axis]`` the values along each axis.
    """
    sm = handle.sitemap
    if component not in PATCH_COMPONENTS:
        raise ValueError(
            f"cannot patch component {component!r}; use one of {', '.join(PATCH_COMPONENTS)}"
        )
    layerless = component in _LAYERLESS
    sm.validate(Site(component, None if layerless else 0))
    if heads is not None and component != "head":
        raise ValueError(f"heads= applies to component 'head', not {component!r}")
    lay: list[int | None] = (
        [None] if layerless else list(range(sm.n_layers) if layers is None else layers)
    )
    for layer in lay:
        if layer is not None:
            sm.validate(Site(component, layer))
    if positions is not None and not by_position:
        raise ValueError(
            "positions= selects the positions of a by-position grid; with by_position=False "
            "every cell patches all positions: pass by_position=True (or leave positions out)"
        )
    pos = _positions(range(n_pos) if positions is None else positions, n_pos)
    hs = list(range(sm.n_heads) if heads is None else heads)
    for h in hs if component == "head" else []:
        sm.validate(Site("head", 0, h))
    axes = ([] if layerless else ["layer"]) + (["pos"] if by_position else [])
    axes += ["head"] if component == "head" else []
    coords = {"layer": lay, "pos": pos, "head": hs}
    grid = [coords[a] for a in axes]
    cells: list[Cell] = []
    for combo in itertools.product(*grid):
        d = dict(zip(axes, combo, strict=True))
        cells.append(Cell(component, d.get("layer"), d.get("pos"), d.get("head")))
    return cells, tuple(axes), {a: coords[a] for a in axes}  # type: ignore[misc]


# --------------------------------------------------------------------------- high level
def activation_patching(
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
    batch_size: int = 64,
) -> PatchGrid:
    """Patch one component over layers × positions (× heads) between a clean and a corrupt run.

    Args:
        handle: the model.
        clean: clean prompt(s) or ids ``(n_prompts, pos)``.
        corrupt: counterfactual prompt(s) of the same token length, or :class:`GaussianNoise`
            (the corrupt run is then the clean input with noisy embeddings).
        metric: ``logit_diff`` (needs ``answer``, ``wrong``), ``logprob`` (needs ``answer``),
            ``kl`` (to the clean run's last-position distribution), or a callable
            ``metric(logits, prompt_idx) -> (rows,)``.
        component: one of :data:`PATCH_COMPONENTS`.
        answer: answer token (string or id), one for all prompts or one per prompt.
        wrong: wrong-answer token for ``logit_diff``.
        direction: ``denoising`` (run corrupt, insert clean) or ``noising`` (the reverse).
        by_position: a ``(layer, pos)`` grid; False patches all positions at once.
        layers: layers to sweep (default all).
        positions: positions to sweep (default all; negative counts from the end).
        heads: heads to sweep for ``component="head"`` (default all).
        batch_size: rows per forward pass.

    Returns:
        A :class:`PatchGrid`.

    Raises:
        ValueError: prompts of different token lengths (both lengths named), a bad answer
            token, a site the model lacks, an unknown direction, a model without an LM head.
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
    clean_cache, clean_logits = cache_activations(handle, clean_ids, sites if denoise else [])
    corrupt_cache, corrupt_logits = cache_activations(
        handle, corrupt_ids, [] if denoise else sites, embed_delta=delta
    )
    fn = build_metric(handle, metric, n, answer=answer, wrong=wrong, reference_logits=clean_logits)
    idx = torch.arange(n, device=clean_ids.device)
    m_clean = fn(clean_logits, idx).double().cpu()
    m_corrupt = fn(corrupt_logits, idx).double().cpu()
    if denoise:
        vals = run_cells(
            handle, corrupt_ids, clean_cache, cells, fn, embed_delta=delta, batch_size=batch_size
        )
    else:
        vals = run_cells(handle, clean_ids, corrupt_cache, cells, fn, batch_size=batch_size)
    shape = tuple(len(coords[a]) for a in axes)
    per_prompt = vals.reshape(*shape, n)
    name = metric if isinstance(metric, str) else getattr(metric, "name", "custom")
    config = run_config(handle, corrupt, component, direction, by_position, name, n, t)
    config["batch_size"] = batch_size
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
        "activation",
        config,
    )
