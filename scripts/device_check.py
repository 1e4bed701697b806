"""Check that transferlens gives the same numbers on a CUDA GPU as on the CPU.

Run on a machine with a CUDA device (``python scripts/device_check.py --out DIR``):

1. CKA: ``cka_matrix`` (linear by the feature and the kernel method, biased and debiased,
   float32 and float64 products; RBF) and ``MinibatchCKA`` on the GPU against the same call on
   the CPU in float64, on synthetic layers; then the 30 × 30 cross-model matrix of the
   benchmark (10k examples × 576 dims) timed on the GPU.
2. Training and ``compare``: trains the demo's tiny base/adapted pair on the GPU (bf16 mixed
   precision, the training loop's GPU default), then runs ``compare`` with the demo's settings
   on the GPU and on the CPU over those checkpoints and compares every record of the two
   ``results.json``; then LoRA adaptation, SFT and LoRA DPO from the GPU-trained base model
   on the GPU, each checkpoint's logits on the GPU against the CPU, and the weight analysis
   of the LoRA model on both.

Writes ``device_check.json`` (every difference, timing and error) into ``--out``; exits 1 if a
CKA difference exceeds its tolerance, a step fails, or the two reports do not hold the same
results (a stage skipped or failed on one device only). The numbers of the two reports are
compared and recorded, not judged: capture in float32 on two devices differs by rounding, and
a probe's accuracy or a bootstrap interval moves by one example when a prediction near the
boundary flips.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def layers(n: int, p: int, count: int, z: torch.Tensor, seed: int) -> torch.Tensor:
    """``count`` layers of a residual-stream-like model driven by the shared latent ``z``."""
    g = torch.Generator().manual_seed(seed)
    h = torch.tanh(z @ torch.randn(z.shape[1], p, generator=g))
    out = []
    for _ in range(count):
        h = h + 0.3 * torch.tanh(h @ torch.randn(p, p, generator=g) / math.sqrt(p))
        out.append(h + 0.1 * torch.randn(n, p, generator=g))
    return torch.stack(out)


def _agree(rows: list[dict], got: Any, ref: Any, tol: float, **what: Any) -> bool:
    """Record ``max |got − ref|`` against ``tol`` with ``what`` was compared; whether it holds."""
    diff = float(np.abs(np.asarray(got) - np.asarray(ref)).max())
    rows.append({**what, "max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol})
    return diff <= tol


def cka_checks(report: dict[str, Any], dev: str) -> bool:
    from transferlens.analysis.cka_matrix import cka_matrix
    from transferlens.analysis.minibatch_cka import MinibatchCKA

    ok = True
    z = torch.randn(4000, 24, generator=torch.Generator().manual_seed(0))
    A, B = layers(4000, 256, 8, z, 1), layers(4000, 256, 8, z, 2)
    rows = report.setdefault("cka", [])
    for debiased in (False, True):
        ref = cka_matrix(A, B, debiased=debiased, device="cpu", method="features")
        for method in ("features", "gram"):
            for dtype in (torch.float32, torch.float64):
                got = cka_matrix(A, B, debiased=debiased, dtype=dtype, device=dev, method=method)
                ok &= _agree(rows, got, ref, TOL[dtype], kind="linear", method=method,
                             debiased=debiased, dtype=str(dtype))  # fmt: skip
    small_a, small_b = A[:4, :1500], B[:4, :1500]
    for debiased in (False, True):
        ref = cka_matrix(small_a, small_b, kind="rbf", debiased=debiased, device="cpu")
        got = cka_matrix(small_a, small_b, kind="rbf", debiased=debiased, device=dev)
        ok &= _agree(rows, got, ref, 1e-10, kind="rbf", debiased=debiased)
    for kind in ("linear", "rbf"):
        accs = {d: MinibatchCKA(kind, device=d) for d in ("cpu", dev)}
        for b0 in range(0, 4000, 800):
            for acc in accs.values():
                acc.update(list(A[:4, b0 : b0 + 800]), list(B[:4, b0 : b0 + 800]))
        ok &= _agree(rows, accs[dev].compute(), accs["cpu"].compute(), 1e-10,
                     kind=f"minibatch_{kind}")  # fmt: skip
    return ok


def cka_timing(report: dict[str, Any], dev: str, repeats: int) -> None:
    from transferlens.analysis.cka_matrix import cka_matrix

    z = torch.randn(10_000, 32, generator=torch.Generator().manual_seed(0))
    A, B = layers(10_000, 576, 30, z, 1), layers(10_000, 576, 30, z, 2)
    out = report.setdefault("cka_timing", [])
    mats = {}
    for dtype in (torch.float32, torch.float64):
        cka_matrix(A[:2, :2000], B[:2, :2000], dtype=dtype, device=dev)  # warm-up
        runs = []
        for _ in range(repeats):
            sync(dev)
            t = time.perf_counter()
            mats[dtype] = cka_matrix(A, B, dtype=dtype, device=dev)  # from CPU memory
            runs.append(time.perf_counter() - t)
        out.append(dict(device=dev, dtype=str(dtype), median_s=statistics.median(runs),
                        runs=runs))  # fmt: skip
    t = time.perf_counter()
    cpu = cka_matrix(A, B, dtype=torch.float32, device="cpu")
    out.append(dict(device=f"cpu ({torch.get_num_threads()} threads)", dtype="torch.float32",
                    median_s=time.perf_counter() - t, runs=1))  # fmt: skip
    report["cka_timing_max_abs_diff"] = {
        "fp32_vs_fp64": float(np.abs(mats[torch.float32] - mats[torch.float64]).max()),
        "fp64_vs_cpu_fp32": float(np.abs(mats[torch.float64] - cpu).max()),
    }


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def numbers(rec: dict[str, Any]) -> dict[str, float]:
    return {
        k: (math.nan if v is None else float(v))
        for k, v in rec.items()
        if k in ("value", "ci_low", "ci_high") and (v is None or isinstance(v, int | float))
    }


def diff_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per result name: records, the largest differences of value and interval ends, and how
    many values differ by more than 1e-4 (records matched by position and coordinates)."""
    out: dict[str, Any] = {}
    rb = {r["name"]: r for r in b["results"]}
    for name in sorted(set(rb) - {r["name"] for r in a["results"]}):
        out[name] = {"mismatch": "missing from the device's results"}
    for ra in a["results"]:
        name = ra["name"]
        other = rb.get(name)
        if other is None or len(other["records"]) != len(ra["records"]):
            out[name] = {
                "mismatch": "missing from the CPU's results or a different number of records"
            }
            continue
        dv, dci, over, worst = 0.0, 0.0, 0, None
        for x, y in zip(ra["records"], other["records"], strict=True):
            keys = {k: v for k, v in x.items() if not isinstance(v, int | float) or k == "layer"}
            if keys != {k: v for k, v in y.items() if k in keys}:
                out[name] = {"mismatch": f"records differ in their coordinates: {keys}"}
                break
            nx, ny = numbers(x), numbers(y)
            for k in nx:
                d = abs(nx[k] - ny.get(k, math.nan))
                if math.isnan(d):
                    d = 0.0 if math.isnan(nx[k]) and math.isnan(ny.get(k, math.nan)) else math.inf
                if k == "value":
                    if d > dv:
                        dv, worst = d, {**keys, "gpu": nx[k], "cpu": ny.get(k)}
                    over += d > 1e-4
                else:
                    dci = max(dci, d)
        else:
            out[name] = {
                "records": len(ra["records"]),
                "max_abs_diff_value": dv,
                "max_abs_diff_ci": dci,
                "values_over_1e-4": over,
                "worst": worst,
            }
    return out


