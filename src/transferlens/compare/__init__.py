"""``transferlens compare``: the orchestrator that chains the stages into a report."""

from .config import ANALYSES, CompareConfig
from .run import applicable_analyses, compare

__all__ = ["ANALYSES", "CompareConfig", "applicable_analyses", "compare"]
