"""Cross-model activation patching between a base and an adapted model.

On the same input, run one model and insert the other model's activation at one site:

- ``adapted_to_base``: run the base model with the adapted model's activation — *which layers
  carry the adaptation?* (a site is sufficient when the base model then behaves like the
  adapted one);
- ``base_to_adapted``: run the adapted model with the base model's activation — *which layers
  must change for it?* (a site is necessary when the adapted model then falls back to the
  base behaviour).

Metrics, per prompt (a prompt plus its target continuation, teacher forced):

- ``target_logprob``: ``Σ log p(target tokens)`` of the patched run;
- ``kl``: ``KL(p_donor ‖ p_patched)`` of the next-token distribution after the prompt, where the
  donor is the model whose activation is inserted (0 = the patched run predicts like it);
- ``normalized_effect``: ``(m_patched − m_base) / (m_adapted − m_base)`` of ``target_logprob``
  as a *ratio of means* over prompts (0 = base behaviour, 1 = adapted behaviour, in both
  directions). Prompts with ``|m_adapted − m_base| ≤ min_gap`` are excluded and counted
  (``n_excluded``); quartiles of the per-prompt ratios show the spread.

Intervals are percentile bootstraps over prompts. Both models must have the same architecture
and tokenisation (:func:`check_compatible`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..jsonl import json_lines
from ..models.handle import ModelHandle
from ..results import AnalysisResult
from .patch_inputs import _positions
from .patch_metrics import (
    KLDivergence,
    TargetLogProb,
    bootstrap_ratio_ci,
    continuation_labels,
    vocab_size,
)
from .patching import Cell, cache_activations, grid_cells, run_cells

__all__ = [
    "CROSS_DIRECTIONS",
    "PatchPrompt",
    "check_compatible",
    "cross_model_patching",
    "default_prompts",
    "load_prompts_jsonl",
]

log = logging.getLogger(__name__)

CROSS_DIRECTIONS = ("adapted_to_base", "base_to_adapted")


@dataclass(frozen=True)
class PatchPrompt:
    """A prompt and the target continuation whose log-probability is measured.

    Attributes:
        prompt: prompt text.
        target: target text (its tokens follow the prompt's).
        kind: where it came from (``continuation_sv``, ``translation_en_sv``, ``user``).
        ids: prompt + target token ids when they were cut at token level (otherwise the texts
            are tokenised: the prompt with special tokens, the target without).
        n_prompt: how many of ``ids`` are prompt tokens.
    """

    prompt: str
    target: str
    kind: str = "user"
    ids: tuple[int, ...] | None = None
    n_prompt: int | None = None


def check_compatible(base: ModelHandle, adapted: ModelHandle) -> None:
    """Raise if the two models cannot be patched into each other.

    Compares the family, ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, the vocabulary size
    and the tokenizers' token→id maps.

    Raises:
        ValueError: naming every difference.
    """
    a, b = base.sitemap, adapted.sitemap
    diffs = [
        f"{k}: base {x}, adapted {y}"
        for k, x, y in [
            ("family", a.family.name, b.family.name),
            ("n_layers", a.n_layers, b.n_layers),
            ("d_model", a.d_model, b.d_model),
            ("n_heads", a.n_heads, b.n_heads),
            ("d_head", a.d_head, b.d_head),
            ("vocab", vocab_size(base), vocab_size(adapted)),
        ]
        if x != y
    ]
    if diffs:
        raise ValueError(
            f"the models differ in architecture ({'; '.join(diffs)}); cross-model patching needs "
            "two models of the same architecture"
        )
    if base.tokenizer is None or adapted.tokenizer is None:
        raise ValueError("both models need a tokenizer for cross-model patching")
    va, vb = base.tokenizer.get_vocab(), adapted.tokenizer.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))
        only_b = sorted(set(vb) - set(va))
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} tokens only in base (e.g. {only_a[0]!r})")
        if only_b:
            parts.append(f"{len(only_b)} tokens only in adapted (e.g. {only_b[0]!r})")
        if moved:
            t = moved[0]
            parts.append(f"{len(moved)} tokens with other ids (e.g. {t!r}: {va[t]} vs {vb[t]})")
        raise ValueError(
            f"the tokenizers differ ({'; '.join(parts)}); cross-model patching needs the same "
            "tokenisation"
        )


def load_prompts_jsonl(path: str | os.PathLike) -> list[PatchPrompt]:
    """Read prompts from JSONL, one ``{"prompt": ..., "target": ...}`` object per line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not JSON or lacks a non-empty string prompt/target.
    """
    out: list[PatchPrompt] = []
    for i, row in json_lines(path, "prompts file"):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: expected an object with 'prompt' and 'target'")
        for key in ("prompt", "target"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise ValueError(f"{path}:{i}: '{key}' must be a non-empty string")
        out.append(PatchPrompt(row["prompt"], row["target"], str(row.get("kind", "user"))))
    if not out:
        raise ValueError(f"{path}: no prompts (expected JSONL lines with 'prompt' and 'target')")
    return out


def default_prompts(
    tokenizer: Any,
    *,
    n: int = 32,
    prompt_tokens: int = 16,
    target_tokens: int = 4,
    kinds: Sequence[str] = ("continuation", "translation"),
    split: str = "test",
    seed: int = 0,
    max_tokens: int = 64,
    rows: Sequence[dict] | None = None,
) -> list[PatchPrompt]:
    """Prompts from the bundled corpus: Swedish continuations and English→Swedish translation.

    - ``continuation``: a Swedish paragraph cut at token level into ``prompt_tokens`` prompt
      tokens (BOS included) and the next ``target_tokens`` tokens as target; every prompt has
      the same length, so by-position grids line up.
    - ``translation``: ``"English: {en}\\nSwedish:"`` with the first ``target_tokens`` tokens
      of ``" {sv}"`` as target (paragraphs of at most 24 English words).

    Paragraphs that occur twice (the help repeats short ones) are used once, and prompts longer
    than ``max_tokens`` (prompt + target) are skipped.

    Args:
        tokenizer: the (shared) tokenizer.
        n: prompts per kind (fewer if the split has fewer usable paragraphs).
        prompt_tokens: prompt length of continuation prompts.
        target_tokens: target length.
        kinds: which kinds to make.
        split: corpus split.
        seed: which paragraphs are drawn (same seed -> same prompts).
        max_tokens: longest prompt + target kept (the model's context).
        rows: corpus rows (dicts with ``en`` and ``sv``) instead of ``load_corpus``.
    """
    if prompt_tokens < 1 or target_tokens < 1 or prompt_tokens + target_tokens > max_tokens:
        raise ValueError(
            f"prompt_tokens={prompt_tokens}, target_tokens={target_tokens}: both must be >= 1 "
            f"and together at most max_tokens={max_tokens}"
        )
    if rows is None:
        from ..data import load_corpus  # the bundled corpus

        ds = load_corpus(languages=["en", "sv"], split=split)
        rows = [{"en": e, "sv": s} for e, s in zip(ds["en"], ds["sv"], strict=True)]
    pairs = list(dict.fromkeys((str(r.get("en") or ""), str(r.get("sv") or "")) for r in rows))
    random.Random(seed).shuffle(pairs)
    out: list[PatchPrompt] = []
    for kind in kinds:
        made = 0
        for en, sv in pairs:
            if made >= n:
                break
            if kind == "continuation":
                ids = tokenizer(sv, verbose=False)["input_ids"]  # length checked below
                if len(ids) < prompt_tokens + target_tokens or not sv:
                    continue
                ids = ids[: prompt_tokens + target_tokens]
                out.append(
                    PatchPrompt(
                        tokenizer.decode(ids[:prompt_tokens], skip_special_tokens=True),
                        tokenizer.decode(ids[prompt_tokens:]),
                        "continuation_sv",
                        tuple(int(t) for t in ids),
                        prompt_tokens,
                    )
                )
            elif kind == "translation":
                if not en or not sv or len(en.split()) > 24:
                    continue
                # lengths are checked below, so no tokenizer warning about long texts
                p = tokenizer(f"English: {en}\nSwedish:", verbose=False)["input_ids"]
                t = tokenizer(f" {sv}", add_special_tokens=False, verbose=False)["input_ids"]
                t = t[:target_tokens]
                if not t or len(p) + len(t) > max_tokens:
                    continue
                out.append(
                    PatchPrompt(
                        f"English: {en}\nSwedish:",
                        tokenizer.decode(t),
                        "translation_en_sv",
                        tuple(int(x) for x in p + t),
                        len(p),
                    )
                )
            else:
                raise ValueError(f"unknown prompt kind {kind!r}; use continuation or translation")
            made += 1
        if made == 0:
            raise ValueError(f"no usable {kind} prompts in the corpus split {split!r}")
    return out


def _encode(tokenizer: Any, p: PatchPrompt) -> tuple[list[int], int]:
    if p.ids is not None:
        if p.n_prompt is None or not 1 <= p.n_prompt < len(p.ids):
            raise ValueError(f"prompt {p.prompt!r}: n_prompt must leave at least one target token")
        return list(p.ids), p.n_prompt
    ids = tokenizer(p.prompt)["input_ids"]
    tgt = tokenizer(p.target, add_special_tokens=False)["input_ids"]
    if not ids or not tgt:
        raise ValueError(
            f"prompt {p.prompt!r} / target {p.target!r}: both must be at least one token"
        )
    return list(ids) + list(tgt), len(ids)


def _cells(
    base: ModelHandle,
    components: Sequence[str],
    length: int,
    layers: Sequence[int] | None,
    positions: str | Sequence[int],
) -> list[tuple[Cell, Any]]:
    """Cells for one input length, each with the position label of its record."""
    by_pos = not isinstance(positions, str)
    if isinstance(positions, str) and positions != "all":
        raise ValueError(f"positions={positions!r}: use 'all' or a list of positions")
    norm: list[int] = []
    if by_pos:
        try:
            norm = _positions(positions, length)
        except ValueError as e:
            raise ValueError(f"{e} (a prompt whose input is {length} tokens)") from None
    label_of = dict(zip(norm, positions if by_pos else [], strict=True))
    out: list[tuple[Cell, Any]] = []
    for comp in components:
        cells, _, _ = grid_cells(
            base,
            comp,
            length,
            by_position=by_pos,
            layers=layers,
            positions=norm if by_pos else None,
        )
        out += [(c, "all" if c.position is None else label_of[c.position]) for c in cells]
    return out


def cross_model_patching(
    base: ModelHandle,
    adapted: ModelHandle,
    prompts: Sequence[PatchPrompt] | None = None,
    *,
    directions: Sequence[str] = CROSS_DIRECTIONS,
    components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int] = "all",
    min_gap: float = 1e-3,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    batch_size: int = 64,
) -> AnalysisResult:
    """Sweep layers × components (× positions) in both directions between two models.

    Args:
        base: the base model.
        adapted: the adapted model (same architecture and tokenizer).
        prompts: prompts with targets (default :func:`default_prompts`).
        directions: ``adapted_to_base`` and/or ``base_to_adapted``.
        components: components to patch (``resid_pre``, ``resid_post``, ``resid_mid``,
            ``attn_out``, ``mlp_out``, ``head``).
        layers: layers (default all).
        positions: ``"all"`` (patch all positions at once) or positions of the input
            (prompt + target without its last token); negative positions count from the end,
            so prompts of different lengths line up at their ends.
        min_gap: prompts with ``|m_adapted − m_base| ≤ min_gap`` (nats of target
            log-probability) are excluded from the normalised effect and counted.
        n_boot: bootstrap resamples over prompts.
        ci: interval coverage.
        seed: bootstrap seed.
        batch_size: rows per forward pass.

    Returns:
        An :class:`AnalysisResult` (``analysis="patch"``) with one record per direction,
        component, layer, position (``"all"`` or the given int), head (None or int) and
        metric (``target_logprob``, ``kl``, ``normalized_effect``): ``value``, ``ci_low``,
        ``ci_high``, ``n``, ``n_excluded`` (and ``q25``/``median``/``q75`` of the per-prompt
        normalised effects). Unpatched baselines are in ``data["baselines"]``.

    Raises:
        ValueError: different architectures or tokenizers, an unknown direction, a position
            outside a prompt.
    """
    check_compatible(base, adapted)
    for d in directions:
        if d not in CROSS_DIRECTIONS:
            raise ValueError(f"unknown direction {d!r}; use {' or '.join(CROSS_DIRECTIONS)}")
    if min_gap < 0:
        raise ValueError(f"min_gap={min_gap} must be >= 0")
    prompts = list(default_prompts(base.tokenizer) if prompts is None else prompts)
    if not prompts:
        raise ValueError("no prompts given")
    encoded = [_encode(base.tokenizer, p) for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(encoded):
        groups.setdefault(len(ids) - 1, []).append(i)
    handles = {"base": base, "adapted": adapted}
    roles = {"adapted_to_base": ("base", "adapted"), "base_to_adapted": ("adapted", "base")}
    n = len(prompts)
    unpatched = {m: np.zeros(n) for m in ("base", "adapted")}
    kl_unpatched = {d: np.zeros(n) for d in directions}
    vals: dict[tuple[str, str, tuple[Cell, Any]], np.ndarray] = {}
    for length, members in groups.items():
        inp, lab = continuation_labels(
            [encoded[i][0] for i in members], [encoded[i][1] for i in members]
        )
        kl_pos = torch.tensor([encoded[i][1] - 1 for i in members])
        target_lp = TargetLogProb(lab)
        specs = _cells(base, components, length, layers, positions)
        sites = sorted({c.cache_site for c, _ in specs})
        caches, logits = {}, {}
        for role, h in handles.items():
            caches[role], logits[role] = cache_activations(h, inp.to(h.device), sites)
            idx = torch.arange(len(members))
            unpatched[role][members] = target_lp(logits[role], idx).double().cpu().numpy()
        for d in directions:
            tgt, donor = roles[d]
            kl = KLDivergence.from_logits(logits[donor], kl_pos)
            idx = torch.arange(len(members))
            kl_unpatched[d][members] = kl(logits[tgt], idx).double().cpu().numpy()

            def both(lg: torch.Tensor, i: torch.Tensor, kl=kl, lp=target_lp) -> torch.Tensor:
                return torch.stack([lp(lg, i), kl(lg, i)], dim=1)

            out = run_cells(
                handles[tgt],
                inp.to(handles[tgt].device),
                caches[donor],
                [c for c, _ in specs],
                both,
                batch_size=batch_size,
            )
            for (cell, label), v in zip(specs, out, strict=True):
                key = (Cell(cell.component, cell.layer, None, cell.head), label)
                for j, name in enumerate(("target_logprob", "kl")):
                    arr = vals.setdefault((d, name, key), np.full(n, np.nan))
                    arr[members] = v[:, j].numpy()
    gap = unpatched["adapted"] - unpatched["base"]
    keep = np.abs(gap) > min_gap
    res = AnalysisResult(
        analysis="patch",
        name="cross_model_patching",
        metric="see record 'metric'",
        config={
            "directions": list(directions),
            "components": list(components),
            "layers": None if layers is None else list(layers),
            "positions": positions if positions == "all" else list(positions),
            "min_gap": min_gap,
            "n_boot": n_boot,
            "ci": ci,
            "seed": seed,
            "batch_size": batch_size,
        },
        models={"base": base.fingerprint, "adapted": adapted.fingerprint},
        data={
            "n_prompts": n,
            "kinds": sorted({p.kind for p in prompts}),
            "n_excluded": int((~keep).sum()),
            "baselines": {
                "target_logprob": {r: float(unpatched[r].mean()) for r in unpatched},
                "kl_unpatched": {d: float(kl_unpatched[d].mean()) for d in directions},
            },
        },
    )
    if n < 20:
        msg = f"bootstrap intervals over only {n} prompts are too narrow; use 20 or more prompts"
        log.warning(msg)
        res.notes.append(msg)
    if not keep.all():
        res.notes.append(
            f"{int((~keep).sum())} of {n} prompts have |m_adapted - m_base| <= {min_gap} and are "
            "excluded from the normalised effect"
        )
    for (d, name, key), arr in vals.items():
        cell, label = key
        coords = {
            "direction": d,
            "component": cell.component,
            "layer": cell.layer,
            "position": label,
            "head": cell.head,
        }
        lo, hi = bootstrap_ratio_ci(arr, n_boot=n_boot, ci=ci, seed=seed)
        res.add(float(arr.mean()), ci=(lo, hi), n=n, metric=name, n_excluded=0, **coords)
        if name != "target_logprob":
            continue
        num = arr[keep] - unpatched["base"][keep]
        den = gap[keep]
        k = int(keep.sum())
        value = float(num.mean() / den.mean()) if k else float("nan")
        lo, hi = (
            bootstrap_ratio_ci(num, den, n_boot=n_boot, ci=ci, seed=seed) if k else (np.nan, np.nan)
        )
        per = num / den if k else np.array([np.nan])
        q25, q50, q75 = (float(x) for x in np.quantile(per, [0.25, 0.5, 0.75]))
        res.add(
            value,
            ci=(lo, hi),
            n=k,
            metric="normalized_effect",
            n_excluded=n - k,
            q25=q25,
            median=q50,
            q75=q75,
            **coords,
        )
    return res
