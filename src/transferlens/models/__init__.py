"""Model loading, the checkpoint format, and named sites."""

from .checkpoint import read_checkpoint, save_checkpoint
from .handle import ModelHandle, fingerprint
from .hooks import count_hooks, site_hooks
from .loading import load_model, resolve_dtype
from .sitemap import SiteMap
from .sites import COMPONENTS, FAMILIES, Site, family_for, parse_site
from .tiny import tiny_model

__all__ = [
    "COMPONENTS",
    "FAMILIES",
    "ModelHandle",
    "Site",
    "SiteMap",
    "count_hooks",
    "family_for",
    "fingerprint",
    "load_model",
    "parse_site",
    "read_checkpoint",
    "resolve_dtype",
    "save_checkpoint",
    "site_hooks",
    "tiny_model",
]
