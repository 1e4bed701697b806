"""Benchmark: activation capture overhead, shard format throughput, resident memory.

1. Overhead. A random-init Llama of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads,
   3 kv heads, intermediate 1536, vocab 49152; built from a LlamaConfig, no download), the
   same batches (8 x 128 tokens), logits computed, inference mode, median of interleaved
   runs. Side by side, as ratios to the bare forward pass:
   - bare forward (the model's default attention, sdpa);
   - ``capture`` of ``resid_post`` at every layer into a store on disk (float16 and float32);
   - ``capture`` of the same into memory (float16);
   - nnsight 0.8: ``NNsight(model).trace(...)`` with ``.save()`` of every layer's output;
   - TransformerLens 4.x: ``TransformerBridge.run_with_cache`` (no weight processing) on a
     copy of the model (the bridge forces eager attention, so the bare forward of an eager
     copy is timed too).
   Our capture's time includes everything a user waits for: tokenisation (twice: plan and
   run), the manifest, the row table and the shard files.
2. Write and read throughput of ``.npy`` shards (our format) vs safetensors shards, on the
   same float16 arrays (one shard = all sites of a few batches). Page cache, no fsync.
3. Peak anonymous resident memory (RssAnon, sampled every 2 ms) while capturing >= 1M
   tokens x all layers of a small model into a store, in a fresh subprocess.

Usage::

    python benchmarks/bench_capture.py                 # the sizes above
    python benchmarks/bench_capture.py --quick         # a small version (a minute or two)
    python benchmarks/bench_capture.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORDS = (
    "Choose Format Cells to open the dialog. Välj Celler för att öppna dialogrutan. "
    "Vælg Formater Celler for at åbne dialogen. Inserts a new table into the document "
    "at the cursor position."
).split()


def texts_of(n: int, words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(n)]


def build_model(layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from transferlens.models import load_model
    from transferlens.models.tiny import tiny_tokenizer

    cfg = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    tok = tiny_tokenizer()
    tok.model_max_length = 2048
    return load_model(model, tokenizer=tok, name="llama-135m-shape", device=None)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


# --------------------------------------------------------------------------- 1. overhead
def overhead(args) -> dict:
    from nnsight import NNsight
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from transferlens.capture import capture

    h = build_model(args.layers, args.hidden, args.heads, args.kv, args.inter, args.vocab)
    n_params = sum(p.numel() for p in h.model.parameters())
    B, T, nb = args.batch, args.tokens, args.batches
    texts = texts_of(B * nb, words=T)  # more words than tokens: every text is cut to T
    enc = h.tokenizer(texts, truncation=True, max_length=T, return_tensors="pt")
    assert enc["input_ids"].shape == (B * nb, T)
    batches = [
        {
            "input_ids": enc["input_ids"][i : i + B],
            "attention_mask": enc["attention_mask"][i : i + B],
            "position_ids": torch.arange(T).expand(B, T),
        }
        for i in range(0, B * nb, B)
    ]
    sites = [f"resid_post.{i}" for i in range(args.layers)]
    _ = h.fingerprint  # computed once per handle, as in any session that reuses the handle

    def bare(model):
        def run():
            with torch.inference_mode():
                for b in batches:
                    model(**b, use_cache=False)

        return run

    tmp = Path(tempfile.mkdtemp(prefix="bench_capture_"))

    counter = iter(range(10**6))

    def ours_store(dtype):
        def run():  # a fresh folder each time; old ones are deleted outside the timing
            out = tmp / f"store_{dtype}_{next(counter)}"
            capture(h, texts, sites, select="all", out=out, batch_size=B, max_length=T, dtype=dtype)

        return run

    def ours_memory():
        capture(h, texts, sites, select="all", batch_size=B, max_length=T, dtype="float16")

    nn_model = NNsight(h.model)

    def nnsight_run():
        for b in batches:
            saved: list = []  # filled inside the trace (nnsight runs the block itself)
            with torch.inference_mode():
                with nn_model.trace(
                    b["input_ids"],
                    attention_mask=b["attention_mask"],
                    position_ids=b["position_ids"],
                    use_cache=False,
                ):
                    for i in range(args.layers):
                        saved.append(nn_model.model.layers[i].output.save())
            assert len(saved) == args.layers and saved[-1].shape[:2] == (B, T)

    eager = copy.deepcopy(h.model)
    eager.set_attn_implementation("eager")
    tl_model = copy.deepcopy(eager)
    tokdir = tmp / "tok"
    h.tokenizer.save_pretrained(tokdir)
    bridge = TransformerBridge.boot_transformers(
        str(tokdir),
        hf_model=tl_model,
        tokenizer=AutoTokenizer.from_pretrained(tokdir),
        device="cpu",
    )
    names = [f"blocks.{i}.hook_resid_post" for i in range(args.layers)]

    def tl_run():
        for b in batches:
            with torch.inference_mode():
                _, cache = bridge.run_with_cache(b["input_ids"], names_filter=names)
            del cache

    methods = {
        "bare forward (sdpa)": bare(h.model),
        "ours: store on disk, float16": ours_store("float16"),
        "ours: store on disk, float32": ours_store("float32"),
        "ours: in memory, float16": ours_memory,
        "nnsight trace + .save()": nnsight_run,
        "bare forward (eager attention)": bare(eager),
        "TransformerLens run_with_cache (eager)": tl_run,
    }
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    keys = list(methods)
    for r in range(args.runs):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate, so drift hits all
        for k in order:
            c = time.process_time()  # CPU seconds of all threads of this process
            times[k].append(timed(methods[k]))
            cpu[k].append(time.process_time() - c)
            for old in tmp.glob("store_*"):
                shutil.rmtree(old)
    shutil.rmtree(tmp, ignore_errors=True)
    bare = "bare forward (sdpa)"

    def summary(xs: dict[str, list[float]]) -> dict:
        med = {k: statistics.median(v) for k, v in xs.items()}
        best = {k: min(v) for k, v in xs.items()}
        return {
            "median_s": med,
            "min_s": best,
            "ratio_of_mins": {k: best[k] / best[bare] for k in best},
            "ratio_of_medians": {k: med[k] / med[bare] for k in med},
            "median_paired_ratio": {
                k: statistics.median(t / b for t, b in zip(v, xs[bare], strict=True))
                for k, v in xs.items()
            },
            "runs_s": xs,
        }

    return {
        "n_params": n_params,
        "batches": nb,
        "batch": [B, T],
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "wall": summary(times),
        "cpu": summary(cpu),
    }


# --------------------------------------------------------------------------- 2. shard formats
def shard_formats(args) -> dict:
    from safetensors.numpy import load_file, save_file

    from transferlens.capture.writer import _open_npy, _write

    rng = np.random.default_rng(0)
    rows = args.batch * (args.tokens - 1) * args.shard_batches
    arrays = {
        f"resid_post.{i}": rng.standard_normal((rows, args.hidden), dtype=np.float32).astype(
            np.float16
        )
        for i in range(args.layers)
    }
    nbytes = sum(a.nbytes for a in arrays.values())
    tmp = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    res: dict[str, list[float]] = {
        "npy write": [],
        "safetensors write": [],
        "npy read": [],
        "safetensors read": [],
    }
    for r in range(args.format_repeats):
        d = tmp / f"npy{r}"
        d.mkdir()

        def npy_write(d=d):
            for site, a in arrays.items():
                with _open_npy(d / f"{site}.npy", a.dtype, a.shape) as f:
                    _write(f, a)

        def st_write(r=r):
            save_file(arrays, str(tmp / f"shard{r}.safetensors"))

        def npy_read(d=d):
            return [np.array(np.load(d / f"{site}.npy", mmap_mode="r")) for site in arrays]

        def st_read(r=r):
            return load_file(str(tmp / f"shard{r}.safetensors"))

        for name, fn in (
            ("npy write", npy_write),
            ("safetensors write", st_write),
            ("npy read", npy_read),
            ("safetensors read", st_read),
        ):
            res[name].append(nbytes / timed(fn) / 2**20)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "shard_mib": nbytes / 2**20,
        "files_npy": len(arrays),
        "files_safetensors": 1,
        "mib_per_s": {k: statistics.median(v) for k, v in res.items()},
    }


# --------------------------------------------------------------------------- 3. memory
RSS_JOB = r"""
import json, sys, tempfile, threading, time
sys.path.insert(0, {bench_dir!r})
from bench_capture import rss_anon, texts_of
from transferlens.capture import capture
from transferlens.models import tiny_model

