"""Benchmark: the full probing protocol for one task, against a loop of scikit-learn fits.

Protocol (defaults): 30 layers × 2 models (base, adapted), 10,000 examples × 576 dims, 5 classes;
5-fold cross-validated accuracy of the task and of its control task (selectivity), and MDL
(online code, 10 probes per label set) of the task and of its control task, with bootstrap
intervals. That is 30 probe fits per layer and model: 10 for cross-validation, 20 for MDL.

The reference is the same fits done one at a time by scikit-learn (``StandardScaler`` on the
training rows + ``LogisticRegression(C=1, lbfgs)`` with the same objective and stopping tolerance (``tol=1e-6``)). A full scikit-learn run would
take far longer than the batched one, so it times every fit of ``--sklearn-layers`` layers of one
model (evenly spaced, so easy and hard layers are both in it) and extrapolates linearly to all
layers and models; the batched solver is timed on the same subset too, so the ratio is also
measured side by side. Wall-clock and process CPU time are both reported: on a machine shared
with other jobs, compare CPU times. The batched code fits layer groups on torch's threads (one
worker per thread); ``OMP_NUM_THREADS=1`` runs them one after the other.

Activations are synthetic: a correlated factor model (64 shared factors + noise, uneven
feature scales and offsets, like residual streams) with a class signal that grows with depth;
the adapted model differs from the base model in its upper half. They are written once, before
any timing, to one memory-mapped ``(L, n, d)`` float32 ``.npy`` file per model in a temporary
folder (about 0.7 GB each at the default size), and read from there as from the activation
store; memory stays at a few layers.

Usage::

    python benchmarks/bench_probing.py                 # full protocol (minutes)
    python benchmarks/bench_probing.py --quick         # small smoke run
    python benchmarks/bench_probing.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np


class SyntheticLayers:
    """``(L, n, d)`` float32 activations made on access; layer ``i`` is the same every time."""

    def __init__(self, L: int, n: int, d: int, y: np.ndarray, model: int, K: int, seed: int = 0):
        self.shape = (L, n, d)
        self.y, self.model, self.K, self.seed = y, model, K, seed
        base = np.random.default_rng(seed)
        self.mix = base.normal(size=(64, d)).astype(np.float32) / 8.0
        self.scale = base.uniform(0.3, 3.0, size=d).astype(np.float32)
        self.offset = base.normal(size=d).astype(np.float32) * 2.0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        L, n, d = self.shape
        adapted = self.model == 1 and i >= L // 2
        rng = np.random.default_rng([self.seed, i, int(adapted)])
        dirs = rng.normal(size=(self.K, d)).astype(np.float32)
        strength = 0.05 + 0.25 * i / max(L - 1, 1) + (0.1 if adapted else 0.0)
        x = rng.normal(size=(n, 64)).astype(np.float32) @ self.mix
        x += rng.normal(size=(n, d)).astype(np.float32)
        x += strength * dirs[self.y]
        return x * self.scale + self.offset


def on_disk(layers: SyntheticLayers, path: str) -> np.ndarray:
    """Write ``layers`` to an ``(L, n, d)`` float32 ``.npy`` file; return it memory-mapped."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=layers.shape)
    for i in range(len(layers)):
        out[i] = layers[i]
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


