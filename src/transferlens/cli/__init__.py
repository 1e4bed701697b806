"""The ``transferlens`` command line: ``main(argv=None)`` so tests drive it in-process.

Subcommands live in one module each and register themselves on :data:`app`.
User mistakes (missing files, bad options, bad data) print one line and exit with status 2;
set ``TRANSFERLENS_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import TransferlensError
from .app import app, console_err

__all__ = ["app", "main"]


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts) as typer raises them: typer >= 0.2x carries its own copy
    of click (``typer._click``); older versions raise click's own classes."""
    usage: list[type] = []
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    try:
        from typer._click.exceptions import ClickException

        usage.append(ClickException)
    except ImportError:  # pragma: no cover - older typer
        pass
    try:
        import click

        usage.append(click.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(usage), tuple(exits), tuple(aborts)


_USER_ERRORS = (
    TransferlensError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _register() -> None:
    from . import demo, info  # noqa: F401  (each module adds its commands to app)

    for mod in ("train", "capture", "compare", "report"):
        try:
            __import__(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 user error)."""
    _register()
    args = list(sys.argv[1:] if argv is None else argv)
    usage, exits, aborts = _click_classes()
    try:
        app(args=args, prog_name="transferlens", standalone_mode=False)
    except exits as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except aborts:
        console_err.print("aborted")
        return 130
    except usage as e:  # an unknown option, a missing argument, a value of the wrong type
        message = e.format_message().strip().rstrip(".")
        if message:  # (none when a group without its subcommand has printed its help)
            ctx = getattr(e, "ctx", None)
            hint = f"; see {ctx.command_path} --help" if ctx is not None else ""
            console_err.print(f"error: {message}{hint}", markup=False, highlight=False)
        return 2
    except _USER_ERRORS as e:
        if os.environ.get("TRANSFERLENS_DEBUG") == "1":
            raise
        console_err.print(f"error: {e}", markup=False, highlight=False)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
