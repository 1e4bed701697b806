"""transferlens: what did adaptation change inside a language model, and where?"""

from .models import ModelHandle, load_model, save_checkpoint
from .results import AnalysisResult, load_results, save_results

__version__ = "0.1.0"

__all__ = [
    "AnalysisResult",
    "ModelHandle",
    "__version__",
    "load_model",
    "load_results",
    "save_checkpoint",
    "save_results",
]
