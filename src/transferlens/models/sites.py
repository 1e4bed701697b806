"""Named sites and the per-family tables that resolve them to module paths.

A *site* is ``component`` plus, for per-layer components, a layer (and for ``head`` a head):
``embed``, ``resid_pre.3``, ``resid_mid.3``, ``resid_post.3``, ``attn_out.3``, ``mlp_out.3``,
``head.3`` (all heads of layer 3), ``head.3.2`` (head 2 of layer 3), ``final_norm``, ``logits``.
``resid_post[3]`` and ``head[3,2]`` are accepted spellings.

Meaning (fixed; see docs/sites.md):

- ``embed``: the input to block 0 (token + positional embeddings, any embedding scaling).
- ``resid_pre[l]``: the input to block l (``resid_pre[0] == embed``).
- ``resid_mid[l]``: the residual stream between attention and MLP (pre-LN families only),
  ``resid_pre[l] + attn_out[l]``. Replacing it changes the residual stream itself (what
  the MLP reads *and* what flows on to the block output), not just the MLP's input.
- ``resid_post[l]``: the output of block l, *before* the final norm (so it equals
  Hugging Face's ``hidden_states[l+1]`` except for the last layer, where HF applies the norm).
- ``attn_out[l]`` / ``mlp_out[l]``: exactly what the block adds to the residual stream (after
  any post-norm, as in Gemma 3).
- ``head[l,h]``: head h's contribution after the output projection, without the output bias;
  the heads plus the bias sum to ``attn_out`` in families without an attention post-norm.
- ``final_norm``: the output of the final norm; ``logits``: the unembedding output.

A :class:`FamilyTable` names, per architecture family, the module path of the block list and,
relative to a block, where each component is read (``input`` of a module or its ``output``).
Adding a family is adding a table entry; nothing else in the package branches on the family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "COMPONENTS",
    "FAMILIES",
    "FamilyTable",
    "HookPoint",
    "Site",
    "family_for",
    "parse_site",
]

COMPONENTS = (
    "embed",
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "head",
    "final_norm",
    "logits",
)
_LAYERED = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head"}


@dataclass(frozen=True, order=True)
class Site:
    """A named place in a model whose activation can be read or replaced."""

    component: str
    layer: int | None = None
    head: int | None = None

    def __str__(self) -> str:
        parts = [self.component]
        if self.layer is not None:
            parts.append(str(self.layer))
        if self.head is not None:
            parts.append(str(self.head))
        return ".".join(parts)


_SITE_RE = re.compile(
    r"^\s*(?P<comp>[a-z_]+)\s*(?:[.\[]\s*(?P<layer>-?\d+)\s*(?:[.,]\s*(?P<head>\d+)\s*)?\]?)?\s*$"
)


def parse_site(spec: str | Site) -> Site:
    """Parse ``"resid_post.3"``, ``"resid_post[3]"``, ``"head.3.2"``, ``"head[3,2]"``, ``"embed"``.

    Raises:
        ValueError: the text is not a site; the message lists the components.
    """
    if isinstance(spec, Site):
        return spec
    m = _SITE_RE.match(str(spec))
    comps = ", ".join(COMPONENTS)
    if not m or m.group("comp") not in COMPONENTS:
        raise ValueError(
            f"unknown site {spec!r}: a site is one of {comps}, with a layer for per-layer "
            "components (e.g. 'resid_post.3', 'head.3.2')"
        )
    comp = m.group("comp")
    layer = int(m.group("layer")) if m.group("layer") is not None else None
    head = int(m.group("head")) if m.group("head") is not None else None
    if comp in _LAYERED and layer is None:
        raise ValueError(f"site {spec!r} needs a layer, e.g. '{comp}.0'")
    if comp not in _LAYERED and layer is not None:
        raise ValueError(f"site {spec!r}: '{comp}' takes no layer; write '{comp}'")
    if head is not None and comp != "head":
        raise ValueError(f"site {spec!r}: only 'head' sites take a head index")
    return Site(comp, layer, head)


@dataclass(frozen=True)
class HookPoint:
    """Where a site's value lives: the ``input`` (first positional argument or the
    ``hidden_states`` keyword) or the ``output`` (first element if a tuple) of a module."""

    path: str
    io: str  # "input" | "output"


@dataclass(frozen=True)
class FamilyTable:
    """How one architecture family lays out its modules.

    Attributes:
        name: family name shown to users.
        model_types: Hugging Face ``config.model_type`` values that belong to the family.
        base_prefixes: candidate paths of the backbone inside a wrapper model, tried in order
            (``transformer`` for GPT-2 LM heads, ``model`` for Llama, ``""`` for a bare backbone).
        layers: path of the block list, relative to the backbone.
        block: component -> hook point relative to a block.
        final_norm: path of the final norm relative to the backbone (None if the family has none).
        lm_head: path of the unembedding relative to the root model (None for encoders).
        o_proj: path of the attention output projection relative to a block (for ``head`` sites).
        o_proj_conv1d: True when the projection is a GPT-2 ``Conv1D`` (weight stored in×out).
        pre_attn_norm: path of the norm that reads the block input (relative to a block); the
            block input is captured there so that a ``resid_mid`` write can go through the
            attention output (``attn_out := new - resid_pre``).
        residual: True when the block is pre-LN (the residual identities hold).
        attn_post_norm: True when a norm sits between the heads and the residual (Gemma 3):
            the heads then sum to the *pre-norm* attention output, not to ``attn_out``.
    """

    name: str
    model_types: tuple[str, ...]
    base_prefixes: tuple[str, ...]
    layers: str
    block: dict[str, HookPoint] = field(default_factory=dict)
    final_norm: str | None = None
    lm_head: str | None = None
    o_proj: str | None = None
    o_proj_conv1d: bool = False
    pre_attn_norm: str | None = None
    residual: bool = True
    attn_post_norm: bool = False


def _hp(path: str, io: str) -> HookPoint:
    return HookPoint(path, io)


GPT2 = FamilyTable(
    name="gpt2",
    model_types=("gpt2",),
    base_prefixes=("transformer", ""),
    layers="h",
    block={
        "resid_pre": _hp("", "input"),
        "resid_mid": _hp("ln_2", "input"),
        "resid_post": _hp("", "output"),
        "attn_out": _hp("attn", "output"),
        "mlp_out": _hp("mlp", "output"),
    },
    final_norm="ln_f",
    lm_head="lm_head",
    o_proj="attn.c_proj",
    o_proj_conv1d=True,
    pre_attn_norm="ln_1",
)

LLAMA = FamilyTable(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    base_prefixes=("model", ""),
    layers="layers",
    block={
        "resid_pre": _hp("", "input"),
        "resid_mid": _hp("post_attention_layernorm", "input"),
        "resid_post": _hp("", "output"),
        "attn_out": _hp("self_attn", "output"),
        "mlp_out": _hp("mlp", "output"),
    },
    final_norm="norm",
    lm_head="lm_head",
    o_proj="self_attn.o_proj",
    pre_attn_norm="input_layernorm",
)

GEMMA3 = FamilyTable(
    name="gemma3",
    model_types=("gemma3_text", "gemma3", "gemma2"),
    base_prefixes=("model.language_model", "model", ""),
    layers="layers",
    block={
        "resid_pre": _hp("", "input"),
        "resid_mid": _hp("pre_feedforward_layernorm", "input"),
        "resid_post": _hp("", "output"),
        "attn_out": _hp("post_attention_layernorm", "output"),
        "mlp_out": _hp("post_feedforward_layernorm", "output"),
    },
    final_norm="norm",
    lm_head="lm_head",
    o_proj="self_attn.o_proj",
    pre_attn_norm="input_layernorm",
    attn_post_norm=True,
)

BERT = FamilyTable(
    name="bert",
    model_types=("bert",),
    base_prefixes=("bert", ""),
    layers="encoder.layer",
    block={
        "resid_pre": _hp("", "input"),
        "resid_post": _hp("", "output"),
    },
    final_norm=None,
    lm_head=None,
    residual=False,
)

FAMILIES: tuple[FamilyTable, ...] = (GPT2, LLAMA, GEMMA3, BERT)


def family_for(model_type: str) -> FamilyTable:
    """The family table for a Hugging Face ``model_type``.

    Raises:
        ValueError: unsupported architecture; the message names the supported families and
            how to add one.
    """
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)
    raise ValueError(
        f"unsupported architecture {model_type!r}: supported families are {supported}; "
        "to add one, add a FamilyTable entry to transferlens.models.sites.FAMILIES"
    )
