"""Benchmark: what the training presets take and what they achieve.

Runs, one after the other in a fresh folder, the methods of a preset and reports each run's
wall-clock and process CPU seconds next to the held-out numbers the issue asks for:

- ``pretrain``: held-out bits per byte of the LM and of a unigram model of the same data
  (same tokenizer) for English, German and the unseen Swedish;
- ``adapt`` (full fine-tuning on Swedish): Swedish bits per byte before → after, and English /
  German before → after (forgetting);
- ``sft`` (topic classification of the base model): held-out accuracy by label
  log-likelihood, the majority-class baseline, and the margin;
- ``dpo`` on the adapted model, and the same run with chosen/rejected swapped (the negative
  control): held-out preference accuracy and reward margin before → after.

Usage::

    python benchmarks/bench_presets.py                    # the default preset
    python benchmarks/bench_presets.py --preset tiny --json tiny.json
    python benchmarks/bench_presets.py --methods pretrain,adapt --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

METHODS = ("pretrain", "adapt", "sft", "dpo", "dpo_swap")


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - wall, time.process_time() - cpu


def run(preset: str, methods: list[str], out: Path, seed: int) -> dict:
    from transferlens.training import adapt, dpo, preset_config, pretrain, sft

    rows: dict[str, dict] = {}
    base, sv = out / "base.pt", out / "sv.pt"

    def record(name, res, wall, cpu):
        rows[name] = {"wall_s": wall, "cpu_s": cpu, "steps": res.steps, "tokens": res.tokens}
        rows[name]["metrics"] = dict(res.metrics)
        m = res.metrics
        print(f"\n{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {res.steps} steps")
        for k in sorted(m):
            print(f"  {k} = {m[k]:.4f}")

    if "pretrain" in methods:
        cfg = preset_config("pretrain", preset, seed=seed)
        record("pretrain", *timed(lambda: pretrain(base, cfg, preset=preset)))
    if "adapt" in methods:
        cfg = preset_config("adapt", preset, seed=seed)
        record("adapt", *timed(lambda: adapt(base, sv, cfg, preset=preset)))
    if "sft" in methods:
        cfg = preset_config("sft", preset, seed=seed)
        record("sft", *timed(lambda: sft(base, out / "sft.pt", cfg, preset=preset)))
    if "dpo" in methods:
        cfg = preset_config("dpo", preset, seed=seed)
        record("dpo", *timed(lambda: dpo(sv, out / "dpo.pt", cfg, preset=preset)))
    if "dpo_swap" in methods:
        cfg = preset_config("dpo", preset, seed=seed, swap=True)
        record("dpo_swap", *timed(lambda: dpo(sv, out / "swap.pt", cfg, preset=preset)))
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default=None, help="keep the checkpoints here (default: temp)")
    ap.add_argument("--json", default=None, help="write the raw numbers here")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = {"preset": args.preset, "threads": torch.get_num_threads(), "seed": args.seed}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        rows = run(args.preset, methods, Path(args.out), args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(args.preset, methods, Path(tmp), args.seed)
    res = {**info, "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
