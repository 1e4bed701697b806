"""A :class:`SiteMap` binds a family table to one model instance.

It validates sites against the model (layer and head ranges, components the family has),
resolves them to modules, and gives the per-head output projection used by ``head`` sites.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .sites import COMPONENTS, FamilyTable, HookPoint, Site, family_for, parse_site

__all__ = ["SiteMap", "is_peft_model", "unwrap_model"]


def is_peft_model(model: nn.Module) -> bool:
    """True for a PEFT wrapper (``PeftModel`` and its task subclasses)."""
    return type(model).__module__.startswith("peft") and callable(
        getattr(model, "get_base_model", None)
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a PEFT wrapper (adapter layers stay in place)."""
    return model.get_base_model() if is_peft_model(model) else model


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in [p for p in path.split(".") if p]:
        mod = getattr(mod, part)
    return mod


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
        return True
    except AttributeError:
        return False


class SiteMap:
    """Sites of one model, resolved to its modules.

    Args:
        model: a Hugging Face model (``*ForCausalLM``, a bare backbone, or a PEFT wrapper).
        family: the family table; looked up from ``model.config.model_type`` when omitted.
    """

    def __init__(self, model: nn.Module, family: FamilyTable | None = None):
        self.model = model
        root = unwrap_model(model)
        self.root = root
        cfg = getattr(root, "config", None)
        if family is None:
            model_type = getattr(cfg, "model_type", None)
            if model_type is None:
                raise ValueError(
                    f"{type(root).__name__} has no config.model_type: transferlens needs a "
                    "Hugging Face model (or a TransformerBridge / nnsight object wrapping one)"
                )
            family = family_for(model_type)
        self.family = family
        prefix = next(
            (p for p in family.base_prefixes if _has(root, f"{p}.{family.layers}".strip("."))),
            None,
        )
        if prefix is None:
            raise ValueError(
                f"{type(root).__name__} does not have the module layout of the {family.name} "
                f"family (no '{family.layers}' block list)"
            )
        self.backbone = _get(root, prefix)
        self.blocks: nn.ModuleList = _get(self.backbone, family.layers)
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.n_layers = len(self.blocks)
        self.n_heads = int(
            getattr(text_cfg, "num_attention_heads", getattr(text_cfg, "n_head", 0)) or 0
        )
        self.d_model = int(getattr(text_cfg, "hidden_size", getattr(text_cfg, "n_embd", 0)) or 0)
        d_head = getattr(text_cfg, "head_dim", None)
        self.d_head = (
            int(d_head) if d_head else (self.d_model // self.n_heads if self.n_heads else 0)
        )
        self.final_norm = (
            _get(self.backbone, family.final_norm)
            if family.final_norm and _has(self.backbone, family.final_norm)
            else None
        )
        self.lm_head = (
            _get(root, family.lm_head) if family.lm_head and _has(root, family.lm_head) else None
        )

    # ------------------------------------------------------------------ listing
    def components(self) -> list[str]:
        """Components this model supports, in canonical order."""
        have = set(self.family.block) | {"embed"}
        if self.family.o_proj:
            have.add("head")
        if self.final_norm is not None:
            have.add("final_norm")
        if self.lm_head is not None:
            have.add("logits")
        return [c for c in COMPONENTS if c in have]

    def sites(self, components: Iterable[str] | None = None, heads: bool = False) -> list[Site]:
        """All sites of the given components (default: all), layer by layer.

        ``head`` sites are listed per layer (``head.l``, all heads) unless ``heads=True``.
        """
        comps = list(components) if components is not None else self.components()
        out: list[Site] = []
        for c in comps:
            if c not in self.components():
                self.validate(Site(c, 0 if c in self.family.block or c == "head" else None))
            if c in ("embed", "final_norm", "logits"):
                out.append(Site(c))
            elif c == "head" and heads:
                out += [
                    Site(c, layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)
                ]
            else:
                out += [Site(c, layer) for layer in range(self.n_layers)]
        return out

    def validate(self, site: str | Site) -> Site:
        """Parse and check a site against this model.

        Raises:
            ValueError: naming the valid components, layers or heads.
        """
        s = parse_site(site)
        valid = self.components()
        if s.component not in valid:
            raise ValueError(
                f"site '{s}' is not available for {self.family.name} models; "
                f"valid components: {', '.join(valid)}"
            )
        if s.layer is not None and not 0 <= s.layer < self.n_layers:
            raise ValueError(f"site '{s}': layer {s.layer} out of range 0..{self.n_layers - 1}")
        if s.head is not None and not 0 <= s.head < self.n_heads:
            raise ValueError(f"site '{s}': head {s.head} out of range 0..{self.n_heads - 1}")
        return s

    # ------------------------------------------------------------------ resolving
    def hook_point(self, site: str | Site) -> tuple[nn.Module, str]:
        """(module, ``"input"``/``"output"``) where a non-head site's value can be read.

        Use :func:`~transferlens.models.hooks.site_hooks` to read *or replace* values: a
        ``resid_mid`` value read here is the input of the MLP's norm, but a replacement must
        also reach the residual stream, which ``site_hooks`` arranges.
        """
        s = self.validate(site)
        if s.component == "embed":
            return self.blocks[0], "input"
        if s.component == "final_norm":
            return self.final_norm, "output"  # type: ignore[return-value]
        if s.component == "logits":
            return self.lm_head, "output"  # type: ignore[return-value]
        if s.component == "head":
            raise ValueError("head sites are resolved with head_projection()")
        hp: HookPoint = self.family.block[s.component]
        block = self.blocks[s.layer]  # type: ignore[index]
        return _get(block, hp.path), hp.io

    def o_proj(self, layer: int) -> nn.Module:
        """The attention output projection of a block."""
        if not self.family.o_proj:
            raise ValueError(f"{self.family.name} models have no head sites")
        return _get(self.blocks[layer], self.family.o_proj)

    def pre_attn_norm(self, layer: int) -> nn.Module:
        """The norm that reads the block input (where ``resid_pre`` is seen inside the block)."""
        if not self.family.pre_attn_norm:
            raise ValueError(f"{self.family.name} models have no resid_mid site")
        return _get(self.blocks[layer], self.family.pre_attn_norm)

    def head_weights(self, layer: int) -> torch.Tensor:
        """Per-head output projection, shape (n_heads, d_head, d_model), effective weight
        (a PEFT LoRA delta on the projection included)."""
        mod = self.o_proj(layer)
        w = _effective_weight(mod)
        if not self.family.o_proj_conv1d:
            w = w.T  # nn.Linear stores (out, in)
        return w.reshape(self.n_heads, self.d_head, w.shape[-1])


def _effective_weight(mod: nn.Module) -> torch.Tensor:
    """The weight a (possibly PEFT-wrapped) projection applies, adapter deltas included.

    Merged adapters are already in ``base_layer.weight``; unmerged active LoRA adapters add
    ``get_delta_weight``. DoRA rescales the weight per output and is refused.
    """
    base = getattr(mod, "base_layer", None)
    if base is None:
        return mod.weight
    w = base.weight
    if getattr(mod, "disable_adapters", False):
        return w
    merged = set(getattr(mod, "merged_adapters", []) or [])
    for name in getattr(mod, "active_adapters", []):
        if name in merged or name not in getattr(mod, "lora_A", {}):
            continue
        if getattr(mod, "use_dora", {}).get(name, False):
            raise ValueError(
                "head sites are not supported on DoRA adapters; merge the adapter first "
                "(load_model(..., merge=True))"
            )
        w = w + mod.get_delta_weight(name)
    return w
