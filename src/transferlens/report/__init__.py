"""Paper figures and report folders rendered from results."""

from .render import FIGURES, check_report_dir, render_report
from .style import STYLES, get_style

__all__ = ["FIGURES", "STYLES", "check_report_dir", "get_style", "render_report"]
