"""Batched activation patching (transferlens) vs TransformerLens's one-forward-per-cell loop.

Same random-init model, same clean/corrupt prompts, same metric (logit difference at the last
position), same grids; the two engines run alternately in each repeat and the median wall time
per grid is reported, with the largest difference between the two grids as a check.

    python benchmarks/bench_patching.py [--family gpt2] [--layers 4] [--d-model 128]
        [--pos 20] [--repeats 5] [--batch-size 64] [--threads N]

TransformerLens 4.x wraps the same Hugging Face model in a ``TransformerBridge`` (built on a
deep copy, because the bridge rewires the modules it wraps).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from transferlens.analysis.patch_metrics import LogitDiff  # noqa: E402
from transferlens.analysis.patching import activation_patching  # noqa: E402
from transferlens.models import tiny_model  # noqa: E402

ARCH = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM"}
GRIDS = [
    ("resid_pre", True, "get_act_patch_resid_pre"),
    ("attn_out", True, "get_act_patch_attn_out"),
    ("mlp_out", True, "get_act_patch_mlp_out"),
    ("head", False, "get_act_patch_attn_head_out_all_pos"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="gpt2", choices=sorted(ARCH))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--pos", type=int, default=20, help="prompt length in tokens")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformer_lens.patching as tlp
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    h = tiny_model(
        args.family,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        n_ctx=max(64, args.pos),
        seed=0,
    )
    hf = copy.deepcopy(h.model)
    bridge = build_bridge_from_module(
        hf, ARCH[args.family], hf_config=hf.config, dtype=torch.float32
    )
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(3, len(h.tokenizer), (1, args.pos), generator=gen)
    clean[0, 0] = 0  # BOS
    corrupt = clean.clone()
    corrupt[0, [args.pos // 3, 2 * args.pos // 3]] = torch.randint(
        3, len(h.tokenizer), (2,), generator=gen
    )
    metric = LogitDiff(torch.tensor([5]), torch.tensor([7]))

    def ours(component: str, by_pos: bool) -> torch.Tensor:
        return activation_patching(
            h, clean, corrupt, metric, component, by_position=by_pos, batch_size=args.batch_size
        ).values

    def theirs(fn_name: str) -> torch.Tensor:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(clean)
            return getattr(tlp, fn_name)(
                bridge, corrupt, cache, lambda lg: metric(lg, torch.arange(1)).mean()
            )

    os.environ.setdefault("TQDM_DISABLE", "1")
    print(
        f"model: random-init {args.family}, {args.layers} layers, d_model {args.d_model}, "
        f"{args.heads} heads, vocab {len(h.tokenizer)}; prompt {args.pos} tokens; float32; "
        f"torch threads {torch.get_num_threads()}; batch_size {args.batch_size}; "
        f"median of {args.repeats}"
    )
    print("| grid | cells | transferlens (s) | TransformerLens (s) | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for component, by_pos, fn_name in GRIDS:
        ours(component, by_pos), theirs(fn_name)  # warm-up
        t_ours, t_tl = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            a = ours(component, by_pos)
            t1 = time.perf_counter()
            b = theirs(fn_name)
            t2 = time.perf_counter()
            t_ours.append(t1 - t0)
            t_tl.append(t2 - t1)
        mo, mt = statistics.median(t_ours), statistics.median(t_tl)
        diff = (a.double() - b.double()).abs().max().item()
        label = f"{component} ({'layer x pos' if by_pos else 'layer x head'})"
        print(f"| {label} | {a.numel()} | {mo:.3f} | {mt:.3f} | {mt / mo:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
