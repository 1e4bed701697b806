"""Logit lens: read every layer's residual stream through the model's own unembedding.

For a decoder model with blocks ``0..L-1`` the lens distribution at depth ``ℓ`` is

    lens_ℓ(x) = post(unembed(final_norm(h_ℓ)))

where ``h_ℓ`` is the ``embed`` site (``ℓ = -1``) or ``resid_post.ℓ`` (before the final norm)
and ``post`` is whatever the model does to its logits after the unembedding (Gemma 2/3:
``final_logit_softcapping``, ``c · tanh(z / c)``). At the last layer ``lens_{L-1}`` is the
model's own logits; :func:`lens_logits` checks that on every batch.

Per layer and prompt (at the last token of the prompt) :func:`logit_lens` measures the entropy
of the lens distribution, its KL divergence from the final distribution
``KL(p_final ‖ p_ℓ)``, and, given target tokens, the target's probability and rank (1 = top).
Numbers are means over prompts with percentile-bootstrap intervals over prompts; with two
models the paired difference (adapted − base) is reported as ``model="difference"``.

Reference: nostalgebraist (2020), "interpreting GPT: the logit lens".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..models.handle import ModelHandle
from ..models.hooks import site_hooks
from ..results import AnalysisResult

__all__ = [
    "LENS_METRICS",
    "encode_right_padded",
    "lens_logits",
    "lens_sites",
    "logit_lens",
    "require_unembedding",
    "unembed",
]

log = logging.getLogger(__name__)

LENS_METRICS = ("entropy", "kl_to_final", "target_prob", "target_rank")


# --------------------------------------------------------------------------- statistics
def _percentile_ci(
    values: np.ndarray, *, n_boot: int, ci: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean over axis 0 (units), for every trailing cell.

    Uses the resampling draws of :func:`transferlens.analysis.stats.unit_draws`, so each cell's
    interval equals ``bootstrap_ci(np.mean, values[:, cell], n_boot=n_boot, level=ci,
    seed=seed)``, and for a difference of two models ``paired_bootstrap`` with the mean.

    Args:
        values: ``(n, ...)`` per-unit values.
        n_boot: bootstrap resamples.
        ci: coverage, e.g. 0.95.
        seed: seed of the resampling (same seed -> same interval).

    Returns:
        ``(low, high)``, each of shape ``values.shape[1:]``.
    """
    from .stats import unit_draws

    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 units (prompts/items); got {n}")
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be between 0 and 1 (e.g. 0.95)")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be at least 1")
    flat = values.reshape(n, -1)
    means = np.empty((n_boot, flat.shape[1]))
    for b, idx in enumerate(unit_draws(n, n_boot, seed)):
        means[b] = flat[idx].mean(axis=0)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


