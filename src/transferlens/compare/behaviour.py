"""Behaviour stage: held-out loss (bits per byte), fertility, task accuracy, samples."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..analysis.behaviour import fertility, label_loglik_accuracy, token_nll
from ..analysis.stats import bootstrap_ci, paired_bootstrap
from ..results import AnalysisResult
from .config import CompareConfig
from .data import Sample

__all__ = ["behaviour_stage"]

LN2 = math.log(2.0)


def _bpb(nll: np.ndarray, n_bytes: np.ndarray) -> float:
    return float(nll.sum() / LN2 / n_bytes.sum())


def _ratio(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.sum() / max(1, b.sum()))


def _models(handles: dict[str, Any]) -> dict[str, str]:
    return {role: h.fingerprint for role, h in handles.items()}


def behaviour_stage(
    handles: dict[str, Any],
    sample: Sample,
    cfg: CompareConfig,
) -> tuple[list[AnalysisResult], dict[str, Any]]:
    """Bits per byte and fertility per language for both models, with paragraph bootstrap
    intervals; the paired adapted − base difference; the topic task if asked; samples."""
    common = {
        "config": {
            "display_names": cfg.display_names,
            "ci_level": cfg.ci_level,
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
        },
        "models": _models(handles),
    }
    desc = sample.describe() + "."
    bpb = AnalysisResult(
        "behaviour",
        "behaviour_bpb",
        "bits_per_byte",
        data={"description": desc, "ci_unit": "paragraphs"},
        **common,
    )
    diff = AnalysisResult(
        "behaviour",
        "behaviour_bpb_diff",
        "bits_per_byte_difference",
        data={
            "description": desc + " Adapted minus base, paired bootstrap.",
            "ci_unit": "paragraphs",
        },
        **common,
    )
    fert = AnalysisResult(
        "behaviour",
        "behaviour_fertility",
        "tokens_per_word",
        data={"description": desc, "ci_unit": "paragraphs"},
        **common,
    )
    boot = {"n_boot": cfg.n_boot, "level": cfg.ci_level, "seed": cfg.seed}
    for lang, texts in sample.texts.items():
        per_model = {}
        for role, h in handles.items():
            t = token_nll(h, texts, batch_size=cfg.batch_size)
            per_model[role] = t
            ci = bootstrap_ci(_bpb, t.nll, t.n_bytes, **boot)
            bpb.add(ci.value, ci=(ci.ci_low, ci.ci_high), n=len(texts), model=role, language=lang)
            f = fertility(h.tokenizer, texts)
            fci = bootstrap_ci(_ratio, f.n_tokens, f.n_words, **boot)
            fert.add(
                fci.value, ci=(fci.ci_low, fci.ci_high), n=len(texts), model=role, language=lang
            )
        if {"base", "adapted"} <= set(per_model):
            a, b = per_model["adapted"], per_model["base"]
            d = paired_bootstrap(_bpb, (a.nll, a.n_bytes), (b.nll, b.n_bytes), **boot)
            diff.add(d.value, ci=(d.ci_low, d.ci_high), n=len(texts), language=lang)
    results = [bpb, diff, fert]
    if "topic" in cfg.tasks:
        task = _topic_task(handles, sample, cfg, common, boot)
        if task is not None:
            results.append(task)
        else:
            bpb.notes.append("task accuracy skipped: fewer than two named topics in the sample")
    meta = {"samples": _samples(handles, sample)}
    return results, meta


def _topic_task(handles, sample: Sample, cfg: CompareConfig, common, boot) -> AnalysisResult | None:
    """Classify a paragraph into its help module by the log-likelihood of each label, in the
    format of the built-in SFT topic task (``training.datasets.topic_task``: the prompt
    ``"Text: …\nModule:"``, the module's name as the answer), so that a model tuned on it is
    measured on the task it learned. Paragraphs of the catch-all topic (no name) are left
    out."""
    from ..analysis.behaviour import majority_baseline
    from ..data import load_corpus
    from ..training.datasets import TOPIC_LABELS, topic_prompt

    lang = "sv" if "sv" in sample.texts else next(iter(sample.texts))
    named = [i for i, t in enumerate(sample.topics) if t in TOPIC_LABELS]
    if len({sample.topics[i] for i in named}) < 2:
        return None
    # up to 100 paragraphs, a seeded draw (the sample is in corpus order: sorted by module)
    rng = np.random.default_rng(cfg.seed)
    keep = sorted(rng.permutation(named)[:100].tolist())
    n = len(keep)
    names = sorted(set(TOPIC_LABELS.values()))  # every module, as the SFT task asks
    prompts = [topic_prompt(sample.texts[lang][i]) for i in keep]
    gold = [TOPIC_LABELS[sample.topics[i]] for i in keep]
    topics = load_corpus(languages="en", split="train")["topic"]  # one column is enough
    train = [TOPIC_LABELS[t] for t in topics if t in TOPIC_LABELS]
    majority, hits = majority_baseline(train, gold)
    res = AnalysisResult(
        "behaviour",
        "task_accuracy",
        "accuracy",
        data={
            "description": f"Topic (help module) of {n} {lang} paragraphs (a seeded draw of "
            f"the sample's named topics) chosen among all {len(names)} module names by their "
            "summed log-likelihood after the prompt 'Text: <paragraph>\\nModule:' (the "
            "built-in SFT topic task's format; a sum favours names of fewer tokens). "
            f"Majority class: the most frequent training-split module ({majority}).",
            "ci_unit": "paragraphs",
            "labels": names,
        },
        **common,
    )
    for role, h in handles.items():
        scores = label_loglik_accuracy(h, prompts, names, gold, batch_size=cfg.batch_size)
        ci = bootstrap_ci(lambda c: float(np.mean(c)), scores.correct.astype(float), **boot)
        res.add(ci.value, ci=(ci.ci_low, ci.ci_high), n=n, task="topic", model=role)
    ci = bootstrap_ci(lambda c: float(np.mean(c)), hits.astype(float), **boot)
    res.add(ci.value, ci=(ci.ci_low, ci.ci_high), n=n, task="topic", model="majority class")
    return res


def _samples(
    handles: dict[str, Any], sample: Sample, n_words: int = 6, new_tokens: int = 16
) -> list[dict[str, str]]:
    """Greedy continuations of the first words of one paragraph per language."""
    out = []
    for lang, texts in sample.texts.items():
        prompt = " ".join(texts[0].split()[:n_words])
        for role, h in handles.items():
            tok = h.tokenizer
            enc = tok(prompt, return_tensors="pt").to(h.device)
            with torch.inference_mode():
                gen = h.model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id,
                )
            text = tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            text = "".join(c if c.isprintable() else "\ufffd" for c in text).strip()
            out.append({"model": role, "language": lang, "prompt": prompt, "text": text})
    return out
