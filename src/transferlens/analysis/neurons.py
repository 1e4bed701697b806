"""Language-specific neurons: LAPE (Tang et al. 2024, "Language-Specific Neurons").

A *neuron* is one unit of an MLP's hidden layer after the nonlinearity: for gated MLPs
(Llama, Gemma 3) the activation's output ``act(gate(x))``, as in the reference implementation
(not ``act(gate(x)) * up(x)``, whose sign also depends on ``up(x)``); for GPT-2 the input of
``mlp.c_proj``; for BERT the input of ``output.dense``. Per neuron and language k,

    p_k = P(act > 0 | token of language k)

over all tokens of that language's texts (no padding, no special tokens such as BOS).
Normalising over languages, p̃_k = p_k / Σ_j p_j, gives the entropy
``H = −Σ_k p̃_k log p̃_k`` (``log K`` for a neuron equally active in all K languages,
0 for one active in a single language). Following the reference implementation:

1. ``τ_filter`` = the ``filter_quantile`` (0.95) quantile of all p_k (over layers, neurons
   and languages); neurons with no p_k above it are set aside;
2. of the rest, the ``top_rate`` (1 %) fraction of *all* neurons with the lowest entropy is
   selected;
3. a selected neuron belongs to every language k with p_k above the
   ``activation_bar_quantile`` (0.95) quantile of all p_k.

Quantiles are the reference's ``kthvalue(round(N·q))``: the ``round(N·q)``-th smallest value.

:func:`lape` runs the selection on activation counts; :func:`compare_lape` compares a base
and an adapted model (Jaccard overlap of each language's neuron sets, counts per layer, the
neurons that gained or lost a language), with percentile-bootstrap intervals over groups of
texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..models.handle import ModelHandle
from ..results import AnalysisResult
from .neuron_counts import NEURON_INPUTS, NeuronCounts, neuron_activation_counts

__all__ = [
    "NEURON_INPUTS",
    "LapeSelection",
    "NeuronCounts",
    "compare_lape",
    "lape",
    "lape_entropy",
    "neuron_activation_counts",
]


# --------------------------------------------------------------------------- selection
def lape_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each neuron's activation probabilities normalised over languages.

    Args:
        probs: ``(K, ...)`` activation probabilities, languages first.

    Returns:
        ``probs.shape[1:]``; ``0 log 0 = 0``; a neuron never active anywhere gets 0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    total = probs.sum(axis=0)
    normed = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
    logs = np.log(normed, out=np.zeros_like(normed), where=normed > 0)
    return -(normed * logs).sum(axis=0)


def _kth(values: np.ndarray, q: float) -> float:
    """The ``round(n·q)``-th smallest value (1-based, clipped to 1..n)."""
    flat = values.ravel()
    k = min(max(int(round(flat.size * q)), 1), flat.size)
    return float(np.partition(flat, k - 1)[k - 1])


@dataclass
class LapeSelection:
    """Language-specific neurons of one model.

    Attributes:
        languages: language codes (order of the first axis).
        probs: ``(K, L, N)`` activation probabilities.
        entropy: ``(L, N)`` entropy of the normalised probabilities (nats).
        selected: ``(L, N)`` the low-entropy neurons kept in step 2.
        membership: ``(K, L, N)`` neuron is specific to language k (step 3).
        filter_threshold: τ_filter of step 1.
        activation_bar: the threshold of step 3.
        config: the options used.
    """

    languages: tuple[str, ...]
    probs: np.ndarray
    entropy: np.ndarray
    selected: np.ndarray
    membership: np.ndarray
    filter_threshold: float
    activation_bar: float
    config: dict = field(default_factory=dict)

    def neurons(self, language: str) -> set[tuple[int, int]]:
        """``{(layer, neuron), ...}`` specific to ``language``."""
        k = _lang_index(self.languages, language)
        return {(int(a), int(b)) for a, b in zip(*np.nonzero(self.membership[k]), strict=True)}

    def counts_per_layer(self) -> np.ndarray:
        """``(K, L)`` number of neurons specific to each language per layer."""
        return self.membership.sum(axis=2)


def _lang_index(languages: Sequence[str], language: str) -> int:
    if language not in languages:
        raise ValueError(f"language {language!r} was not measured; languages: {list(languages)}")
    return list(languages).index(language)


def lape(
    counts: NeuronCounts | np.ndarray,
    *,
    languages: Sequence[str] | None = None,
    filter_quantile: float = 0.95,
    top_rate: float = 0.01,
    activation_bar_quantile: float = 0.95,
) -> LapeSelection:
    """Select language-specific neurons (LAPE) from activation counts or probabilities.

    Args:
        counts: :class:`NeuronCounts`, or ``(K, L, N)`` activation probabilities.
        languages: names of the K languages when ``counts`` is an array.
        filter_quantile: step 1 quantile.
        top_rate: fraction of all neurons selected in step 2.
        activation_bar_quantile: step 3 quantile.

    Returns:
        :class:`LapeSelection`.
    """
    for name, q in (
        ("filter_quantile", filter_quantile),
        ("top_rate", top_rate),
        ("activation_bar_quantile", activation_bar_quantile),
    ):
        if not 0 <= q <= 1:
            raise ValueError(f"{name}={q} must be between 0 and 1")
    if isinstance(counts, NeuronCounts):
        probs = counts.probabilities()
        langs = counts.languages
    else:
        probs = np.asarray(counts, dtype=np.float64)
        if probs.ndim != 3:
            raise ValueError(
                f"probabilities must be (languages, layers, neurons), got {probs.shape}"
            )
        langs = tuple(languages) if languages is not None else tuple(map(str, range(len(probs))))
        if len(langs) != probs.shape[0]:
            raise ValueError(f"{len(langs)} language names for {probs.shape[0]} languages")
    return _select(probs, langs, filter_quantile, top_rate, activation_bar_quantile)


def _select(
    probs: np.ndarray, langs: tuple[str, ...], filter_q: float, top_rate: float, bar_q: float
) -> LapeSelection:
    _, L, N = probs.shape
    ent = lape_entropy(probs)
    tau = _kth(probs, filter_q)
    passes = (probs > tau).any(axis=0)
    n_sel = int(round(L * N * top_rate))
    order = np.argsort(np.where(passes, ent, np.inf).ravel(), kind="stable")
    order = order[: min(n_sel, int(passes.sum()))]
    selected = np.zeros(L * N, dtype=bool)
    selected[order] = True
    selected = selected.reshape(L, N)
    bar = _kth(probs, bar_q)
    membership = selected[None] & (probs > bar)
    return LapeSelection(
        languages=langs,
        probs=probs,
        entropy=ent,
        selected=selected,
        membership=membership,
        filter_threshold=tau,
        activation_bar=bar,
        config={
            "filter_quantile": filter_q,
            "top_rate": top_rate,
            "activation_bar_quantile": bar_q,
        },
    )


# --------------------------------------------------------------------------- comparison
def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else float("nan")


def _stats(base: LapeSelection, adapted: LapeSelection | None, focus: int | None) -> dict:
    out = {"base_counts": base.counts_per_layer()}
    if adapted is not None:
        out["adapted_counts"] = adapted.counts_per_layer()
        out["jaccard"] = np.array(
            [
                _jaccard(base.membership[k], adapted.membership[k])
                for k in range(len(base.languages))
            ]
        )
        if focus is not None:
            out["gained"] = (adapted.membership[focus] & ~base.membership[focus]).sum(axis=1)
            out["lost"] = (base.membership[focus] & ~adapted.membership[focus]).sum(axis=1)
    return out


def compare_lape(
    base: ModelHandle | NeuronCounts,
    adapted: ModelHandle | NeuronCounts | None = None,
    texts_by_language: Mapping[str, Sequence[str]] | None = None,
    *,
    focus: str | None = "sv",
    filter_quantile: float = 0.95,
    top_rate: float = 0.01,
    activation_bar_quantile: float = 0.95,
    n_groups: int = 20,
    batch_size: int = 8,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, AnalysisResult]:
    """Language-specific neurons of a base (and an adapted) model, side by side.

    Args:
        base: a model, or its :class:`NeuronCounts`.
        adapted: the adapted model (or its counts), measured on the same texts.
        texts_by_language: language -> texts, needed when models are given.
        focus: the language whose gained/lost neurons are listed (None: none).
        filter_quantile, top_rate, activation_bar_quantile: see :func:`lape`.
        n_groups: text groups per language (bootstrap units).
        batch_size: texts per forward pass.
        n_boot: bootstrap resamples (groups of texts, the same resample for both models).
        ci: interval coverage.
        seed: bootstrap seed.

    Returns:
        ``neurons_per_layer`` (per model, language, layer), and with ``adapted``:
        ``jaccard`` (per language, overlap of the two models' neuron sets; NaN when both are
        empty), ``change_counts`` (``focus`` neurons gained/lost per layer) and
        ``changes`` (one record per gained/lost neuron: ``value`` = change of its ``focus``
        activation probability, adapted − base; no interval).
    """

    def counts_of(x, role):
        if isinstance(x, NeuronCounts):
            return x
        if texts_by_language is None:
            raise ValueError(f"{role} is a model: pass texts_by_language to measure it")
        return neuron_activation_counts(
            x, texts_by_language, batch_size=batch_size, n_groups=n_groups
        )

    cb = counts_of(base, "base")
    ca = counts_of(adapted, "adapted") if adapted is not None else None
    if ca is not None:
        if ca.languages != cb.languages or ca.n_texts != cb.n_texts or ca.n_groups != cb.n_groups:
            raise ValueError(
                "base and adapted counts come from different texts; measure both "
                "on the same texts_by_language"
            )
        if ca.positive.shape[2:] != cb.positive.shape[2:]:
            raise ValueError(
                f"the models' MLPs differ ({cb.positive.shape[2:]} vs {ca.positive.shape[2:]} "
                "layers x neurons): neuron sets cannot be compared"
            )
    langs = cb.languages
    fk = _lang_index(langs, focus) if (focus is not None and ca is not None) else None
    opts = (filter_quantile, top_rate, activation_bar_quantile)
    kw = dict(zip(("filter_quantile", "top_rate", "activation_bar_quantile"), opts, strict=True))
    sb = lape(cb, **kw)
    sa = lape(ca, **kw) if ca is not None else None
    point = _stats(sb, sa, fk)
    ival = _bootstrap(cb, ca, fk, opts, point, n_boot=n_boot, ci=ci, seed=seed)

    models = {"base": base.fingerprint} if isinstance(base, ModelHandle) else {}
    if isinstance(adapted, ModelHandle):
        models["adapted"] = adapted.fingerprint
    config = dict(
        sb.config,
        n_groups=int(cb.tokens.shape[1]),
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        focus=focus,
        activation="MLP hidden (input of the down projection) > 0",
    )
    data = {
        "languages": list(langs),
        "n_texts": dict(zip(langs, cb.n_texts, strict=True)),
        "n_tokens": {lang: int(cb.tokens[k].sum()) for k, lang in enumerate(langs)},
        "thresholds": {
            r: [x.filter_threshold, x.activation_bar]
            for r, x in (("base", sb), ("adapted", sa))
            if x is not None
        },
    }

    def new(name: str, metric: str) -> AnalysisResult:
        return AnalysisResult(
            analysis="neurons",
            name=f"lape_{name}",
            metric=metric,
            config=dict(config),
            models=dict(models),
            data=dict(data),
        )

    def add(res: AnalysisResult, key: str, idx: tuple, n: int, **coords) -> None:
        low, high = ival[key]
        res.add(point[key][idx], ci=(low[idx], high[idx]), n=n, **coords)

    out = {"neurons_per_layer": new("neurons_per_layer", "n_language_specific_neurons")}
    for role in ("base", "adapted"):
        if f"{role}_counts" in point:
            for k, lang in enumerate(langs):
                for layer in range(point[f"{role}_counts"].shape[1]):
                    add(
                        out["neurons_per_layer"],
                        f"{role}_counts",
                        (k, layer),
                        cb.n_texts[k],
                        model=role,
                        language=lang,
                        layer=layer,
                    )
    if sa is None:
        return out
    out["jaccard"] = res = new("jaccard", "jaccard")
    empty = [lang for k, lang in enumerate(langs) if np.isnan(point["jaccard"][k])]
    if empty:
        res.notes.append(f"no neurons specific to {empty} in either model: Jaccard undefined")
    for k, lang in enumerate(langs):
        add(res, "jaccard", (k,), cb.n_texts[k], language=lang)
    if fk is None:
        return out
    out["change_counts"] = res = new("change_counts", "n_neurons")
    for change in ("gained", "lost"):
        for layer in range(len(point[change])):
            add(res, change, (layer,), cb.n_texts[fk], language=focus, change=change, layer=layer)
    out["changes"] = res = new("changes", "activation_probability_change")
    for change, mask in (
        ("gained", sa.membership[fk] & ~sb.membership[fk]),
        ("lost", sb.membership[fk] & ~sa.membership[fk]),
    ):
        for layer, neuron in zip(*np.nonzero(mask), strict=True):
            res.add(
                sa.probs[fk, layer, neuron] - sb.probs[fk, layer, neuron],
                language=focus,
                change=change,
                layer=int(layer),
                neuron=int(neuron),
                entropy_base=float(sb.entropy[layer, neuron]),
                entropy_adapted=float(sa.entropy[layer, neuron]),
            )
    return out


def _bootstrap(
    cb: NeuronCounts,
    ca: NeuronCounts | None,
    fk: int | None,
    opts: tuple[float, float, float],
    point: dict[str, np.ndarray],
    *,
    n_boot: int,
    ci: float,
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Percentile intervals of every statistic in ``point``, resampling text groups within
    each language (the same resample for both models). NaN replicates (an empty union in
    a Jaccard) are left out; a cell with none finite gets NaN."""
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be between 0 and 1 (e.g. 0.95)")
    rng = np.random.default_rng(seed)
    boots: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for _ in range(n_boot):
        w = cb.resample_weights(rng)
        rb = _select(cb.probabilities(w), cb.languages, *opts)
        ra = _select(ca.probabilities(w), cb.languages, *opts) if ca is not None else None
        for k, v in _stats(rb, ra, fk).items():
            boots[k].append(v)
    alpha = (1 - ci) / 2
    out = {}
    for key, reps in boots.items():
        shape = np.shape(point[key])
        arr = np.asarray(reps, dtype=np.float64).reshape(len(reps), -1)
        lo, hi = np.full(arr.shape[1], np.nan), np.full(arr.shape[1], np.nan)
        for c in range(arr.shape[1]):
            col = arr[:, c][np.isfinite(arr[:, c])]
            if col.size:
                lo[c], hi[c] = np.quantile(col, [alpha, 1 - alpha])
        out[key] = (lo.reshape(shape), hi.reshape(shape))
    return out
