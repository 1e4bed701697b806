"""The Typer application and consoles shared by the subcommand modules."""

from __future__ import annotations

import typer
from rich.console import Console

__all__ = ["app", "console", "console_err"]

app = typer.Typer(
    name="transferlens",
    help="What did adaptation change inside a language model, and where?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
console_err = Console(stderr=True, soft_wrap=True)
