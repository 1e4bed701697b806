"""Shared code of the model tests: reference forwards, a LoRA-wrapped copy, site capture
and the site identities of docs/sites.md."""

from __future__ import annotations

import torch

from transferlens.models import ModelHandle, site_hooks

TEXT_A = "Välj Format - Celler för att öppna dialogrutan."
TEXT_B = "Choose Format - Cells to open the dialog window."
EXACT = {"atol": 0.0, "rtol": 0.0}

TEXTS = ["Välj Format - Celler för att öppna dialogrutan.", "The quick brown fox jumps over it."]


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out


def lora_model(base: torch.nn.Module, seed: int = 1):
    """A LoRA-wrapped copy of ``base`` with random (non-zero) A and B, so the adapter matters."""
    import copy

    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = get_peft_model(copy.deepcopy(base), cfg)
    m.eval()
    return m


def pair(h: ModelHandle) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of two different texts of the same length."""
    a = h.tokenizer(TEXT_A, return_tensors="pt")["input_ids"]
    b = h.tokenizer(TEXT_B, return_tensors="pt")["input_ids"]
    n = min(a.shape[1], b.shape[1])
    return a[:, :n], b[:, :n]


def capture(h: ModelHandle, ids: torch.Tensor, sites=None, raw_o_proj: bool = False):
    """Every site's value, the HF outputs (hidden states, logits), and — with ``raw_o_proj`` —
    each layer's attention output projection output, read by a plain torch hook."""
    names = [str(s) for s in (sites or h.sitemap.sites())]
    acts: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(x):
            acts[name] = x.detach().clone()

        return fn

    raw: dict[int, torch.Tensor] = {}
    handles = []
    if raw_o_proj:
        for layer in range(h.n_layers):
            mod = h.sitemap.o_proj(layer)
            handles.append(
                mod.register_forward_hook(
                    lambda m, a, o, layer=layer: raw.__setitem__(layer, o.detach().clone())
                )
            )
    try:
        with torch.no_grad(), site_hooks(h.sitemap, {n: keep(n) for n in names}):
            out = h.model(input_ids=ids, output_hidden_states=True)
    finally:
        for hd in handles:
            hd.remove()
    return acts, out, raw


def check_identities(h: ModelHandle, ids: torch.Tensor, tol: dict) -> None:
    """The site meanings of docs/sites.md, on a pre-LN decoder."""
    acts, out, raw = capture(h, ids, raw_o_proj=True)
    hs, L = out.hidden_states, h.n_layers
    assert len(hs) == L + 1
    torch.testing.assert_close(acts["embed"], hs[0], **tol)
    torch.testing.assert_close(acts["resid_pre.0"], acts["embed"], **EXACT)
    for layer in range(L):
        pre, mid, post = (acts[f"{c}.{layer}"] for c in ("resid_pre", "resid_mid", "resid_post"))
        attn, mlp = acts[f"attn_out.{layer}"], acts[f"mlp_out.{layer}"]
        torch.testing.assert_close(mid, pre + attn, **tol)
        torch.testing.assert_close(post, mid + mlp, **tol)
        if layer < L - 1:
            torch.testing.assert_close(post, hs[layer + 1], **tol)
            torch.testing.assert_close(acts[f"resid_pre.{layer + 1}"], post, **EXACT)
        heads = acts[f"head.{layer}"]
        assert heads.shape == (*ids.shape, h.sitemap.n_heads, h.sitemap.d_model)
        o_proj = h.sitemap.o_proj(layer)
        bias = o_proj.bias if getattr(o_proj, "bias", None) is not None else 0.0
        if h.sitemap.family.attn_post_norm:
            # Gemma 3: heads sum to the projection output, which the post-norm then rescales
            torch.testing.assert_close(heads.sum(2) + bias, raw[layer], **tol)
            post_norm = h.sitemap.blocks[layer].post_attention_layernorm
            with torch.no_grad():
                torch.testing.assert_close(post_norm(raw[layer]), attn, **tol)
            assert (heads.sum(2) + bias - attn).abs().max() > 1e-3  # not attn_out itself
        else:
            torch.testing.assert_close(heads.sum(2) + bias, attn, **tol)
    last = acts[f"resid_post.{L - 1}"]
    assert (last - hs[L]).abs().max() > 1e-3  # HF's last hidden state is normed ...
    with torch.no_grad():
        torch.testing.assert_close(h.sitemap.final_norm(last), hs[L], **tol)  # ... by final_norm
    torch.testing.assert_close(acts["final_norm"], hs[L], **tol)
    torch.testing.assert_close(acts["logits"], out.logits, **tol)