tokens, layers = int(sys.argv[1]), int(sys.argv[2])
h = tiny_model("llama", n_layers=layers, d_model=64, n_ctx=256)
per = len(h.tokenizer(texts_of(1, 150)[0], truncation=True, max_length=128)["input_ids"]) - 1
texts = texts_of(tokens // per + 1, 150)
capture(h, texts[:32], "resid_post", select="all", batch_size=32, max_length=128)  # warm-up
base = rss_anon()
peak, stop = [base], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.002)
t = threading.Thread(target=sample, daemon=True)
t.start()
out = tempfile.mkdtemp(prefix="bench_rss_")
t0 = time.perf_counter()
st = capture(h, texts, "resid_post", select="all", out=out + "/s", batch_size=32,
             max_length=128, dtype="float16")
secs = time.perf_counter() - t0
stop.set(); t.join()
import shutil; shutil.rmtree(out)
print(json.dumps({"tokens": st.n_rows, "layers": layers, "store_mib": st.manifest["bytes"] / 2**20,
                  "rss_anon_base_mib": base / 2**20, "rss_anon_peak_mib": peak[0] / 2**20,
                  "growth_mib": (peak[0] - base) / 2**20, "seconds": secs}))
"""


def memory(args) -> dict:
    job = RSS_JOB.replace("{bench_dir!r}", repr(str(Path(__file__).resolve().parent)))
    out = {}
    for tokens in (args.rss_tokens // 10, args.rss_tokens):
        r = subprocess.run(
            [sys.executable, "-c", job, str(tokens), str(args.rss_layers)],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            check=False,
        )
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        out[str(tokens)] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small version of everything")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--batches", type=int, default=3, help="batches per timed run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv", type=int, default=3)
    p.add_argument("--inter", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--shard-batches", type=int, default=8, help="batches per shard (formats)")
    p.add_argument("--format-repeats", type=int, default=5)
    p.add_argument("--rss-tokens", type=int, default=1_000_000)
    p.add_argument("--rss-layers", type=int, default=4)
    p.add_argument(
        "--skip", default="", help="comma list of parts to skip: overhead,formats,memory"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's default, the core count)",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    logging.getLogger("transferlens.capture").setLevel(logging.ERROR)  # truncation is planned
    if args.quick:
        args.runs, args.batches, args.layers, args.hidden = 3, 2, 4, 256
        args.heads, args.kv, args.inter, args.vocab = 4, 2, 512, 4096
        args.shard_batches, args.format_repeats, args.rss_tokens = 2, 3, 50_000
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark script, not library code
    skip = set(args.skip.split(","))
    res: dict = {"args": vars(args), "torch": torch.__version__, "cpus": os.cpu_count()}
    if "overhead" not in skip:
        res["overhead"] = overhead(args)
        o = res["overhead"]
        print(
            f"\nOverhead ({o['n_params'] / 1e6:.1f}M params, {o['batches']} batches of "
            f"{o['batch'][0]}x{o['batch'][1]} tokens per run, median of {o['runs']} "
            f"interleaved runs, {o['threads']} torch threads)"
        )
        print(
            "| method | wall s (median) | ratio of medians | median paired ratio |"
            " ratio of minima | CPU s (median) | CPU ratio of medians |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        w, c = o["wall"], o["cpu"]
        for k in w["median_s"]:
            print(
                f"| {k} | {w['median_s'][k]:.2f} | {w['ratio_of_medians'][k]:.3f} | "
                f"{w['median_paired_ratio'][k]:.3f} | {w['ratio_of_mins'][k]:.3f} | "
                f"{c['median_s'][k]:.2f} | {c['ratio_of_medians'][k]:.3f} |"
            )
    if "formats" not in skip:
        res["formats"] = f = shard_formats(args)
        print(f"\nShard formats ({f['shard_mib']:.0f} MiB of float16 per shard)")
        for k, v in f["mib_per_s"].items():
            print(f"| {k} | {v:.0f} MiB/s |")
    if "memory" not in skip:
        res["memory"] = m = memory(args)
        print("\nPeak RssAnon while capturing into a store")
        for v in m.values():
            print(
                f"| {v['tokens']} tokens x {v['layers']} layers | store {v['store_mib']:.0f} "
                f"MiB | RssAnon base {v['rss_anon_base_mib']:.0f} MiB, peak "
                f"{v['rss_anon_peak_mib']:.0f} MiB (+{v['growth_mib']:.1f}) | "
                f"{v['seconds']:.0f} s |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
