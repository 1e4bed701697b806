"""A rich progress bar (steps, loss, tokens/s) that stays quiet when not on a terminal."""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """A rich progress bar (steps, loss, tokens/s) that is silent when not on a terminal."""

    def __init__(self, enabled: bool, total: int, done: int, label: str):
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.bar.add_task(label, total=total, completed=done, loss="-", tps="-")
        self.bar.start()

    def update(self, step: int, loss: float, tps: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.3f}", tps=f"{tps:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
