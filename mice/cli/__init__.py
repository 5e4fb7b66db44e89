"""The `mice` command. Each module in this package adds its own sub-commands through `register(app)`,
so a new command is a new file here and nobody edits a central list."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from ..errors import MiceError

app = typer.Typer(
    name="mice",
    help="Open up cross-encoder re-rankers and slim them down (probes, knockouts, masks, MICE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



@app.callback()
def _quiet_hf() -> None:
    """Keep command output machine-readable: HF load reports and progress bars off unless asked for."""
    quiet_hf()


def quiet_hf() -> None:
    from ..hf import quiet_hf as _quiet

    _quiet()


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:
    """Console entry point: typed errors become one clear line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except MiceError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as err:  # normal exits
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
