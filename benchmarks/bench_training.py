"""Benchmark: training throughput (tokens/s) of our loop against the Hugging Face ``Trainer``.

Same model (the ``default`` pretraining architecture: Llama-style, 4 layers, hidden 96,
vocabulary 4096, built from the same seed), same data (packed 128-token blocks of the
corpus's English ``train`` split, tokenised by the same BPE), same batch size (16), same
optimiser settings (AdamW, cosine schedule with warm-up, weight decay, clipping at 1.0),
float32, no evaluation, no checkpoints. Each side trains ``--steps`` optimiser steps from a
fresh copy of the model; the timed span is the whole training call (optimiser and scheduler
set-up included). Runs alternate (ours, Trainer, ours, ...) after one untimed warm-up run of
each; the table reports the median tokens/s of each side and the ratio.

Usage::

    python benchmarks/bench_training.py                  # 5 timed runs per side, 30 steps
    python benchmarks/bench_training.py --repeats 3 --steps 20 --threads 1
    python benchmarks/bench_training.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile
import time

import torch


def data_and_model(n_texts: int, seq_len: int):
    from transferlens.training import preset_config, train_bpe
    from transferlens.training.common import pack_texts
    from transferlens.training.datasets import corpus_texts
    from transferlens.training.pretrain import build_model

    cfg = preset_config("pretrain", "default", seq_len=seq_len)
    texts = corpus_texts(["en"], "train", max_texts=n_texts)["en"]
    tok = train_bpe(texts, cfg.vocab_size, max_length=seq_len)
    blocks = pack_texts(tok, texts, seq_len)
    return cfg, blocks, build_model(cfg, tok)


def run_ours(model, blocks, cfg, steps: int, batch: int) -> float:
    from transferlens.training import run_loop
    from transferlens.training.common import lm_collate, lm_loss

    cfg = cfg.replace(
        steps=steps,
        batch_size=batch,
        eval_every=0,
        save_every=0,
        log_every=10,
        warmup_steps=5,
        cpu=True,
        mixed_precision="no",
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.train()
        t0 = time.perf_counter()
        res = run_loop(model, list(blocks), lm_collate, lm_loss, cfg, tmp)
        dt = time.perf_counter() - t0
    return res.tokens / dt


def run_trainer(model, blocks, cfg, steps: int, batch: int) -> float:
    from transformers import Trainer, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    data = [{"input_ids": b, "labels": b} for b in blocks]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=cfg.lr,
            warmup_steps=5,
            lr_scheduler_type="cosine",
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            max_grad_norm=cfg.max_grad_norm,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=cfg.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=data, data_collator=default_data_collator
        )
        trainer.remove_callback(PrinterCallback)  # logs are computed, not printed (as ours)
        t0 = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t0
    return steps * batch * blocks.shape[1] / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", default=None, help="write the raw numbers here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, blocks, model = data_and_model(args.texts, args.seq_len)
    fresh = copy.deepcopy(model)
    runners = {"ours": run_ours, "hf_trainer": run_trainer}
    for fn in runners.values():  # warm-up, untimed
        fn(copy.deepcopy(fresh), blocks, cfg, 3, args.batch)
    results: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            results[name].append(fn(copy.deepcopy(fresh), blocks, cfg, args.steps, args.batch))
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["ours"] / med["hf_trainer"]
    print(
        f"threads={torch.get_num_threads()} steps={args.steps} batch={args.batch} "
        f"seq_len={args.seq_len} repeats={args.repeats} load={os.getloadavg()[0]:.1f}"
    )
    for k, v in results.items():
        print(f"{k:12s} median {med[k]:8.0f} tok/s   runs: {', '.join(f'{x:.0f}' for x in v)}")
    print(f"ours / Trainer = {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "runs": results,
                    "median": med,
                    "ratio": ratio,
                    "threads": torch.get_num_threads(),
                    "steps": args.steps,
                    "batch": args.batch,
                    "seq_len": args.seq_len,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
