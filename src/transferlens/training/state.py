"""The resumable state of a training run: what is saved every ``save_every`` steps.

``state.pt`` (written atomically, read with ``weights_only=True``) holds the run key, the
step, the data position (micro-batch counter), the trainable weights, the optimiser and
scheduler states, every process's RNG state, and the loss of the steps since the last log line. ``log.jsonl`` lines after the saved step are
dropped on resume, since the resumed run writes them again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..results import atomic_write_text, to_jsonable

__all__ = [
    "atomic_torch_save",
    "key_json",
    "rng_state",
    "save_state",
    "set_rng_state",
    "truncate_log",
]


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG state (CPU, and the GPU's when training on one)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore a state from :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def key_json(run_key: Any) -> str:
    """The run key as canonical JSON (the identity a saved state must match to resume)."""
    return json.dumps(to_jsonable(run_key), sort_keys=True)


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines after ``last_step`` (and a line cut short by the interruption)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the interruption
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def save_state(
    acc, model, optimizer, scheduler, path, key, step, micro, tokens, window=None
) -> None:
    """Gather every process's RNG state and write ``state.pt`` from the main process.
    ``window``: the open logging window (loss sum, steps, stats sums) of the steps since the
    last log line, so that a resumed run writes the same next line."""
    from accelerate.utils import gather_object

    rng = (
        gather_object([rng_state(acc.device)]) if acc.num_processes > 1 else [rng_state(acc.device)]
    )
    if acc.is_main_process:
        inner = acc.unwrap_model(model)
        weights = {
            k: p.detach().cpu().clone() for k, p in inner.named_parameters() if p.requires_grad
        }
        state = {
            "run_key": key,
            "step": step,
            "micro": micro,
            "tokens": tokens,
            "model": weights,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": [{k: v.cpu() for k, v in r.items()} for r in rng],
        }
        if window is not None:
            state["window"] = window
        atomic_torch_save(state, path)
    acc.wait_for_everyone()
