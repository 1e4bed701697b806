"""Data-parallel training with two CPU processes (gloo), started by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from transferlens.training.loop import batch_indices

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from transferlens.models import fingerprint, tiny_model
    from transferlens.training import PretrainConfig, run_loop
    from transferlens.training.common import lm_collate, lm_loss

    out = sys.argv[1]
    cfg = PretrainConfig(steps=6, batch_size=2, grad_accum=2, seq_len=16, lr=1e-2,
                         warmup_steps=1, eval_every=0, save_every=3, log_every=1, cpu=True)
    model = tiny_model("llama", seed=int(os.environ["RANK"]), n_layers=1).model
    model.train()
    data = [torch.full((16,), 3 + i) for i in range(64)]  # example i is made of token 3 + i
    seen = []

    def loss_fn(m, batch):
        seen.extend((batch["input_ids"][:, 0] - 3).tolist())
        return lm_loss(m, batch)

    res = run_loop(model, data, lm_collate, loss_fn, cfg, out + "/run")
    rank = int(os.environ["RANK"])
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"seen": seen, "fingerprint": fingerprint(res.model),
                   "world": int(os.environ["WORLD_SIZE"])}, f)

    # SFT-style micro-batches with different numbers of response tokens: weighted over both
    # processes, a step is the per-token mean of the whole 2 x 2 x 2 batch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sft_data import SFT_CFG, sft_pairs, sft_run
    sft = sft_run(sft_pairs(), SFT_CFG, out + "/sft")
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in sft.state_dict().items()},
                   out + "/sft_ddp.pt")
    """
)

SFT_DATA = textwrap.dedent(
    """
    import torch
    from transferlens.analysis.behaviour import pad_examples
    from transferlens.models import tiny_model
    from transferlens.training import PretrainConfig, run_loop
    from transferlens.training.sft import _response_tokens, _sft_loss

    SFT_CFG = dict(steps=3, batch_size=2, grad_accum=2, seq_len=16, lr=1e-2, warmup_steps=1,
                   eval_every=0, save_every=0, log_every=1, cpu=True)

    def sft_pairs():
        g = torch.Generator().manual_seed(0)
        out = []
        for i in range(32):
            ids = torch.randint(3, 300, (4 + 1 + (i * 5) % 9,), generator=g).tolist()
            out.append((ids[:4], ids[4:]))
        return out

    def sft_run(pairs, cfg, folder):
        model = tiny_model("llama", seed=0, n_layers=1).model
        model.train()
        res = run_loop(model, pairs, lambda b: pad_examples(b, 0), _sft_loss,
                       PretrainConfig(**cfg), folder, weight_fn=_response_tokens)
        return res.model
    """
)


def test_two_cpu_processes_see_different_data_and_end_with_equal_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    (tmp_path / "sft_data.py").write_text(SFT_DATA)
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    assert len(seen0) == len(seen1) == 6 * 2 * 2
    assert not set(seen0) & set(seen1)  # each process got its own slice of every batch
    for rank, seen in enumerate((seen0, seen1)):
        want = [i for m in range(12) for i in batch_indices(m, 64, 2, 2, rank, seed=0)]
        assert seen == want
    # different random inits per rank, yet DDP keeps the replicas identical
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    # the weighted SFT steps over two processes equal one process holding both halves
    sys.path.insert(0, str(tmp_path))
    try:
        import torch
        from sft_data import SFT_CFG, sft_pairs, sft_run

        one = sft_run(sft_pairs(), dict(SFT_CFG, batch_size=4), tmp_path / "sft_one")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sft_data", None)
    ddp = torch.load(tmp_path / "sft_ddp.pt", weights_only=True)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(v, ddp[k], rtol=1e-4, atol=1e-5, msg=k)
