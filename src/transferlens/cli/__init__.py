"""The ``transferlens`` command line: ``main(argv=None)`` so tests drive it in-process.

Subcommands live in one module each and register themselves on :data:`app`.
User mistakes (missing files, bad options, bad data) print one line and exit with status 2;
set ``TRANSFERLENS_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from ..errors import TransferlensError
from .app import app, console_err

__all__ = ["app", "main"]

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
    try:
        app(args=args, prog_name="transferlens", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except click.exceptions.Abort:
        console_err.print("aborted")
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except _USER_ERRORS as e:
        if os.environ.get("TRANSFERLENS_DEBUG") == "1":
            raise
        console_err.print(f"error: {e}", markup=False, highlight=False)
        return 2
    except typer.Exit as e:
        return int(e.exit_code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
