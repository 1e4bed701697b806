"""Weight differences between a base and an adapted model, from the weights alone.

For every 2-D weight matrix W (linear and convolution-as-linear layers, embeddings,
unembedding) with update ΔW = W_adapted − W_base:

- ``relative_change`` = ‖ΔW‖_F / ‖W_base‖_F;
- ``effective_rank`` of ΔW (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j``
  over the singular values σ of ΔW (0 for ΔW = 0);
- ``rank90`` / ``rank99``: the fewest singular values holding 90 % / 99 % of the energy
  ``Σ σ_i²``;
- per layer: ``relative_change`` = sqrt(Σ‖ΔW‖²) / sqrt(Σ‖W‖²) over the layer's matrices.

A LoRA model (PEFT-wrapped, e.g. a LoRA checkpoint loaded with ``load_model``) contributes
ΔW = (α/r)·B·A (PEFT's ``scaling``, so rsLoRA's α/√r too) computed from the adapter weights,
not by subtracting merged weights. When the vocabulary was extended, matrices whose row (or
column) count differs are compared on the shared rows (token ids present in both
vocabularies, assuming new tokens were appended) and the new rows are reported separately.

No forward pass is run. The numbers are exact properties of two sets of weights: they carry no
sampling interval (``n`` is the number of weights compared).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.handle import ModelHandle
from ..models.sitemap import unwrap_model
from ..results import AnalysisResult

__all__ = [
    "effective_rank",
    "energy_rank",
    "lora_delta_weights",
    "lora_rank_usage",
    "weight_change_vs_cka",
    "weight_diff",
]

log = logging.getLogger(__name__)

ModelLike = ModelHandle | nn.Module | str | os.PathLike


# --------------------------------------------------------------------------- spectra
def _cpu64(singular_values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """|σ| as a float64 CPU tensor (spectra are short; on the CPU, whatever device made them)."""
    return torch.as_tensor(singular_values).detach().to("cpu", torch.float64).abs()


def effective_rank(singular_values: torch.Tensor | np.ndarray) -> float:
    """Roy & Vetterli (2007) effective rank ``exp(−Σ p_i log p_i)``, ``p = σ / ‖σ‖₁``.

    Returns 0 when all singular values are zero.
    """
    s = _cpu64(singular_values)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(singular_values: torch.Tensor | np.ndarray, energy: float) -> int:
    """Fewest singular values whose squares hold ``energy`` (e.g. 0.9) of ``Σ σ²``
    (0 when all are zero)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy} must be in (0, 1]")
    s = torch.sort(_cpu64(singular_values), descending=True).values
    e = s.pow(2)
    total = e.sum()
    if total <= 0:
        return 0
    frac = torch.cumsum(e, 0) / total
    return (
        int(torch.searchsorted(frac, torch.tensor(energy * (1 - 1e-12), dtype=torch.float64))) + 1
    )


# --------------------------------------------------------------------------- matrices
@dataclass
class _Matrix:
    weight: torch.Tensor  # the stored weight (LoRA: the base layer's)
    delta: torch.Tensor | None  # LoRA update in the weight's layout
    lora_r: int | None = None


def _as_module(x: ModelLike) -> nn.Module:
    if isinstance(x, ModelHandle):
        return x.model
    if isinstance(x, nn.Module):
        return x
    if isinstance(x, (str, os.PathLike)):
        from ..models.loading import load_model

        return load_model(x).model
    raise ValueError(
        f"cannot read weights from a {type(x).__name__}: pass a ModelHandle, an nn.Module or "
        "a checkpoint path"
    )


