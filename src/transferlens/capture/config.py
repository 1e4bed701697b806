"""Capture options, and resolving a model and its sites for a capture."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..models import ModelHandle, load_model
from ..models.sites import COMPONENTS, Site
from .engine import STORAGE_DTYPES
from .plan import Side
from .tokens import context_length, tokenizer_hash

__all__ = ["CaptureConfig", "as_handle", "make_side", "resolve_sites", "row_shape"]

_UNLAYERED = ("embed", "final_norm", "logits")


@dataclass
class CaptureConfig:
    """Options of a capture (recorded in the manifest).

    Attributes:
        select: ``all``, ``last``, ``mean`` or ``first_subtoken``.
        unit: ``example`` or ``word`` for ``last``/``mean`` (default ``example``).
        batch_size: examples per forward pass.
        padding_side: ``right`` or ``left`` (activations do not depend on it).
        max_length: most tokens per example (default: the model's context).
        on_overflow: ``truncate`` (recorded in the manifest) or ``error``.
        dtype: storage dtype, ``float32``, ``float16`` or ``bfloat16``.
        exclude_special: leave BOS/EOS and other special tokens out of rows and means.
        grad: keep the autograd graph (in-memory captures only).
        shard_rows: rows per shard (default: about 256 MiB of activations per shard).
    """

    select: str = "all"
    unit: str | None = None
    batch_size: int = 8
    padding_side: str = "right"
    max_length: int | None = None
    on_overflow: str = "truncate"
    dtype: str = "float32"
    exclude_special: bool = True
    grad: bool = False
    shard_rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptureConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def check(self) -> None:
        """Raise ValueError on an invalid option (one line each)."""
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', not {self.padding_side!r}")
        if self.on_overflow not in ("truncate", "error"):
            raise ValueError(f"on_overflow must be 'truncate' or 'error', not {self.on_overflow!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"dtype must be one of {', '.join(STORAGE_DTYPES)}, not {self.dtype!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {self.batch_size!r}")
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 1
        ):
            raise ValueError(f"max_length must be a positive integer, not {self.max_length!r}")


def resolve_sites(handle: ModelHandle, sites: Any) -> list[Site]:
    """Sites to capture: names (``resid_post.3``), bare components (``resid_post`` = every
    layer) or a comma-separated string of them; duplicates dropped, order kept.

    Raises:
        ValueError: an unknown site or component (the message lists the valid ones).
    """
    specs = sites.split(",") if isinstance(sites, str) else list(sites)
    if not specs:
        raise ValueError("no sites given; name at least one, e.g. 'resid_post'")
    out: list[Site] = []
    for spec in specs:
        name = str(spec).strip()
        if name in COMPONENTS and name not in _UNLAYERED:
            found = handle.sitemap.sites([name])
        else:
            found = [handle.sitemap.validate(spec if isinstance(spec, Site) else name)]
        out += [s for s in found if s not in out]
    return out


def row_shape(handle: ModelHandle, site: Site) -> list[int]:
    sm = handle.sitemap
    if site.component == "logits":
        n = getattr(sm.lm_head, "out_features", None) or sm.lm_head.weight.shape[0]
        return [int(n)]
    if site.component == "head" and site.head is None:
        return [sm.n_heads, sm.d_model]
    return [sm.d_model]


def as_handle(model: Any) -> ModelHandle:
    handle = model if isinstance(model, ModelHandle) else load_model(model, device=None)
    if handle.tokenizer is None:
        raise ValueError(
            f"{handle.name} has no tokenizer; load it with load_model(model, tokenizer=...)"
        )
    return handle


def make_side(handle: ModelHandle, sites: Any, cfg: CaptureConfig) -> Side:
    resolved = resolve_sites(handle, sites)
    ctx = context_length(handle.sitemap.root, handle.tokenizer)
    if cfg.max_length is not None and ctx is not None and cfg.max_length > ctx:
        raise ValueError(
            f"max_length={cfg.max_length} exceeds the {ctx}-token context of {handle.name}"
        )
    side = Side(
        handle=handle,
        sites=resolved,
        tok_hash=tokenizer_hash(handle.tokenizer),
        max_len=cfg.max_length or ctx,
        context=ctx,
    )
    side.row_shapes = {str(s): row_shape(handle, s) for s in resolved}
    return side