def train_and_compare(report: dict[str, Any], dev: str, root: Path) -> bool:
    from transferlens.compare import CompareConfig, compare
    from transferlens.demo import DEMO_CONFIG
    from transferlens.models import read_checkpoint
    from transferlens.training.pair import train_pair

    t = time.perf_counter()
    base, adapted = train_pair(root / "models", preset="tiny", seed=0)
    report["train_pair_s"] = time.perf_counter() - t
    for name, path in (("base", base), ("adapted", adapted)):
        prov = read_checkpoint(path)["provenance"]
        report[f"train_{name}"] = {k: prov.get(k) for k in ("training", "metrics") if k in prov}
    res = {}
    for label, d in (("device", dev), ("cpu", "cpu")):
        t = time.perf_counter()
        cfg = CompareConfig(**{**DEMO_CONFIG, "seed": 0, "device": d})
        html = compare(base, adapted, root / f"report_{label}", cfg, progress=False)
        report[f"compare_{label}_s"] = time.perf_counter() - t
        res[label] = json.loads((html.parent / "results.json").read_text())
    diff = diff_results(res["device"], res["cpu"])
    report["compare_device_vs_cpu"] = diff
    report["warnings"] = {d: r["meta"].get("warnings", []) for d, r in res.items()}
    report["skipped"] = {d: r["meta"].get("skipped", []) for d, r in res.items()}
    same = report["skipped"]["device"] == report["skipped"]["cpu"]
    return same and not any("mismatch" in v for v in diff.values())


