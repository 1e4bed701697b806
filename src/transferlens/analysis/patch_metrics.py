"""Metrics of a patched run: functions of its logits, one value per batch row.

The patching engine runs many patched copies of a prompt in one batch, so a metric is called
as ``metric(logits, prompt_idx)`` with ``logits`` of shape ``(rows, pos, vocab)`` and
``prompt_idx`` of shape ``(rows,)`` saying which prompt each row is a copy of; it returns one
value per row, ``(rows,)``. Per-prompt data (answer tokens, reference distributions) are
indexed with ``prompt_idx``.

- :class:`LogitDiff`: ``logit[answer] − logit[wrong]`` at a position (default the last).
- :class:`AnswerLogProb`: ``log p(answer)`` at a position.
- :class:`TargetLogProb`: ``Σ_t log p(label_t)`` over the positions of a target continuation
  (teacher forced), ``labels`` aligned with the input (``-100`` = not a target position).
- :class:`KLDivergence`: ``KL(p_ref ‖ p_patched)`` at a position, against a fixed reference
  distribution (the clean run, or the other model in cross-model patching).
- :func:`normalized_effect`: ``(m_patched − m_corrupt) / (m_clean − m_corrupt)``.
- :func:`bootstrap_ratio_ci`: percentile-bootstrap interval over prompts of a mean or of a
  ratio of means.
- :class:`PatchGrid`: a grid of metric values with the clean and corrupt runs it is
  normalised by, and its tidy :class:`~transferlens.results.AnalysisResult` form.

Probability saturates, so logit difference and log-probability are preferred (Heimersheim &
Nanda 2024); all metrics here are computed in the logits' dtype.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..results import AnalysisResult

__all__ = [
    "IGNORE",
    "AnswerLogProb",
    "KLDivergence",
    "LogitDiff",
    "Metric",
    "PatchGrid",
    "TargetLogProb",
    "bootstrap_ratio_ci",
    "build_metric",
    "continuation_labels",
    "normalized_effect",
    "output_logits",
    "resolve_token_ids",
    "vocab_size",
]

log = logging.getLogger(__name__)

IGNORE = -100
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``metric(logits (rows, pos, vocab), prompt_idx (rows,)) -> (rows,)``."""


def resolve_token_ids(
    tokenizer: Any,
    answers: str | int | Sequence[str | int],
    n: int,
    vocab_size: int,
    *,
    what: str = "answer",
) -> torch.Tensor:
    """Token ids of one answer per prompt.

    Args:
        tokenizer: the model's tokenizer (used for string answers).
        answers: one answer for all prompts, or one per prompt; a token id or a string that
            must encode to exactly one token (without special tokens).
        n: number of prompts.
        vocab_size: the model's vocabulary size (ids must be in ``[0, vocab_size)``).
        what: name used in error messages.

    Returns:
        ``(n,)`` int64 tensor.

    Raises:
        ValueError: an id outside the vocabulary, a string that is not exactly one token, or
            a list whose length is not ``n``.
    """
    items = [answers] * n if isinstance(answers, (str, int)) else list(answers)
    if len(items) != n:
        raise ValueError(
            f"got {len(items)} {what}s for {n} prompts; give one per prompt or one for all"
        )
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (str, int)):
            raise ValueError(f"{what} {a!r} must be a token id (int) or a single-token string")
        if isinstance(a, str):
            if tokenizer is None:
                raise ValueError(
                    f"{what} {a!r} is text but the model has no tokenizer; pass a token id"
                )
            ids = tokenizer(a, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"{what} {a!r} is {len(ids)} tokens ({ids}), not one; give a single-token "
                    "string (mind the leading space) or a token id"
                )
            a = int(ids[0])
        if not 0 <= a < vocab_size:
            raise ValueError(f"{what} token id {a} is not in the vocabulary (0..{vocab_size - 1})")
        out.append(a)
    return torch.tensor(out, dtype=torch.long)


def _at(
    logits: torch.Tensor, prompt_idx: torch.Tensor, position: int | torch.Tensor
) -> torch.Tensor:
    """``(rows, vocab)`` logits at a fixed position or a per-prompt position."""
    if isinstance(position, int):
        return logits[:, position]
    pos = position.to(logits.device)[prompt_idx.to(logits.device)]
    return logits[torch.arange(logits.shape[0], device=logits.device), pos]


def _pick(x: torch.Tensor, ids: torch.Tensor, prompt_idx: torch.Tensor) -> torch.Tensor:
    idx = ids.to(x.device)[prompt_idx.to(x.device)]
    return x.gather(1, idx[:, None])[:, 0]