def _lora_delta(mod: nn.Module) -> tuple[torch.Tensor | None, int | None]:
    """(ΔW in the base weight's layout, rank) of a PEFT LoRA layer's active adapters."""
    if getattr(mod, "merged", False):
        raise ValueError(
            "the LoRA adapter is merged into the weights; pass the unmerged model (load_model "
            "with merge=False) or compare the merged model with its base as full weights"
        )
    delta, rank = None, 0
    for name in getattr(mod, "active_adapters", []):
        if name not in getattr(mod, "lora_A", {}):
            continue
        if getattr(mod, "use_dora", {}).get(name, False):
            raise ValueError("DoRA adapters are not supported: ΔW is not (α/r)·B·A for them")
        a = mod.lora_A[name].weight.detach().double()
        b = mod.lora_B[name].weight.detach().double()
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"LoRA adapter {name!r} on a non-linear layer is not supported")
        d = (b @ a) * float(mod.scaling[name])
        if getattr(mod, "fan_in_fan_out", False):
            d = d.T
        delta = d if delta is None else delta + d
        rank += a.shape[0]
    return delta, (rank or None)


_WRAPPER = re.compile(r"\._original_component(?=\.|$)")  # TransformerBridge's wrapper level
_SAVED = re.compile(r"\.modules_to_save\.[^.]+(?=\.|$)")  # peft modules_to_save copy


def _plain_name(name: str) -> str:
    """A module's name as in the plain Hugging Face model: without a TransformerBridge's
    ``._original_component`` levels and with a peft ``modules_to_save`` copy named as the
    module it replaces."""
    return _SAVED.sub("", _WRAPPER.sub("", name))


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """Names under which an already-listed 2-D weight appears again (a tied unembedding):
    ``{"lm_head": "model.embed_tokens"}``."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, mod in unwrap_model(model).named_modules():
        w = mod._parameters.get("weight") if hasattr(mod, "_parameters") else None
        if w is None or w.ndim != 2:
            continue
        name = _plain_name(name)
        if id(w) in first:
            out.setdefault(name, first[id(w)])
        else:
            first[id(w)] = name
    return out


def _matrices(model: nn.Module, *, with_lora: bool = True) -> dict[str, _Matrix]:
    """Every 2-D weight, by module name (tied weights once, under their first name; names as
    in the plain model, see :func:`_plain_name`). A peft ``modules_to_save`` module counts as
    its trained copy (``with_lora``) or its original (without)."""
    root = unwrap_model(model)
    seen: set[int] = set()
    out: dict[str, _Matrix] = {}
    skip: list[str] = []
    for name, mod in root.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if hasattr(mod, "original_module") and hasattr(mod, "modules_to_save"):
            # a ModulesToSaveWrapper: keep one of its two copies
            skip.append(name + (".original_module" if with_lora else ".modules_to_save"))
            continue
        if hasattr(mod, "base_layer") and hasattr(mod, "lora_A"):
            skip.append(name)
            w = mod.base_layer.weight
            delta, r = _lora_delta(mod) if with_lora else (None, None)
        else:
            w = mod._parameters.get("weight") if hasattr(mod, "_parameters") else None
            delta, r = None, None
        if w is None or w.ndim != 2 or id(w) in seen:
            continue
        seen.add(id(w))
        out[_plain_name(name).removesuffix(".original_module")] = _Matrix(
            weight=w.detach(), delta=delta, lora_r=r
        )
    return out


def lora_delta_weights(model: ModelLike) -> dict[str, torch.Tensor]:
    """ΔW = (α/r)·B·A of every LoRA-adapted module, in the base weight's layout (float64)."""
    mats = _matrices(_as_module(model))
    deltas = {k: m.delta for k, m in mats.items() if m.delta is not None}
    if not deltas:
        raise ValueError("the model has no active LoRA adapters (is it PEFT-wrapped and unmerged?)")
    return deltas


def _layer_prefixes(model: nn.Module) -> list[str]:
    """Module-name prefix of each block (``model.layers.3``)."""
    from ..models.sitemap import SiteMap

    root = unwrap_model(model)
    try:
        blocks = SiteMap(model).blocks
    except ValueError:
        return []
    ids = {id(b): i for i, b in enumerate(blocks)}
    pref = [""] * len(blocks)
    for name, mod in root.named_modules():
        if id(mod) in ids and not pref[ids[id(mod)]]:
            pref[ids[id(mod)]] = _plain_name(name)
    return pref


def _layer_of(name: str, prefixes: list[str]) -> int | None:
    for i, p in enumerate(prefixes):
        if p and (name == p or name.startswith(p + ".")):
            return i
    return None


