"""Figure styles for papers and slides: sizes, fonts, a colourblind-safe palette.

Widths follow common two-column venues (ACL/NeurIPS-like): a single column is 3.35 in, a
full text width 6.9 in. Fonts are embedded as TrueType in PDFs (``pdf.fonttype = 42``) so
the figures pass venue checks and stay editable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["MODEL_COLORS", "PALETTE", "STYLES", "Style", "get_style", "use_style"]

# Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MODEL_COLORS = {"base": "#0072B2", "adapted": "#D55E00", "control": "#7f7f7f"}
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


@dataclass(frozen=True)
class Style:
    """A named set of sizes.

    Attributes:
        name: ``paper`` or ``slides``.
        single: width of a single-column figure (inches).
        double: width of a full-width figure (inches).
        font: base font size (points).
        aspect: default height / width.
        dpi: resolution of PNG output.
    """

    name: str
    single: float
    double: float
    font: float
    aspect: float = 0.68
    dpi: int = 200

    def size(self, wide: bool = False, aspect: float | None = None) -> tuple[float, float]:
        w = self.double if wide else self.single
        return (w, w * (aspect if aspect is not None else self.aspect))

    def rc(self) -> dict:
        return {
            "font.size": self.font,
            "axes.titlesize": self.font,
            "axes.labelsize": self.font,
            "xtick.labelsize": self.font - 1,
            "ytick.labelsize": self.font - 1,
            "legend.fontsize": self.font - 1,
            "legend.frameon": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": __import__("cycler").cycler(color=list(PALETTE)),
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.fonttype": "none",
            "figure.dpi": 100,
            "savefig.dpi": self.dpi,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
            "lines.linewidth": 1.2,
            "lines.markersize": 3.0,
            "errorbar.capsize": 1.5,
            "image.cmap": "viridis",
        }


STYLES = {
    "paper": Style("paper", single=3.35, double=6.9, font=8.0),
    "slides": Style("slides", single=5.0, double=10.0, font=14.0, aspect=0.6, dpi=150),
}


def get_style(name: str | Style = "paper") -> Style:
    """The style called ``name`` (``paper`` or ``slides``)."""
    if isinstance(name, Style):
        return name
    if name not in STYLES:
        raise ValueError(f"unknown style {name!r}; use one of {', '.join(STYLES)}")
    return STYLES[name]


@contextmanager
def use_style(style: Style) -> Iterator[None]:
    """Apply a style's rcParams inside the block only."""
    import matplotlib as mpl

    with mpl.rc_context(style.rc()):
        yield
