"""Latent language of translation (Wendler et al. 2024, "Do Llamas Work in English?").

A few-shot word-translation prompt asks for the ``target``-language word of a ``source``-language
word::

    Deutsch: "Tabelle" - Svenska: "Tabell"
    Deutsch: "Zelle" - Svenska: "Cell"
    Deutsch: "Datei" - Svenska: "

At each depth ℓ the logit lens (:mod:`transferlens.analysis.lens`) gives a next-token
distribution at the last position, and the probability mass of a language is

    P_lang(ℓ) = Σ_{t ∈ T_lang} p_ℓ(t),

where ``T_lang`` holds the token ids of the answer word in that language: every vocabulary
token whose string is a character prefix of the word, with or without the leading space
marker, plus (for a word starting with a non-ASCII character) the token of its first UTF-8
byte where the vocabulary has one, as in the reference implementation. Items whose token sets
overlap between the languages compared are dropped (their mass cannot be attributed), and
counted.

Word pairs come from the bundled corpus's short aligned entries (:func:`mine_word_pairs`) or
from a user's list (:func:`load_word_list`); they and the token sets live in
:mod:`transferlens.analysis.word_pairs` (re-exported here).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..models.handle import ModelHandle
from ..results import AnalysisResult
from .lens import _percentile_ci, encode_right_padded, lens_logits, lens_sites, require_unembedding
from .word_pairs import (
    MinedPairs,
    answer_token_ids,
    filter_overlapping,
    load_word_list,
    mine_word_pairs,
)

__all__ = [
    "LANGUAGE_NAMES",
    "MinedPairs",
    "answer_token_ids",
    "build_prompts",
    "filter_overlapping",
    "language_mass",
    "latent_language",
    "load_word_list",
    "mine_word_pairs",
]

log = logging.getLogger(__name__)

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "sv": "Svenska",
    "da": "Dansk",
    "de": "Deutsch",
    "fi": "Suomi",
}


# --------------------------------------------------------------------------- prompts
def _line(lang: str, word: str, names: Mapping[str, str]) -> str:
    return f'{names.get(lang, lang)}: "{word}"'


def build_prompts(
    items: Sequence[Mapping[str, str]],
    source: str,
    target: str,
    *,
    n_shots: int = 4,
    seed: int = 0,
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Few-shot translation prompts, one per item, ending just after the opening quote.

    Each prompt holds ``n_shots`` solved examples drawn (with ``seed``) from the *other* items,
    then ``<Source>: "<word>" - <Target>: "``.
    """
    if n_shots < 0:
        raise ValueError(f"n_shots={n_shots} must be >= 0")
    if n_shots >= len(items):
        raise ValueError(
            f"{len(items)} items cannot give {n_shots} examples besides the query; "
            "lower n_shots or add items"
        )
    names = dict(LANGUAGE_NAMES, **(names or {}))
    rng = random.Random(seed)
    prompts = []
    for i, it in enumerate(items):
        others = [j for j in range(len(items)) if j != i]
        shots = rng.sample(others, n_shots)
        lines = [
            f"{_line(source, items[j][source], names)} - {_line(target, items[j][target], names)}"
            for j in shots
        ]
        lines.append(f'{_line(source, it[source], names)} - {names.get(target, target)}: "')
        prompts.append("\n".join(lines))
    return prompts


