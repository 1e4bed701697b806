"""Benchmark: cross-model linear CKA matrix, and streaming minibatch CKA memory.

1. An L × M cross-model linear CKA matrix (default 30 × 30 layers, 10k examples × 576 dims,
   fp32 input with shared structure) with ``transferlens.analysis.cka_matrix.cka_matrix``,
   against a naive per-pair reference measured in the same run: Kornblith et al.'s feature-form
   CKA computed from scratch for every pair (centre both, three p × p products). The naive
   reference is timed on a fixed subset of pairs and extrapolated to all L·M pairs (printed as
   such). Both are run in float32 and float64 products; medians over repeats, and ratios.
2. Minibatch CKA on n examples streamed in batches (default n = 100k), each size in a fresh
   subprocess, reporting peak resident memory (VmHWM) and tracemalloc's peak, to show that
   memory does not grow with n.

Usage::

    python benchmarks/bench_cka.py                       # the default sizes above
    python benchmarks/bench_cka.py --n 2000 --layers 6 --repeats 2 --mb-n 20000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from transferlens.analysis.cka_matrix import cka_matrix
from transferlens.analysis.minibatch_cka import MinibatchCKA


def make_model(n: int, p: int, layers: int, Z: torch.Tensor, seed: int) -> torch.Tensor:
    """``layers × n × p`` fp32 activations: a shared latent read out by slowly drifting maps."""
    g = torch.Generator().manual_seed(seed)
    k = Z.shape[1]
    W = torch.randn(k, p, generator=g)
    out = torch.empty(layers, n, p, dtype=torch.float32)
    for i in range(layers):
        W = W + 0.3 * torch.randn(k, p, generator=g)
        out[i] = torch.tanh(Z @ W / k**0.5) + (0.5 + i / layers) * torch.randn(n, p, generator=g)
    return out


def naive_pair(x: np.ndarray, y: np.ndarray, dtype: type) -> float:
    """Kornblith-style feature-form linear CKA, everything from scratch for one pair."""
    x = x.astype(dtype)
    y = y.astype(dtype)
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    xy = np.linalg.norm(x.T @ y) ** 2
    return float(xy / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def minibatch_child(n: int, batch: int, p: int, layers: int) -> None:
    """Stream n examples through MinibatchCKA; print time and peak memory as JSON."""
    import tracemalloc

    tracemalloc.start()
    rng = np.random.default_rng(0)
    k = 32
    Wa = [rng.standard_normal((k, p)).astype(np.float32) for _ in range(layers)]
    Wb = [rng.standard_normal((k, p)).astype(np.float32) for _ in range(layers)]
    acc = MinibatchCKA()
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        if b < 4:
            break
        z = rng.standard_normal((b, k)).astype(np.float32)
        xs = [np.tanh(z @ w) + rng.standard_normal((b, p), dtype=np.float32) for w in Wa]
        ys = [np.tanh(z @ w) + rng.standard_normal((b, p), dtype=np.float32) for w in Wb]
        acc.update(xs, ys)
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    print(
        json.dumps(
            {
                "n": acc.n_examples_,
                "batches": acc.n_batches_,
                "seconds": seconds,
                "peak_rss_mb": peak_rss_mb(),
                "tracemalloc_peak_mb": traced_peak / 2**20,
                "cka_00": float(acc.compute()[0, 0]),
            }
        )
    )


def bench_matrix(args: argparse.Namespace) -> list[dict]:
    n, p, L = args.n, args.dim, args.layers
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(n, 32, generator=g)
    A = make_model(n, p, L, Z, seed=1)
    B = make_model(n, p, L, Z, seed=2)
    An, Bn = A.numpy(), B.numpy()
    pairs_all = [(i, j) for i in range(L) for j in range(L)]
    pick = np.random.default_rng(0).choice(
        len(pairs_all), size=min(args.naive_pairs, len(pairs_all)), replace=False
    )
    pairs = [pairs_all[k] for k in sorted(pick)]
    rows = []
    dtypes = {"float32": (torch.float32, np.float32), "float64": (torch.float64, np.float64)}
    for label in args.dtypes:
        tdt, ndt = dtypes[label]
        ours, naive, ours_cpu, naive_cpu, mat = [], [], [], [], None
        for rep in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            mat = cka_matrix(A, B, dtype=tdt)
            ours.append(time.perf_counter() - t)
            ours_cpu.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            vals = [naive_pair(An[i], Bn[j], ndt) for i, j in pairs]
            naive.append((time.perf_counter() - t) / len(pairs))
            naive_cpu.append((time.process_time() - c) / len(pairs))
            print(
                f"  [{label} run {rep + 1}] cka_matrix {ours[-1]:.1f} s (cpu {ours_cpu[-1]:.1f} s);"
                f" naive {naive[-1]:.2f} s/pair (cpu {naive_cpu[-1]:.2f}); "
                f"loadavg {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        err = max(abs(mat[i, j] - v) for (i, j), v in zip(pairs, vals, strict=True))
        t_ours = statistics.median(ours)
        t_naive = statistics.median(naive) * L * L
        rows.append(
            {
                "products": label,
                "ours_s": t_ours,
                "ours_runs": ours,
                "naive_s_extrapolated": t_naive,
                "naive_per_pair_s": statistics.median(naive),
                "naive_pairs_timed": len(pairs),
                "ours_cpu_s": statistics.median(ours_cpu),
                "naive_cpu_s_extrapolated": statistics.median(naive_cpu) * L * L,
                "speedup": t_naive / t_ours,
                "max_abs_diff_vs_naive": err,
                "matrix": mat,
            }
        )
    if "float64" in args.dtypes and "float32" in args.dtypes:
        m32 = next(r["matrix"] for r in rows if r["products"] == "float32")
        m64 = next(r["matrix"] for r in rows if r["products"] == "float64")
        for r in rows:
            r["max_abs_diff_fp32_vs_fp64"] = float(np.abs(m32 - m64).max())
    return rows


def bench_minibatch(args: argparse.Namespace) -> list[dict]:
    out = []
    for n in args.mb_n:
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            str(n),
            "--mb-batch",
            str(args.mb_batch),
            "--mb-dim",
            str(args.mb_dim),
            "--mb-layers",
            str(args.mb_layers),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="examples (rows)")
    ap.add_argument("--dim", type=int, default=576, help="features per layer")
    ap.add_argument("--layers", type=int, default=30, help="layers per model (L = M)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    ap.add_argument(
        "--naive-pairs",
        type=int,
        default=12,
        help="pairs timed for the naive reference (extrapolated to L·M)",
    )
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "float64"],
        choices=["float32", "float64"],
        help="dtypes of the large products",
    )
    ap.add_argument(
        "--mb-n",
        type=int,
        nargs="+",
        default=[25_000, 100_000],
        help="examples streamed through MinibatchCKA (one subprocess each)",
    )
    ap.add_argument("--mb-batch", type=int, default=1000)
    ap.add_argument("--mb-dim", type=int, default=576)
    ap.add_argument("--mb-layers", type=int, default=2, help="layers per model (minibatch)")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-minibatch", action="store_true")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark script, not library code
    if args._child:
        minibatch_child(args._child, args.mb_batch, args.mb_dim, args.mb_layers)
        return

    print(
        f"# bench_cka  torch {torch.__version__}  numpy {np.__version__}  "
        f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()}  "
        f"loadavg(1m) at start={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    report: dict = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    if not args.skip_matrix:
        rows = bench_matrix(args)
        print(
            f"\n## {args.layers} x {args.layers} cross-model linear CKA, n={args.n}, "
            f"p={args.dim}, fp32 input, median of {args.repeats} runs"
        )
        print(
            f"naive = per-pair feature-form CKA from scratch; timed on {args.naive_pairs} "
            f"fixed pairs and extrapolated to {args.layers**2} pairs"
        )
        print(
            f"{'products':>9} | {'cka_matrix s':>12} | {'naive s (extrap.)':>17} | "
            f"{'speedup':>7} | {'cpu-time speedup':>16} | {'max |diff| vs naive':>19} | runs (s)"
        )
        for r in rows:
            print(
                f"{r['products']:>9} | {r['ours_s']:12.1f} | {r['naive_s_extrapolated']:17.1f} | "
                f"{r['speedup']:6.2f}x | "
                f"{r['naive_cpu_s_extrapolated'] / r['ours_cpu_s']:15.2f}x | "
                f"{r['max_abs_diff_vs_naive']:19.2e} | "
                + ", ".join(f"{t:.1f}" for t in r["ours_runs"])
            )
        if "max_abs_diff_fp32_vs_fp64" in rows[0]:
            print(
                f"max |CKA(fp32 products) - CKA(fp64 products)| = "
                f"{rows[0]['max_abs_diff_fp32_vs_fp64']:.2e}"
            )
        report["matrix"] = [{k: v for k, v in r.items() if k != "matrix"} for r in rows]
    if not args.skip_minibatch:
        mb = bench_minibatch(args)
        full_mb = 2 * args.mb_layers * max(args.mb_n) * args.mb_dim * 4 / 2**20
        print(
            f"\n## MinibatchCKA, {args.mb_layers} x {args.mb_layers} layers, p={args.mb_dim}, "
            f"batch={args.mb_batch} (each n in a fresh process)"
        )
        print(
            f"{'n':>8} | {'batches':>7} | {'seconds':>7} | {'peak RSS MiB':>12} | "
            f"{'tracemalloc peak MiB':>20} | CKA[0,0]"
        )
        for r in mb:
            print(
                f"{r['n']:8d} | {r['batches']:7d} | {r['seconds']:7.1f} | "
                f"{r['peak_rss_mb']:12.0f} | {r['tracemalloc_peak_mb']:20.1f} | "
                f"{r['cka_00']:.4f}"
            )
        print(
            f"(holding all {max(args.mb_n)} examples of both models in fp32 would take "
            f"{full_mb:.0f} MiB)"
        )
        report["minibatch"] = mb
    print(f"\nloadavg(1m) at end={os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
