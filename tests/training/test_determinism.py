"""Determinism across processes and resume after SIGKILL (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, random, sys
    from transferlens.models import load_model
    from transferlens.training import PretrainConfig, pretrain

    rng = random.Random(0)
    words = "the cell table chart slide formula sheet text page style insert choose".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(300)]
    cfg = PretrainConfig(steps=int(sys.argv[2]), batch_size=4, seq_len=32, vocab_size=320,
                         n_layers=1, d_model=32, n_heads=2, d_ff=64, warmup_steps=2,
                         eval_every=0, eval_texts=4, save_every=2, log_every=1, lr=3e-3,
                         seed=int(sys.argv[3]))
    res = pretrain(sys.argv[1], cfg, texts={"en": texts}, eval_texts={"en": texts[:4]})
    print(json.dumps({"fingerprint": load_model(sys.argv[1]).fingerprint,
                      "resumed_from": res.provenance["training"]["resumed_from"]}))
    """
)


def _env():
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.path.abspath(src) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def _run(script, out, steps, seed=0):
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(steps), str(seed)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_seed_same_weights_in_separate_processes_and_sigkill_resume(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    steps = 60
    a = _run(script, tmp_path / "a.pt", steps)
    b = _run(script, tmp_path / "b.pt", steps)
    assert a["fingerprint"] == b["fingerprint"]
    assert a["resumed_from"] == 0

    # kill -9 once the first resumable state is on disk, then run the same command again
    out = tmp_path / "c.pt"
    state = tmp_path / "c.run" / "state.pt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(steps), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    deadline = time.time() + 600
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert state.exists() and not out.exists(), "the run finished before it could be killed"
    c = _run(script, out, steps)
    assert c["resumed_from"] > 0
    assert c["fingerprint"] == a["fingerprint"]
    assert not state.exists()  # dropped once the checkpoint is written

    other = _run(script, tmp_path / "d.pt", steps, seed=1)
    assert other["fingerprint"] != a["fingerprint"]  # the seed matters
