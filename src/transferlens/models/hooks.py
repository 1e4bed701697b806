"""Scoped hooks on named sites: the one mechanism capture and patching share.

``site_hooks(sitemap, {site: fn})`` registers, for the duration of a ``with`` block, a hook
per site that calls ``fn(value)`` with the site's activation. If ``fn`` returns a tensor it
replaces the activation (patching); if it returns ``None`` the forward pass is unchanged
(capture). Hooks are removed in ``finally``, also when the forward pass raises.

Values passed to ``fn``:

- residual, ``attn_out``, ``mlp_out``, ``final_norm``: ``(batch, pos, d_model)``;
  ``logits``: ``(batch, pos, vocab)``;
- ``head.l.h``: that head's output after the projection, ``(batch, pos, d_model)``;
- ``head.l``: all heads of layer l, ``(batch, pos, n_heads, d_model)``.

Replacing a head's value adds ``new - old`` to the projection's output, so patching a head
means "this head now contributes ``new``" in any family.

``resid_mid`` is read as ``resid_pre + attn_out`` (the block input is captured at the first
norm, the sum formed at the attention output, exactly as the block forms it); a replacement
sets the attention output to ``new - resid_pre``, so the new value reaches both the MLP and
the residual stream that flows on (up to one float rounding of the subtraction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from .sitemap import SiteMap
from .sites import Site

__all__ = ["SiteFn", "count_hooks", "site_hooks"]

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _input_hook(fn: SiteFn):
    def hook(module, args, kwargs):
        if args:
            new = fn(args[0])
            if new is not None:
                return (new, *args[1:]), kwargs
        elif "hidden_states" in kwargs:
            new = fn(kwargs["hidden_states"])
            if new is not None:
                kwargs = dict(kwargs, hidden_states=new)
                return args, kwargs
        else:
            raise RuntimeError(f"{type(module).__name__} was called without hidden states")
        return None

    return hook


def _output_hook(fn: SiteFn):
    def hook(module, args, output):
        if isinstance(output, tuple):
            new = fn(output[0])
            return None if new is None else (new, *output[1:])
        new = fn(output)
        return new

    return hook


def _head_hook(sitemap: SiteMap, layer: int, head: int | None, fn: SiteFn):
    def hook(module, args, output):
        z = args[0]
        b, p, _ = z.shape
        z = z.reshape(b, p, sitemap.n_heads, sitemap.d_head)
        w = sitemap.head_weights(layer).to(dtype=z.dtype)
        if head is None:
            old = torch.einsum("bphd,hdm->bphm", z, w)
            new = fn(old)
            delta = None if new is None else (new - old).sum(dim=2)
        else:
            old = z[:, :, head, :] @ w[head]
            new = fn(old)
            delta = None if new is None else new - old
        if delta is None:
            return None
        out = output[0] if isinstance(output, tuple) else output
        out = out + delta.to(out.dtype)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return hook


def _resid_mid_hooks(sitemap: SiteMap, layer: int, fn: SiteFn) -> list:
    """Two hooks: capture the block input at the first norm; form and replace resid_mid at
    the attention output."""
    seen: dict[str, torch.Tensor] = {}

    def capture(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if x is None:
            raise RuntimeError(f"{type(module).__name__} was called without hidden states")
        seen["pre"] = x
        return None

    def replace(module, args, output):
        pre = seen.pop("pre", None)
        if pre is None:
            raise RuntimeError(f"resid_mid.{layer}: the block input was not seen before attention")
        out = output[0] if isinstance(output, tuple) else output
        mid = pre + out
        new = fn(mid)
        if new is None or new is mid or torch.equal(new, mid):
            return None
        out = (new - pre).to(out.dtype)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    norm = sitemap.pre_attn_norm(layer)
    attn_mod, _ = sitemap.hook_point(Site("attn_out", layer))
    return [
        norm.register_forward_pre_hook(capture, with_kwargs=True),
        attn_mod.register_forward_hook(replace),
    ]


_ORDER = {"embed": 0, "resid_mid": 2}


@contextmanager
def site_hooks(sitemap: SiteMap, fns: Mapping[str | Site, SiteFn]) -> Iterator[None]:
    """Attach ``fn`` to each site for the duration of the block.

    Args:
        sitemap: the model's site map.
        fns: site (or its name) -> function of the activation; return a tensor to replace it.

    Within one call, a value read at a site reflects replacements made at the sites it is
    made of, whatever the order of ``fns`` (e.g. ``resid_mid.3`` sees a replaced
    ``attn_out.3``); hooks of nested calls run in the order the calls were entered.

    Raises:
        ValueError: a site the model does not have (before anything is attached).
    """
    plan = [(sitemap.validate(s), fn) for s, fn in fns.items()]
    # Hooks on one module run in registration order: ``embed`` before ``resid_pre.0`` (both
    # read block 0's input), ``attn_out`` before ``resid_mid`` (formed from the attention
    # output), so a read sees the replacements made at the sites it is built from.
    plan.sort(key=lambda item: _ORDER.get(item[0].component, 1))
    handles = []
    try:
        for site, fn in plan:
            if site.component == "head":
                mod = sitemap.o_proj(site.layer)  # type: ignore[arg-type]
                handles.append(
                    mod.register_forward_hook(_head_hook(sitemap, site.layer, site.head, fn))
                )
                continue
            if site.component == "resid_mid":
                handles += _resid_mid_hooks(sitemap, site.layer, fn)  # type: ignore[arg-type]
                continue
            mod, io = sitemap.hook_point(site)
            if io == "input":
                handles.append(mod.register_forward_pre_hook(_input_hook(fn), with_kwargs=True))
            else:
                handles.append(mod.register_forward_hook(_output_hook(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def count_hooks(module: torch.nn.Module) -> int:
    """Number of forward (pre-)hooks attached anywhere below ``module`` (for tests)."""
    n = 0
    for m in module.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return n