@dataclass
class LogitDiff:
    """``logit[answer] − logit[wrong]`` at ``position`` (one answer/wrong id per prompt).

    Attributes:
        answer: ``(n_prompts,)`` token ids of the correct answer.
        wrong: ``(n_prompts,)`` token ids of the wrong answer.
        position: position (default last) or ``(n_prompts,)`` positions.
    """

    answer: torch.Tensor
    wrong: torch.Tensor
    position: int | torch.Tensor = -1
    name: str = "logit_diff"

    def __call__(self, logits: torch.Tensor, prompt_idx: torch.Tensor) -> torch.Tensor:
        lg = _at(logits, prompt_idx, self.position)
        return _pick(lg, self.answer, prompt_idx) - _pick(lg, self.wrong, prompt_idx)


@dataclass
class AnswerLogProb:
    """``log p(answer)`` at ``position`` (default last)."""

    answer: torch.Tensor
    position: int | torch.Tensor = -1
    name: str = "logprob"

    def __call__(self, logits: torch.Tensor, prompt_idx: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(_at(logits, prompt_idx, self.position), dim=-1)
        return _pick(lp, self.answer, prompt_idx)


@dataclass
class TargetLogProb:
    """Teacher-forced log-probability of a target continuation, summed over its tokens.

    Attributes:
        labels: ``(n_prompts, pos)``: at position ``t`` the token the logits at ``t`` should
            predict, or ``IGNORE`` (-100) where ``t`` is not a target position.
    """

    labels: torch.Tensor
    name: str = "target_logprob"

    def __call__(self, logits: torch.Tensor, prompt_idx: torch.Tensor) -> torch.Tensor:
        labels = self.labels.to(logits.device)[prompt_idx.to(logits.device)]
        if labels.shape[1] != logits.shape[1]:
            raise ValueError(f"labels have {labels.shape[1]} positions, logits {logits.shape[1]}")
        keep = labels != IGNORE
        lp = torch.log_softmax(logits, dim=-1)
        picked = lp.gather(2, labels.clamp(min=0)[..., None])[..., 0]
        return (picked * keep).sum(dim=1)


@dataclass
class KLDivergence:
    """``KL(p_ref ‖ p_patched)`` at ``position``: how far the patched next-token distribution
    is from a reference (0 when they agree).

    Attributes:
        ref_logprobs: ``(n_prompts, vocab)`` reference log-probabilities.
        position: position (default last) or ``(n_prompts,)`` positions.
    """

    ref_logprobs: torch.Tensor
    position: int | torch.Tensor = -1
    name: str = "kl"

    @classmethod
    def from_logits(
        cls, ref_logits: torch.Tensor, position: int | torch.Tensor = -1
    ) -> KLDivergence:
        """Reference from a run's logits ``(n_prompts, pos, vocab)`` at ``position``."""
        idx = torch.arange(ref_logits.shape[0])
        lg = _at(ref_logits, idx, position)
        return cls(torch.log_softmax(lg.detach(), dim=-1), position)

    def __call__(self, logits: torch.Tensor, prompt_idx: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(_at(logits, prompt_idx, self.position), dim=-1)
        ref = self.ref_logprobs.to(device=lp.device, dtype=lp.dtype)[prompt_idx.to(lp.device)]
        return (ref.exp() * (ref - lp)).sum(dim=-1)


def continuation_labels(
    ids: Sequence[Sequence[int]], n_prompt: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and target labels for prompt + continuation sequences of equal length.

    Args:
        ids: per sequence, the prompt tokens followed by the target tokens (all equal length).
        n_prompt: per sequence, how many of its tokens are prompt (at least 1).

    Returns:
        ``(input_ids, labels)``, both ``(n, length − 1)``: the input drops the last token;
        ``labels[i, t]`` is ``ids[i][t + 1]`` at the target positions
        ``t ≥ n_prompt[i] − 1`` and ``IGNORE`` elsewhere.
    """
    full = torch.tensor([list(s) for s in ids], dtype=torch.long)
    inp = full[:, :-1]
    labels = torch.full_like(inp, IGNORE)
    for i, k in enumerate(n_prompt):
        if not 1 <= k < full.shape[1]:
            raise ValueError(f"sequence {i}: {k} prompt tokens leave no target in {full.shape[1]}")
        labels[i, k - 1 :] = full[i, k:]
    return inp, labels


def normalized_effect(
    patched: torch.Tensor | float, corrupt: torch.Tensor | float, clean: torch.Tensor | float
) -> torch.Tensor:
    """``(m_patched − m_corrupt) / (m_clean − m_corrupt)``: 0 = the corrupt run, 1 = the clean.

    Where ``m_clean == m_corrupt`` the effect is undefined and returned as NaN.
    """
    p = torch.as_tensor(patched, dtype=torch.float64)
    c = torch.as_tensor(corrupt, dtype=torch.float64)
    den = torch.as_tensor(clean, dtype=torch.float64) - c
    safe = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.full_like(p - c, float("nan")), (p - c) / safe)


@functools.lru_cache(maxsize=8)
def _draws(n: int, n_boot: int, seed: int, unit_draws: Callable[..., Any]) -> np.ndarray:
    """The ``(n_boot, n)`` resample indices, computed once per (n, n_boot, seed)."""
    idx = np.stack(list(unit_draws(n, n_boot, seed)))
    idx.setflags(write=False)
    return idx


def bootstrap_ratio_ci(
    num: Any, den: Any | None = None, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(num) / mean(den)`` over units (prompts).

    With ``den=None`` it is the interval of ``mean(num)``. The resamples are those of
    :func:`transferlens.analysis.stats.bootstrap_ci` (:func:`~transferlens.analysis.stats.unit_draws`,
    same seed -> same draws), evaluated vectorised and without its per-call small-sample
    warning (callers warn once).

    Args:
        num: ``(n,)`` per-unit numerators (or values).
        den: ``(n,)`` per-unit denominators, or None.
        n_boot: number of resamples.
        ci: coverage in (0, 1).
        seed: seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than 2 units or when a resampled ratio is
        undefined (a resampled denominator of 0).
    """
    from .stats import percentile_interval, unit_draws

    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be between 0 and 1, e.g. 0.95")
    x = np.asarray(torch.as_tensor(num, dtype=torch.float64).cpu(), dtype=np.float64).ravel()
    n = x.shape[0]
    if n < 2:
        return float("nan"), float("nan")
    idx = _draws(n, n_boot, seed, unit_draws)
    stat = x[idx].mean(axis=1)
    if den is not None:
        d = np.asarray(torch.as_tensor(den, dtype=torch.float64).cpu(), dtype=np.float64).ravel()
        if d.shape[0] != n:
            raise ValueError(f"num has {n} units but den has {d.shape[0]}")
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = stat / d[idx].mean(axis=1)
    if not np.isfinite(stat).all():
        log.warning("bootstrap interval undefined: a resampled denominator is 0")
        return float("nan"), float("nan")
    return percentile_interval(stat, ci)


def vocab_size(handle: Any) -> int:
    """Rows of the unembedding (or ``config.vocab_size``) of a model handle."""
    sm = handle.sitemap
    if sm.lm_head is not None and hasattr(sm.lm_head, "weight"):
        return int(sm.lm_head.weight.shape[0])
    return int(handle.config.vocab_size)


def output_logits(handle: Any, out: Any) -> torch.Tensor:
    """The ``(batch, pos, vocab)`` logits of a forward pass's output (``.logits``, the first
    element of a tuple, or a tensor).

    Raises:
        ValueError: the output holds no logits over the model's vocabulary (a bare encoder
            without a language-model head), so there is no next-token distribution to measure.
    """
    lg = getattr(out, "logits", None)
    if lg is None and isinstance(out, tuple) and out:
        lg = out[0]
    elif lg is None and isinstance(out, torch.Tensor):
        lg = out
    vocab = vocab_size(handle)
    if not isinstance(lg, torch.Tensor) or lg.ndim != 3 or lg.shape[-1] != vocab:
        got = f"shape {tuple(lg.shape)}" if isinstance(lg, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{getattr(handle, 'name', 'the model')}: the model returns no logits over its {vocab} "
            f"tokens (got {got}); patching needs a model with a language-model head, not a bare "
            "encoder"
        )
    return lg


def build_metric(
    handle: Any,
    metric: str | Metric,
    n_prompts: int,
    *,
    answer: Any = None,
    wrong: Any = None,
    reference_logits: torch.Tensor | None = None,
) -> Metric:
    """A metric from its name (``logit_diff``, ``logprob``, ``kl``) or a callable as is.

    ``kl`` measures ``KL(p_ref ‖ p_patched)`` at the last position with ``reference_logits``
    (the clean run's logits) as reference.
    """
    if callable(metric):
        return metric
    vocab = vocab_size(handle)
    tok = handle.tokenizer
    if metric == "logit_diff":
        if answer is None or wrong is None:
            raise ValueError("metric 'logit_diff' needs answer= and wrong= (token strings or ids)")
        return LogitDiff(
            resolve_token_ids(tok, answer, n_prompts, vocab),
            resolve_token_ids(tok, wrong, n_prompts, vocab, what="wrong answer"),
        )
    if metric == "logprob":
        if answer is None:
            raise ValueError("metric 'logprob' needs answer= (a token string or id)")
        return AnswerLogProb(resolve_token_ids(tok, answer, n_prompts, vocab))
    if metric == "kl":
        if reference_logits is None:
            raise ValueError("metric 'kl' needs the reference run's logits")
        return KLDivergence.from_logits(reference_logits)
    raise ValueError(f"unknown metric {metric!r}; use logit_diff, logprob, kl or a callable")


@dataclass
class PatchGrid:
    """A patching grid and the runs it is normalised by.

    Attributes:
        values: grid of the metric (mean over prompts), shape given by ``axes``.
        per_prompt: ``values.shape + (n_prompts,)``.
        axes: axis names (``layer``, ``pos``, ``head``).
        coords: axis -> its values.
        component: patched component.
        metric: metric name.
        direction: ``denoising`` or ``noising``.
        clean: ``(n_prompts,)`` metric of the unpatched clean run.
        corrupt: ``(n_prompts,)`` metric of the unpatched corrupt run.
        method: ``activation`` (real patching) or ``attribution`` (gradient estimate).
        config: how it was run (plain JSON).
    """

    values: torch.Tensor
    per_prompt: torch.Tensor
    axes: tuple[str, ...]
    coords: dict[str, list[int]]
    component: str
    metric: str
    direction: str
    clean: torch.Tensor
    corrupt: torch.Tensor
    method: str = "activation"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def clean_value(self) -> float:
        return float(self.clean.mean())

    @property
    def corrupt_value(self) -> float:
        return float(self.corrupt.mean())

    def normalized(self) -> torch.Tensor:
        """``(m_patched − m_corrupt) / (m_clean − m_corrupt)`` of the prompt means
        (0 = corrupt run, 1 = clean run; NaN when the two runs' metrics are equal)."""
        return normalized_effect(self.values, self.corrupt_value, self.clean_value)

    def to_result(
        self,
        name: str | None = None,
        *,
        n_boot: int = 1000,
        ci: float = 0.95,
        seed: int = 0,
        models: Mapping[str, str] | None = None,
    ) -> AnalysisResult:
        """Tidy records: one per cell and quantity (the metric and ``normalized_effect``),
        with percentile-bootstrap intervals over prompts when there are at least two."""
        res = AnalysisResult(
            analysis="patch",
            name=name or f"{self.method}_patching_{self.component}",
            metric=self.metric,
            config=dict(self.config),
            models=dict(models or {}),
            data={
                "n_prompts": int(self.clean.numel()),
                "clean": self.clean_value,
                "corrupt": self.corrupt_value,
            },
        )
        if 2 <= self.clean.numel() < 20:
            res.notes.append(
                f"bootstrap intervals over only {self.clean.numel()} prompts are too narrow"
            )
        flat = self.per_prompt.reshape(-1, self.per_prompt.shape[-1])
        den = self.clean - self.corrupt
        cells = [dict(zip(self.axes, c, strict=True)) for c in _product(self.coords, self.axes)]
        for d, vals in zip(cells, flat, strict=True):
            coords = {
                "direction": self.direction,
                "method": self.method,
                "component": self.component,
                "layer": d.get("layer"),
                "position": d.get("pos", "all"),
                "head": d.get("head"),
            }
            n = int(vals.numel())
            lo, hi = bootstrap_ratio_ci(vals, n_boot=n_boot, ci=ci, seed=seed)
            res.add(
                float(vals.mean()),
                ci=None if n < 2 else (lo, hi),
                n=n,
                metric=self.metric,
                **coords,
            )
            lo, hi = bootstrap_ratio_ci(vals - self.corrupt, den, n_boot=n_boot, ci=ci, seed=seed)
            eff = normalized_effect(vals.mean(), self.corrupt_value, self.clean_value)
            res.add(
                float(eff),
                ci=None if n < 2 else (lo, hi),
                n=n,
                metric="normalized_effect",
                **coords,
            )
        return res


def _product(coords: Mapping[str, list[int]], axes: Sequence[str]) -> list[tuple[Any, ...]]:
    return list(itertools.product(*[coords[a] for a in axes]))