class _Clock:
    """Wall-clock and process CPU seconds (CPU time is what to compare on a shared machine)."""

    def __enter__(self) -> _Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def sklearn_subset(stack, y, g, layers, cfg) -> int:
    """The protocol's fits for ``layers`` of one model, one scikit-learn fit at a time."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from transferlens.analysis.probe_common import MDL_FRACTIONS
    from transferlens.analysis.probe_labels import control_labels, group_folds
    from transferlens.analysis.probe_mdl import _block_ends, _mdl_order

    ctl = control_labels(y, examples=g, seed=0)
    folds = group_folds(g, cfg.n_folds, seed=0)
    order, ends_ex = _mdl_order(g, 0, True)
    ends = _block_ends(len(y), MDL_FRACTIONS, ends_ex)
    fits = 0
    for li in layers:
        X = np.asarray(stack[li], np.float64)
        jobs = [(folds != f, labels) for f in range(cfg.n_folds) for labels in (y, ctl)]
        jobs += [(order[:a], labels) for a in ends[:-1] for labels in (y, ctl)]
        for rows, labels in jobs:
            Xtr, ytr = X[rows], labels[rows]
            if len(np.unique(ytr)) < 2:
                continue  # scikit-learn cannot fit one class (the smallest MDL blocks)
            sc = StandardScaler().fit(Xtr)
            LogisticRegression(C=cfg.C, tol=cfg.tol, max_iter=cfg.max_iter).fit(
                sc.transform(Xtr), ytr
            )
            fits += 1
    return fits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument(
        "--sklearn-layers",
        type=int,
        default=3,
        help="evenly spaced layers of the base model timed with scikit-learn",
    )
    ap.add_argument("--quick", action="store_true", help="4 layers, 2000 × 128 (smoke run)")
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.n, args.d = 4, 2000, 128

    import torch

    from transferlens.analysis.probe_methods import (
        ProbeConfig,
        mdl_probe,
        selectivity,
    )

    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.n)
    g = np.arange(args.n)  # example-level task: one row per example
    tmp = tempfile.TemporaryDirectory(prefix="bench_probing_")
    with _Clock() as gen:
        acts = {
            m: on_disk(
                SyntheticLayers(args.layers, args.n, args.d, y, i, args.classes),
                os.path.join(tmp.name, f"{m}.npy"),
            )
            for i, m in enumerate(("base", "adapted"))
        }
    cfg = ProbeConfig(n_folds=5, seeds=(0,), n_boot=1000)

    load_before = os.getloadavg()[0]
    with _Clock() as cv:
        sel = selectivity(acts, y, g, config=cfg, task="bench")
    with _Clock() as md:
        mdl = mdl_probe(acts, y, g, config=cfg, task="bench")

    # side by side on evenly spaced layers of one model: batched vs scikit-learn
    sub = sorted({int(round(v)) for v in np.linspace(0, args.layers - 1, args.sklearn_layers)})
    subset = {"base": [acts["base"][i] for i in sub]}
    with _Clock() as ours:
        selectivity(subset, y, g, config=cfg, task="bench")
        mdl_probe(subset, y, g, config=cfg, task="bench")
    with _Clock() as sk:
        n_fits = sklearn_subset(acts["base"], y, g, sub, cfg)
    scale = args.layers * 2 / len(sub)

    acc = {r["layer"]: r["value"] for r in sel.where(model="base", quantity="task_accuracy")}
    comp = {r["layer"]: r["value"] for r in mdl.where(model="base", labels="task")}
    total = {"wall": cv.wall + md.wall, "cpu": cv.cpu + md.cpu}
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}",
        "activations_written_s": gen.wall,
        "shape": {
            "layers": args.layers,
            "models": 2,
            "n": args.n,
            "d": args.d,
            "classes": args.classes,
            "tol": cfg.tol,
        },
        "batched": {
            "cv_task_and_control": {"wall": cv.wall, "cpu": cv.cpu},
            "mdl_task_and_control": {"wall": md.wall, "cpu": md.cpu},
            "total": total,
        },
        "subset_layers": sub,
        "subset": {
            "batched": {"wall": ours.wall, "cpu": ours.cpu},
            "sklearn": {"wall": sk.wall, "cpu": sk.cpu, "fits": n_fits},
        },
        "sklearn_full_extrapolated": {"wall": sk.wall * scale, "cpu": sk.cpu * scale},
        "ratio_subset_cpu": sk.cpu / ours.cpu,
        "ratio_full_cpu": sk.cpu * scale / total["cpu"],
        "sanity": {
            "acc_first_layer": acc[0],
            "acc_last_layer": acc[args.layers - 1],
            "mdl_compression_first": comp[0],
            "mdl_compression_last": comp[args.layers - 1],
        },
    }
    del acts, subset
    tmp.cleanup()
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