def _summaries(
    values: np.ndarray, *, n_boot: int, ci: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, ci_low, ci_high) over axis 0."""
    low, high = _percentile_ci(values, n_boot=n_boot, ci=ci, seed=seed)
    return values.mean(axis=0), low, high


# --------------------------------------------------------------------------- model parts
def require_unembedding(handle: ModelHandle) -> None:
    """Raise a one-line ``ValueError`` when the model has no unembedding to read a lens with."""
    sm = handle.sitemap
    if sm.lm_head is None:
        raise ValueError(
            f"{handle.name}: lens analyses need a model with an unembedding (a causal LM head); "
            f"{sm.family.name} models have none here: use a decoder (gpt2, llama, gemma3 "
            "families) loaded as *ForCausalLM"
        )


def lens_sites(handle: ModelHandle) -> list[str]:
    """The sites the lens reads, in depth order: ``embed``, ``resid_post.0`` .. ``resid_post.L-1``."""
    return ["embed"] + [f"resid_post.{i}" for i in range(handle.n_layers)]


def _softcap(handle: ModelHandle) -> float | None:
    cfg = handle.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    cap = getattr(text_cfg, "final_logit_softcapping", None)
    return float(cap) if cap else None


def unembed(handle: ModelHandle, h: torch.Tensor) -> torch.Tensor:
    """``post(lm_head(final_norm(h)))`` for residual vectors ``h`` (``(..., d_model)``).

    ``post`` is the model's final logit softcapping when its config sets
    ``final_logit_softcapping`` (Gemma 2/3), else the identity. Runs without autograd.

    Returns:
        Logits ``(..., vocab)`` as float32.
    """
    require_unembedding(handle)
    sm = handle.sitemap
    with torch.no_grad():
        x = h.to(device=handle.device, dtype=handle.dtype)
        if sm.final_norm is not None:
            x = sm.final_norm(x)
        z = sm.lm_head(x)
        cap = _softcap(handle)
        if cap is not None:
            z = torch.tanh(z / cap) * cap
    return z.float()


def encode_right_padded(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise texts one by one and right-pad them into a batch.

    Right padding keeps every real token's position ids and causal context unchanged.

    Returns:
        ``input_ids``, ``attention_mask`` and ``special_tokens_mask`` (1 for BOS/EOS/CLS/SEP
        and padding), each ``(batch, max_len)`` int64.
    """
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; load it with tokenizer=... to analyse text")
    if isinstance(texts, str):
        raise ValueError("pass a list of texts, not a single string")
    enc = [
        tokenizer(
            t,
            add_special_tokens=add_special_tokens,
            return_special_tokens_mask=True,
            truncation=max_length is not None,
            max_length=max_length,
        )
        for t in texts
    ]
    lengths = [len(e["input_ids"]) for e in enc]
    if any(n == 0 for n in lengths):
        bad = lengths.index(0)
        raise ValueError(f"text {bad} ({texts[bad]!r}) tokenises to nothing; remove empty texts")
    width = max(lengths)
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(texts), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    special = torch.ones((len(texts), width), dtype=torch.long)
    for i, e in enumerate(enc):
        n = lengths[i]
        ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        special[i, :n] = torch.tensor(e["special_tokens_mask"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": special}


def _check_context(handle: ModelHandle, length: int) -> None:
    cfg = handle.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    limit = getattr(text_cfg, "n_positions", None) or getattr(
        text_cfg, "max_position_embeddings", None
    )
    if limit and length > int(limit):
        raise ValueError(
            f"{handle.name}: a prompt of {length} tokens exceeds the model's context of "
            f"{limit} tokens; use shorter prompts (fewer few-shot examples)"
        )


def lens_logits(
    handle: ModelHandle,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    positions: torch.Tensor | None = None,
    check_final: bool = True,
) -> torch.Tensor:
    """Logit-lens logits at one position per row, for every depth.

    Args:
        handle: a decoder model.
        input_ids: ``(batch, pos)``; right-padded when ``attention_mask`` has zeros.
        attention_mask: ``(batch, pos)``; default all ones.
        positions: ``(batch,)`` position read in each row; default the last real token.
        check_final: compare the last layer's lens with the model's own logits and raise if
            they differ (the model then does something after the unembedding that the lens
            does not reproduce).

    Returns:
        ``(n_layers + 1, batch, vocab)`` float32; row 0 is ``embed``, row ``l + 1`` is
        ``resid_post.l``.

    Raises:
        ValueError: no unembedding, or the last-layer check failed.
    """
    require_unembedding(handle)
    dev = handle.device
    input_ids = input_ids.to(dev)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(dev)
    b = input_ids.shape[0]
    _check_context(handle, input_ids.shape[1])
    if positions is None:
        ar = torch.arange(input_ids.shape[1], device=dev)
        positions = (attention_mask * ar).argmax(dim=1)
    positions = positions.to(dev)
    rows = torch.arange(b, device=dev)
    grabbed: dict[str, torch.Tensor] = {}

    def reader(name: str):
        def fn(x: torch.Tensor) -> None:
            grabbed[name] = x[rows, positions].detach()

        return fn

    sites = lens_sites(handle)
    with torch.no_grad(), site_hooks(handle.sitemap, {s: reader(s) for s in sites}):
        out = handle.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    missing = [s for s in sites if s not in grabbed]
    if missing:
        raise RuntimeError(f"{handle.name}: sites {missing} were not reached by the forward pass")
    lens = unembed(handle, torch.stack([grabbed[s] for s in sites]))
    if check_final:
        final = out.logits[rows, positions].float()
        tol = 1e-4 if handle.dtype in (torch.float32, torch.float64) else 2e-2
        scale = float(final.abs().max().clamp_min(1.0))
        err = float((lens[-1] - final).abs().max())
        if err > tol * scale:
            raise ValueError(
                f"{handle.name}: the last-layer lens differs from the model's logits by {err:.3g}: "
                "the model transforms its logits in a way the lens does not reproduce; pass "
                "check_final=False to use the lens anyway"
            )
    return lens


# --------------------------------------------------------------------------- metrics
def _targets_for(handle: ModelHandle, targets: Sequence[str | int]) -> list[int]:
    ids = []
    vocab = int(handle.sitemap.lm_head.weight.shape[0])  # type: ignore[union-attr]
    for t in targets:
        if isinstance(t, str):
            enc = handle.tokenizer(t, add_special_tokens=False)["input_ids"]
            if not enc:
                raise ValueError(f"target {t!r} tokenises to nothing; give a non-empty string")
            ids.append(int(enc[0]))
        else:
            if not 0 <= int(t) < vocab:
                raise ValueError(f"target token id {t} is outside the vocabulary (0..{vocab - 1})")
            ids.append(int(t))
    return ids


def _per_prompt_metrics(
    handle: ModelHandle,
    texts: Sequence[str],
    target_ids: list[int] | None,
    batch_size: int,
    check_final: bool,
) -> dict[str, np.ndarray]:
    """metric -> ``(n_prompts, n_layers + 1)``."""
    chunks: dict[str, list[np.ndarray]] = {m: [] for m in LENS_METRICS}
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        enc = encode_right_padded(handle.tokenizer, batch)
        lens = lens_logits(
            handle, enc["input_ids"], enc["attention_mask"], check_final=check_final
        )  # (D, b, V)
        logp = torch.log_softmax(lens.double(), dim=-1)
        p = logp.exp()
        ent = -(p * logp).sum(-1)  # (D, b)
        kl = (p[-1] * (logp[-1] - logp)).sum(-1)
        chunks["entropy"].append(ent.T.cpu().numpy())
        chunks["kl_to_final"].append(kl.clamp_min(0).T.cpu().numpy())
        if target_ids is not None:
            t = torch.tensor(target_ids[start : start + len(batch)], device=lens.device)
            idx = t.view(1, -1, 1).expand(lens.shape[0], -1, 1)
            tgt_logit = lens.gather(-1, idx)
            chunks["target_prob"].append(p.gather(-1, idx).squeeze(-1).T.cpu().numpy())
            rank = 1 + (lens > tgt_logit).sum(-1)
            chunks["target_rank"].append(rank.T.cpu().numpy().astype(np.float64))
    return {m: np.concatenate(v) for m, v in chunks.items() if v}


def logit_lens(
    base: ModelHandle,
    texts: Sequence[str],
    *,
    adapted: ModelHandle | None = None,
    targets: Sequence[str | int] | None = None,
    batch_size: int = 8,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    check_final: bool = True,
) -> dict[str, AnalysisResult]:
    """Logit lens at the last token of each prompt, per layer, for one or two models.

    Args:
        base: the base model (a decoder).
        texts: prompts; the lens is read at each prompt's last token.
        adapted: the adapted model, analysed on the same prompts.
        targets: per prompt, a target token: a string (its first token under each model's
            tokenizer, so include a leading space where the tokenizer expects one) or a token id.
        batch_size: prompts per forward pass.
        n_boot: bootstrap resamples over prompts.
        ci: interval coverage.
        seed: bootstrap seed.
        check_final: see :func:`lens_logits`.

    Returns:
        metric -> :class:`AnalysisResult` for ``entropy`` (nats), ``kl_to_final`` (nats),
        and with targets ``target_prob`` and ``target_rank``. Records carry ``model``
        (``base``, ``adapted``, ``difference`` = adapted − base, paired over prompts),
        ``layer`` (-1 for ``embed``) and ``site``, the mean over prompts, a percentile-bootstrap
        interval and ``n`` (prompts).
    """
    if not texts:
        raise ValueError("no prompts given; pass at least one text")
    if targets is not None and len(targets) != len(texts):
        raise ValueError(
            f"got {len(targets)} targets for {len(texts)} prompts; give one per prompt"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    models: dict[str, ModelHandle] = {"base": base}
    if adapted is not None:
        models["adapted"] = adapted
    for h in models.values():
        require_unembedding(h)
    per: dict[str, dict[str, np.ndarray]] = {}
    for role, h in models.items():
        tids = _targets_for(h, targets) if targets is not None else None
        per[role] = _per_prompt_metrics(h, texts, tids, batch_size, check_final)
    notes = []
    if adapted is not None and adapted.n_layers != base.n_layers:
        notes.append("models differ in depth: no paired difference reported")
    out: dict[str, AnalysisResult] = {}
    for metric in LENS_METRICS:
        if metric not in per["base"]:
            continue
        res = AnalysisResult(
            analysis="lens",
            name=f"logit_lens_{metric}",
            metric=metric,
            config={
                "n_boot": n_boot,
                "ci": ci,
                "seed": seed,
                "position": "last",
                "kl": "KL(p_final || p_layer)",
                "rank": "1 = most probable",
            },
            models={r: h.fingerprint for r, h in models.items()},
            data={"n_prompts": len(texts), "targets": targets is not None},
            notes=list(notes),
        )
        series = {role: vals[metric] for role, vals in per.items()}
        if "adapted" in series and series["adapted"].shape == series["base"].shape:
            series["difference"] = series["adapted"] - series["base"]
        for role, vals in series.items():
            h = models.get(role, base)
            mean, low, high = _summaries(vals, n_boot=n_boot, ci=ci, seed=seed)
            for j, site in enumerate(lens_sites(h)):
                res.add(
                    mean[j],
                    ci=(low[j], high[j]),
                    n=vals.shape[0],
                    model=role,
                    layer=j - 1,
                    site=site,
                )
        out[metric] = res
    return out