# --------------------------------------------------------------------------- mass
def language_mass(probs: torch.Tensor, token_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Probability mass on each item's token set, per depth.

    Args:
        probs: ``(depth, n_items, vocab)`` lens probabilities.
        token_sets: per item, the token ids of one language's answer.

    Returns:
        ``(depth, n_items)``: ``Σ_{t ∈ set_i} probs[:, i, t]``.
    """
    if probs.shape[1] != len(token_sets):
        raise ValueError(
            f"{probs.shape[1]} items of probabilities but {len(token_sets)} token sets"
        )
    out = torch.zeros(probs.shape[:2], dtype=probs.dtype, device=probs.device)
    for i, ids in enumerate(token_sets):
        if len(ids):
            out[:, i] = probs[:, i, torch.as_tensor(list(ids), device=probs.device)].sum(-1)
    return out


def _masses(
    handle: ModelHandle,
    prompts: Sequence[str],
    sets: Sequence[Mapping[str, Sequence[int]]],
    languages: Sequence[str],
    batch_size: int,
    check_final: bool,
) -> np.ndarray:
    """``(n_items, n_languages, depth)`` language masses for one model."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        enc = encode_right_padded(handle.tokenizer, batch)
        lens = lens_logits(handle, enc["input_ids"], enc["attention_mask"], check_final=check_final)
        probs = torch.softmax(lens.double(), dim=-1)
        sub = sets[start : start + len(batch)]
        m = torch.stack([language_mass(probs, [s[lang] for s in sub]) for lang in languages])
        out.append(m.permute(2, 0, 1).cpu().numpy())  # (b, K, D)
    return np.concatenate(out)


def latent_language(
    base: ModelHandle,
    items: Sequence[Mapping[str, str]] | MinedPairs,
    *,
    source: str,
    target: str,
    adapted: ModelHandle | None = None,
    latent: str = "en",
    n_shots: int = 4,
    batch_size: int = 8,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    check_final: bool = True,
) -> AnalysisResult:
    """Per-layer probability mass on the answer in the target, latent and source languages.

    Args:
        base: the base model (a decoder).
        items: word pairs (language -> word), e.g. ``mine_word_pairs(...).items``.
        source: language of the word to translate.
        target: language of the answer.
        adapted: the adapted model, measured on the same items and prompts.
        latent: the hypothesised latent language (English in Wendler et al.).
        n_shots: solved examples per prompt.
        batch_size: prompts per forward pass.
        n_boot: bootstrap resamples over items.
        ci: interval coverage.
        seed: seed for the few-shot examples and the bootstrap.
        check_final: see :func:`transferlens.analysis.lens.lens_logits`.

    Returns:
        :class:`AnalysisResult` (metric ``language_probability``) with records per ``model``
        (``base``, ``adapted``, ``difference`` = adapted − base, paired over items),
        ``language``, ``layer`` (-1 = ``embed``) and ``site``: mean mass over items, a
        percentile-bootstrap interval over items, and ``n`` items. ``data["filter"]`` counts
        the items dropped by the overlap filter.
    """
    if isinstance(items, MinedPairs):
        items = items.items
    if source == target:
        raise ValueError(f"source and target are both {source!r}; give two different languages")
    langs = list(dict.fromkeys([target, latent, source]))
    models: dict[str, ModelHandle] = {"base": base}
    if adapted is not None:
        models["adapted"] = adapted
    for h in models.values():
        require_unembedding(h)
        if h.tokenizer is None:
            raise ValueError(f"{h.name} has no tokenizer; load it with tokenizer=...")
    kept, counts, sets = filter_overlapping(items, [h.tokenizer for h in models.values()], langs)
    log.info(
        "latent language: %d of %d items survive the token-overlap filter",
        counts["kept"],
        counts["items"],
    )
    if len(kept) <= n_shots:
        raise ValueError(
            f"only {len(kept)} of {len(items)} items survive the token-overlap filter "
            f"({counts}); {n_shots + 1} are needed: add items or lower n_shots"
        )
    chosen = [dict(items[i]) for i in kept]
    prompts = build_prompts(chosen, source, target, n_shots=n_shots, seed=seed)
    masses = {
        role: _masses(h, prompts, sets[k], langs, batch_size, check_final)
        for k, (role, h) in enumerate(models.items())
    }
    notes = [
        f"{counts['overlap']} items dropped: answer token sets overlap between languages",
        f"{counts['no_tokens']} items dropped: a word has no prefix token in the vocabulary",
        f"{counts['missing_word']} items dropped: a language is missing",
    ]
    if "adapted" in masses and masses["adapted"].shape == masses["base"].shape:
        masses["difference"] = masses["adapted"] - masses["base"]
    elif "adapted" in masses:
        notes.append("models differ in depth: no paired difference reported")
    res = AnalysisResult(
        analysis="lens",
        name=f"latent_language_{source}_{target}",
        metric="language_probability",
        config={
            "source": source,
            "target": target,
            "latent": latent,
            "languages": langs,
            "n_shots": n_shots,
            "n_boot": n_boot,
            "ci": ci,
            "seed": seed,
            "position": "last",
            "token_set": "prefixes, with and without space marker",
        },
        models={r: h.fingerprint for r, h in models.items()},
        data={"n_items": len(chosen), "filter": counts, "example_prompt": prompts[0]},
        notes=notes,
    )
    for role, m in masses.items():
        h = models.get(role, base)
        low, high = _percentile_ci(m, n_boot=n_boot, ci=ci, seed=seed)
        mean = m.mean(axis=0)
        for k, lang in enumerate(langs):
            for j, site in enumerate(lens_sites(h)):
                res.add(
                    mean[k, j],
                    ci=(low[k, j], high[k, j]),
                    n=m.shape[0],
                    model=role,
                    language=lang,
                    layer=j - 1,
                    site=site,
                )
    return res
