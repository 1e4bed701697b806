"""Tests that need their own process: SIGKILL and resume, resident memory, an unwritable
output folder."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transferlens

SRC = str(Path(transferlens.__file__).resolve().parents[1])

JOB = """
import sys, time

from transferlens.capture import capture, writer
from transferlens.models import tiny_model

WORDS = "Choose Format Cells to open the dialog Välj Celler för att öppna dialogrutan".split()
DATA = [{"id": i, "text": " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(3 + i % 9)),
         "language": "sv" if i % 2 else "en"} for i in range(40)]


def run(out, pause=0.0):
    if pause:
        def after(path, k):
            print(f"shard {k}", flush=True)
            time.sleep(pause)
        writer.after_shard = after
    h = tiny_model("llama", seed=3, n_layers=2)
    return capture(h, DATA, ["resid_post.0", "resid_post.1", "mlp_out.0"], select="all",
                   out=out, batch_size=4, shard_rows=30, dtype="bfloat16")


if __name__ == "__main__":
    run(sys.argv[1], pause=float(sys.argv[2]))
    print("done", flush=True)
"""


def _env(threads: int | None = None):
    """The child's environment; ``threads`` pins torch's intra-op threads (the SIGKILL test
    gives the child the parent's count, so both compute the same floating-point bytes)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads or torch.get_num_threads())
    return env


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("capture_job", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(JOB)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(job), str(out), "2.0"], stdout=subprocess.PIPE, text=True, env=_env()
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if line.startswith("shard 1"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, seen
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False
    finished = manifest["finished"]
    assert finished[:2] == [0, 1] and len(finished) < len(manifest["shards"]) - 1
    mod = _load(job)
    resumed = mod.run(out)  # the same call resumes
    assert resumed.manifest["complete"] is True
    mod.run(tmp_path / "clean")
    got, want = _files(out), _files(tmp_path / "clean")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


MEM_JOB = """
import json, sys, threading, time

from transferlens.capture import capture
from transferlens.models import tiny_model


def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


def peak_during(fn):
    peak, stop = [rss_anon()], threading.Event()
    base = peak[0]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = fn()
    finally:
        stop.set()
        t.join()
    return max(peak[0], rss_anon()) - base, result


WORDS = "Choose Format Cells to open the dialog Välj Celler för att öppna dialogrutan".split()
n, out = int(sys.argv[1]), sys.argv[2]
texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)) for i in range(n)]
h = tiny_model("llama", n_layers=4, d_model=64, n_ctx=128)
capture(h, texts[:40], "resid_post", select="all", batch_size=16)  # warm-up
grow, store = peak_during(lambda: capture(h, texts, "resid_post", select="all", out=out,
                                          batch_size=16))
res = {"store_growth": grow, "rows": store.n_rows, "bytes": store.manifest["bytes"]}
if len(sys.argv) > 3:
    res["memory_growth"], _ = peak_during(lambda: capture(h, texts, "resid_post",
                                                          select="all", batch_size=16))
print(json.dumps(res))
"""


@pytest.mark.slow
def test_resident_memory_does_not_grow_with_tokens(tmp_path):
    job = tmp_path / "mem.py"
    job.write_text(MEM_JOB)
    res = []
    for n, extra in ((150, []), (1200, ["memory"])):
        r = subprocess.run(
            [sys.executable, str(job), str(n), str(tmp_path / f"s{n}"), *extra],
            capture_output=True,
            text=True,
            env=_env(threads=1),
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        res.append(json.loads(r.stdout.strip().splitlines()[-1]))
    small, large = res
    assert large["rows"] >= 7 * small["rows"]
    assert large["bytes"] - small["bytes"] > 64 * 2**20  # 8x the tokens: >64 MiB more data
    assert large["store_growth"] - small["store_growth"] < 24 * 2**20, res
    # the measurement has teeth: keeping the same rows in memory does grow
    assert large["memory_growth"] > large["store_growth"] + 64 * 2**20, res


RO_JOB = """
import json, sys
from pathlib import Path

from transferlens.capture import capture
from transferlens.models import tiny_model

ro = Path(sys.argv[1])
try:
    (ro / "probe").write_text("x")
    print(json.dumps({"writable": True}))
    sys.exit(0)
except PermissionError:
    pass
h = tiny_model("gpt2")
res = {}
for out in (ro / "new", ro):
    try:
        capture(h, ["Choose Format"], "resid_post.0", out=out)
        res[str(out)] = "no error"
    except PermissionError as e:
        res[str(out)] = str(e)
print(json.dumps(res))
"""


def _without_dac_override():  # pragma: no cover - runs in the child
    """As root, drop the capabilities that let root write into read-only folders."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.slow
def test_unwritable_output_folder(tmp_path):
    job = tmp_path / "ro.py"
    job.write_text(RO_JOB)
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = subprocess.run(
            [sys.executable, str(job), str(ro)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
            preexec_fn=_without_dac_override,
        )
    finally:
        ro.chmod(0o755)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert "writable" not in res, "the read-only folder was writable"
    for msg in res.values():
        assert msg.startswith("cannot write the activation store to"), msg
        assert "choose a writable folder" in msg and "\n" not in msg
    assert list(ro.iterdir()) == []
