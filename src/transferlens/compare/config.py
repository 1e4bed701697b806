"""The configuration of ``transferlens compare`` (one small dataclass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ANALYSES", "CompareConfig"]

ANALYSES = ("behaviour", "probe", "similarity", "patch", "lens", "weights")
BUILTIN_TASKS = ("language_id", "topic")


def _check_tasks(tasks: list[str]) -> None:
    """Every entry must be a task ``load_task`` resolves; names must be unique."""
    from ..data.tasks import builtin_task_names, load_task

    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a list of probe task names or task files, not {tasks!r}")
    names: dict[str, str] = {}
    for entry in tasks:
        entry = str(entry)
        if entry in BUILTIN_TASKS:
            name = entry
        else:
            try:
                task = load_task(entry)
            except ValueError as e:
                if not str(e).startswith("unknown probe task"):
                    raise
                valid = sorted(set(BUILTIN_TASKS) | set(builtin_task_names()))
                raise ValueError(
                    f"unknown probe task {entry!r}; valid: {', '.join(valid)}, "
                    "or the path of a task file (.yaml)"
                ) from None
            name = task.name
            if task.source in ("jsonl", "conllu") and task.path:
                data = task.data_path
                if not data.is_file():
                    raise FileNotFoundError(f"{task.file}: no such data file {data}")
        if name in names:
            raise ValueError(
                f"probe tasks {names[name]!r} and {entry!r} are both named {name!r}; "
                "give each task file its own name"
            )
        names[name] = entry


@dataclass
class CompareConfig:
    """What ``compare`` measures and on which data.

    Attributes:
        languages: corpus languages to analyse (default: all five).
        tasks: probe tasks: names of task files in ``probes/`` (``language_id``, ``topic``,
            ``word_initial``, ``position_bucket``, ...) or paths of task files (YAML).
            ``language_id`` and ``topic`` are probed on the paragraph sample; other tasks on
            their own examples (see :mod:`transferlens.compare.tasks`).
        analyses: subset of :data:`ANALYSES`; None = all that apply to the pair.
        split: corpus split (``test``: text the adapted model never saw).
        max_examples: paragraphs per language (for behaviour, capture and probes).
        max_length: tokens per paragraph (longer ones are truncated; recorded).
        batch_size: forward-pass batch size.
        seed: seeds every random choice (sampling, folds, bootstrap).
        n_boot: bootstrap resamples for every interval.
        ci_level: confidence level of every interval.
        patch_prompts: prompts for cross-model patching.
        lens_items: word-translation items for the latent-language analysis.
        device: torch device.
        dtype: model dtype (None keeps the checkpoint's).
        name_base: display name of the base model in figures.
        name_adapted: display name of the adapted model in figures.
    """

    languages: list[str] = field(default_factory=lambda: ["en", "sv", "da", "de", "fi"])
    tasks: list[str] = field(default_factory=lambda: ["language_id", "topic"])
    analyses: list[str] | None = None
    split: str = "test"
    max_examples: int = 200
    max_length: int = 64
    batch_size: int = 16
    seed: int = 0
    n_boot: int = 1000
    ci_level: float = 0.95
    patch_prompts: int = 24
    lens_items: int = 60
    device: str = "cpu"
    dtype: str | None = None
    name_base: str = "base"
    name_adapted: str = "adapted"

    def __post_init__(self) -> None:
        if self.analyses is not None:
            bad = [a for a in self.analyses if a not in ANALYSES]
            if bad:
                raise ValueError(f"unknown analysis {bad[0]!r}; valid: {', '.join(ANALYSES)}")
        _check_tasks(self.tasks)
        self.tasks = [str(t) for t in self.tasks]
        if self.max_examples < 8:
            raise ValueError("--max-examples must be at least 8 (intervals need examples)")
        if self.n_boot < 1:
            raise ValueError(
                f"--n-boot must be at least 1 (resamples per interval), not {self.n_boot}"
            )
        if self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, not {self.seed}")
        for name in ("max_length", "batch_size", "patch_prompts", "lens_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)}")
        from ..models.loading import resolve_device  # the device exists before anything runs

        resolve_device(self.device)
        if not 0.5 < self.ci_level < 1:
            raise ValueError("ci_level must be between 0.5 and 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def display_names(self) -> dict[str, str]:
        return {"base": self.name_base, "adapted": self.name_adapted}