def finetune(report: dict[str, Any], dev: str, root: Path) -> bool:
    """LoRA adaptation, SFT and DPO (LoRA) from the base model on ``dev`` (the tiny preset);
    each checkpoint's logits on ``dev`` against the CPU, and ``weight_diff`` of the LoRA model
    on ``dev`` against the CPU."""
    from transferlens.analysis.weights import weight_diff
    from transferlens.models import load_model
    from transferlens.training import adapt, dpo, sft
    from transferlens.training.presets import preset_config

    base = root / "models" / "base.pt"
    runs = {
        "adapt_lora": (adapt, preset_config("adapt", "tiny", seed=0, tuning="lora")),
        "sft": (sft, preset_config("sft", "tiny", seed=0)),
        "dpo_lora": (dpo, preset_config("dpo", "tiny", seed=0, tuning="lora")),
    }
    ok = True
    out = report.setdefault("finetune", {})
    ids = torch.randint(0, 512, (4, 48), generator=torch.Generator().manual_seed(0))
    for name, (fn, cfg) in runs.items():
        path = root / "models" / f"{name}.pt"
        t = time.perf_counter()
        res = fn(base, path, cfg, overwrite=True)
        rec: dict[str, Any] = {"seconds": time.perf_counter() - t, "metrics": res.metrics}
        logits = {}
        for d in (dev, "cpu"):
            h = load_model(path, device=d)
            with torch.no_grad():
                logits[d] = h.model(ids.to(d)).logits.float().cpu()
        rec["logits_max_abs_diff"] = float((logits[dev] - logits["cpu"]).abs().max())
        rec["metrics_finite"] = all(
            math.isfinite(v) for v in res.metrics.values() if isinstance(v, int | float)
        )
        ok &= rec["metrics_finite"] and rec["logits_max_abs_diff"] <= 1e-3
        out[name] = rec
    diffs = {}
    for d in (dev, "cpu"):
        diffs[d] = weight_diff(
            load_model(base, device=d), load_model(root / "models" / "adapt_lora.pt", device=d)
        )
    out["weight_diff_lora"] = diff_results(
        {"results": [r.to_dict() for r in diffs[dev].values()]},
        {"results": [r.to_dict() for r in diffs["cpu"].values()]},
    )
    return ok and not any("mismatch" in v for v in out["weight_diff_lora"].values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for device_check.json")
    ap.add_argument("--work", default="/tmp/transferlens-device-check", help="scratch folder")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the 30 × 30 matrix")
    ap.add_argument("--device", default="cuda", help="the device checked against the CPU")
    ap.add_argument("--skip-timing", action="store_true", help="no 30 × 30 timing")
    ap.add_argument("--skip-compare", action="store_true", help="no training and compare")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run this on a machine with a GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else args.device,
        "cpu_threads": torch.get_num_threads(),
        "errors": {},
    }
    ok = True
    steps = [
        ("cka", lambda: cka_checks(report, args.device)),
    ]
    if not args.skip_timing:
        steps.append(("timing", lambda: cka_timing(report, args.device, args.repeats)))
    if not args.skip_compare:
        steps.append(("compare", lambda: train_and_compare(report, args.device, Path(args.work))))
        steps.append(("finetune", lambda: finetune(report, args.device, Path(args.work))))
    for name, step in steps:
        t = time.perf_counter()
        try:
            good = step()
            ok &= good is not False
        except Exception:
            report["errors"][name] = traceback.format_exc()
            ok = False
        print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
        (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "errors"}, indent=1, default=str))
    for name, tb in report["errors"].items():
        print(f"--- {name} failed:\n{tb}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