def _spectrum(delta: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(delta.double())


# --------------------------------------------------------------------------- diff
def weight_diff(
    base: ModelLike,
    adapted: ModelLike,
    *,
    spectra: bool = True,
    n_singular: int = 16,
) -> dict[str, AnalysisResult]:
    """Per-module and per-layer weight change between two models (no forward pass).

    Args:
        base: the base model (handle, module, or checkpoint path).
        adapted: the adapted model; PEFT-wrapped LoRA models contribute (α/r)·B·A.
        spectra: compute singular values of ΔW (effective rank, energy ranks); off for speed.
        n_singular: how many of the largest singular values to list per module.

    Returns:
        ``modules`` (metric ``relative_change``; one record per module with ``module``,
        ``layer`` (None outside blocks), ``shape``, ``delta_norm``, ``base_norm``, and with
        ``spectra`` also ``effective_rank``, ``rank90``, ``rank99``, ``max_rank``, ``lora_r``),
        ``layers`` (per-layer ``relative_change``), ``singular_values`` (top ``n_singular``
        per module), and ``new_rows`` when the vocabulary was extended.
    """
    mb, ma = _as_module(base), _as_module(adapted)
    same_root = unwrap_model(mb) is unwrap_model(ma)
    wb = _matrices(mb, with_lora=not same_root)
    wa = _matrices(ma)
    # a weight tied in one model (the unembedding) and its own matrix in the other: compare
    # the other's matrix with the tied one
    for own, model, other in ((wb, mb, wa), (wa, ma, wb)):
        for alias, first in _tied_aliases(model).items():
            if alias in other and alias not in own and first in own:
                own[alias] = own[first]
    prefixes = _layer_prefixes(ma)
    notes: list[str] = []
    if not set(wb) & set(wa):
        raise ValueError(
            "no weight matrix of the two models pairs by module name (a different "
            "architecture, or a wrapper whose module names transferlens does not know); "
            "pass the plain Hugging Face models"
        )
    if same_root:
        notes.append("base and adapted are one model object: base = weights without the adapter")
    only_b = sorted(set(wb) - set(wa))
    only_a = sorted(set(wa) - set(wb))
    if only_b or only_a:
        notes.append(f"not compared (present in one model only): {only_b + only_a}")
    fp = {}
    for role, x in (("base", base), ("adapted", adapted)):
        if isinstance(x, ModelHandle):
            fp[role] = x.fingerprint
    common = dict(analysis="weights", models=fp, data={"n_modules": 0})
    mods = AnalysisResult(
        name="weight_change_modules",
        metric="relative_change",
        config={"spectra": spectra, "n_singular": n_singular},
        notes=notes,
        **common,
    )
    sv = AnalysisResult(name="weight_change_singular_values", metric="singular_value", **common)
    new_rows = AnalysisResult(name="weight_change_new_rows", metric="new_row_norm_ratio", **common)
    layer_sq: dict[Any, list[float]] = {}
    for name in [n for n in wa if n in wb]:
        b, a = wb[name], wa[name]
        wbase = b.weight.double() + (b.delta if b.delta is not None else 0)
        wad = a.weight.double()
        dl = a.delta
        if tuple(wbase.shape) != tuple(wad.shape):
            diff_dims = [i for i in range(2) if wbase.shape[i] != wad.shape[i]]
            if len(diff_dims) != 1:
                notes.append(
                    f"{name}: shapes {tuple(wbase.shape)} and {tuple(wad.shape)} "
                    "differ in both dimensions; not compared"
                )
                continue
            ax = diff_dims[0]
            k = min(wbase.shape[ax], wad.shape[ax])
            extra = wad.narrow(ax, k, wad.shape[ax] - k) if wad.shape[ax] > k else None
            wbase = wbase.narrow(ax, 0, k)
            wad_full = wad + (dl if dl is not None else 0)
            shared_adapted = wad_full.narrow(ax, 0, k)
            if extra is not None:
                new_norm = extra.norm(dim=1 - ax).mean()
                old_norm = shared_adapted.norm(dim=1 - ax).mean()
                new_rows.add(
                    float(new_norm / old_norm) if old_norm > 0 else float("nan"),
                    n=int(extra.shape[ax]),
                    module=name,
                    axis=ax,
                    shared=k,
                    new=int(extra.shape[ax]),
                )
            else:
                notes.append(
                    f"{name}: the adapted model has fewer rows ({wad.shape[ax]} < "
                    f"{wbase.shape[ax]}); compared on the first {k}"
                )
            delta = shared_adapted - wbase
        else:
            delta = (wad - wbase) + (dl if dl is not None else 0)
        base_norm = float(wbase.norm())
        dnorm = float(delta.norm())
        layer = _layer_of(name, prefixes)
        rel = dnorm / base_norm if base_norm > 0 else (0.0 if dnorm == 0 else float("inf"))
        rec: dict[str, Any] = dict(
            module=name, layer=layer, shape=list(delta.shape), delta_norm=dnorm, base_norm=base_norm
        )
        if a.lora_r is not None:
            rec["lora_r"] = a.lora_r
        if spectra:
            s = _spectrum(delta)
            rec.update(
                effective_rank=effective_rank(s),
                rank90=energy_rank(s, 0.9),
                rank99=energy_rank(s, 0.99),
                max_rank=int(min(delta.shape)),
            )
            for i, v in enumerate(s[:n_singular].tolist()):
                sv.add(v, module=name, layer=layer, index=i)
        mods.add(rel, n=int(delta.numel()), **rec)
        key = layer if layer is not None else "outside_blocks"
        acc = layer_sq.setdefault(key, [0.0, 0.0, 0])
        acc[0] += dnorm**2
        acc[1] += base_norm**2
        acc[2] += int(delta.numel())
    layers = AnalysisResult(name="weight_change_layers", metric="relative_change", **common)
    for key in sorted(layer_sq, key=lambda k: (isinstance(k, str), k if isinstance(k, int) else 0)):
        d2, b2, n = layer_sq[key]
        layers.add(
            math.sqrt(d2 / b2) if b2 > 0 else float("nan"),
            n=n,
            layer=None if isinstance(key, str) else key,
            part="outside_blocks" if isinstance(key, str) else "block",
        )
    for r in (mods, sv, new_rows, layers):
        r.data = {"n_modules": len(mods.records)}
    out = {"modules": mods, "layers": layers}
    if spectra:
        out["singular_values"] = sv
    if new_rows.records:
        out["new_rows"] = new_rows
    return out


def lora_rank_usage(model: ModelLike) -> AnalysisResult:
    """How much of each LoRA adapter's rank r its update ΔW = (α/r)·B·A uses.

    Returns:
        :class:`AnalysisResult` (metric ``effective_rank``) per module with ``lora_r``,
        ``rank90``, ``rank99``, ``numerical_rank`` (σ above the usual
        ``max(shape)·eps·σ_max`` tolerance) and ``rank_used`` = effective rank / r.
    """
    mats = _matrices(_as_module(model))
    res = AnalysisResult(analysis="weights", name="lora_rank_usage", metric="effective_rank")
    prefixes = _layer_prefixes(_as_module(model))
    for name, m in mats.items():
        if m.delta is None:
            continue
        s = _spectrum(m.delta)
        tol = (
            max(m.delta.shape) * torch.finfo(torch.float64).eps * float(s.max()) if s.numel() else 0
        )
        er = effective_rank(s)
        res.add(
            er,
            n=int(m.delta.numel()),
            module=name,
            layer=_layer_of(name, prefixes),
            lora_r=m.lora_r,
            rank90=energy_rank(s, 0.9),
            rank99=energy_rank(s, 0.99),
            numerical_rank=int((s > tol).sum()),
            rank_used=er / m.lora_r if m.lora_r else float("nan"),
        )
    if not res.records:
        raise ValueError("the model has no active LoRA adapters (is it PEFT-wrapped and unmerged?)")
    return res


# --------------------------------------------------------------------------- vs CKA
def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def weight_change_vs_cka(
    weights: AnalysisResult | Mapping[str, AnalysisResult],
    cka: AnalysisResult,
    *,
    where: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    n_perm: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
) -> AnalysisResult:
    """Pair per-layer weight change with per-layer representation change (1 − CKA).

    Args:
        weights: the ``layers`` result of :func:`weight_diff` (or its whole output).
        cka: per-layer CKA between base and adapted (records with ``layer`` and ``value``).
        where: coordinates selecting one CKA record per layer (e.g. ``{"site": "resid_post"}``).
        n_boot: bootstrap resamples over layers for the interval of Spearman's ρ.
        n_perm: permutations for the two-sided p-value (all of them when n! ≤ n_perm).
        ci: interval coverage.
        seed: seed of bootstrap and permutations.

    Returns:
        :class:`AnalysisResult` (metric ``weight_vs_cka_change``): per layer two records,
        ``quantity`` = ``weight_change`` and ``cka_change``, and one record
        ``quantity="spearman_rho"`` with a percentile-bootstrap interval over layers,
        ``n`` layers and ``p_value``.
    """
    if isinstance(weights, Mapping):
        weights = weights["layers"]
    wl = {r["layer"]: r["value"] for r in weights.records if r.get("layer") is not None}
    recs = cka.where(**dict(where or {})) if where else list(cka.records)
    recs = [r for r in recs if r.get("layer") is not None]
    by_layer: dict[int, float] = {}
    for r in recs:
        if r["layer"] in by_layer:
            coords = sorted(k for k in r if k not in ("layer", "value", "ci_low", "ci_high", "n"))
            raise ValueError(
                f"the CKA result has several records for layer {r['layer']}; select one per "
                f"layer with where={{...}} over its coordinates {coords}"
            )
        by_layer[int(r["layer"])] = float(r["value"])
    layers = sorted(set(wl) & set(by_layer))
    if len(layers) < 3:
        raise ValueError(
            f"only {len(layers)} layers are in both results; need at least 3 to correlate"
        )
    x = np.array([wl[lyr] for lyr in layers], dtype=np.float64)
    y = np.array([1.0 - by_layer[lyr] for lyr in layers], dtype=np.float64)
    rho = _spearman(x, y)
    rng = np.random.default_rng(seed)
    n = len(layers)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        boots.append(_spearman(x[idx], y[idx]))
    alpha = (1 - ci) / 2
    b = np.asarray(boots)
    b = b[np.isfinite(b)]
    low, high = (
        np.percentile(b, [100 * alpha, 100 * (1 - alpha)])
        if b.size
        else (float("nan"), float("nan"))
    )
    if math.factorial(n) <= n_perm:
        from itertools import permutations

        perms = [np.array(p) for p in permutations(range(n))]
    else:
        perms = [rng.permutation(n) for _ in range(n_perm)]
    null = np.array([_spearman(x, y[p]) for p in perms])
    hits = int(np.sum(np.abs(null) >= abs(rho) - 1e-12))
    # exact: the share of all n! orderings (the observed one among them); sampled: count the
    # observed ordering too, (1 + hits) / (1 + n_perm), so that p is never 0
    exact = len(perms) == math.factorial(n)
    p_value = (
        float("nan")
        if not np.isfinite(rho)
        else hits / len(perms)
        if exact
        else (1.0 + hits) / (1.0 + len(perms))
    )
    res = AnalysisResult(
        analysis="weights",
        name="weight_vs_cka_change",
        metric="weight_vs_cka_change",
        config={
            "n_boot": n_boot,
            "n_perm": n_perm,
            "ci": ci,
            "seed": seed,
            "cka_change": "1 - CKA",
            "where": dict(where or {}),
        },
        models=dict(weights.models),
        data={"layers": layers},
    )
    for lyr, xi, yi in zip(layers, x, y, strict=True):
        res.add(xi, layer=lyr, quantity="weight_change")
        res.add(yi, layer=lyr, quantity="cka_change")
    res.add(rho, ci=(low, high), n=n, layer=None, quantity="spearman_rho", p_value=p_value)
    return res
