"""The `mice` command. Each module in this package adds its own sub-commands through `register(app)`,
so a new command is a new file here and nobody edits a central list."""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys

import typer

from mice.errors import MiceError

app = typer.Typer(
    name="mice",
    help="Open up cross-encoder re-rankers and slim them down (probes, knockouts, masks, MICE). "
    "Long jobs (index build, rerank, ablate sweep|attribute|presets) run on N processes with "
    "`mice --nproc N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] <command> …`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _quiet_hf() -> None:
    """Keep command output machine-readable: HF load reports and progress bars off unless asked for."""
    quiet_hf()


def quiet_hf() -> None:
    from mice.models.hf import quiet_hf as _quiet

    _quiet()


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "register"):
        _module.register(app)


def _checked(callback):
    """Wrap a command so every numeric option is checked against `mice.validate.RANGES` before it runs."""
    if getattr(callback, "_mice_checked", False):
        return callback

    import inspect

    flags = {}
    for name, param in inspect.signature(callback).parameters.items():
        decls = [d for d in (getattr(param.default, "param_decls", None) or ()) if d.startswith("--")]
        if decls:
            flags[name] = decls[0]

    @functools.wraps(callback)
    def run(*args, **kwargs):
        from mice.validate import check_settings

        check_settings(kwargs, flags)
        return callback(*args, **kwargs)

    run._mice_checked = True
    return run


def iter_commands(typer_app=None, prefix=()):
    """(command path, CommandInfo) for every command of the CLI, sub-apps and their own callbacks included."""
    typer_app = typer_app or app
    if prefix and typer_app.registered_callback is not None and typer_app.registered_callback.callback:
        yield prefix, typer_app.registered_callback
    for info in typer_app.registered_commands:
        yield (*prefix, info.name or info.callback.__name__), info
    for group in typer_app.registered_groups:
        yield from iter_commands(group.typer_instance, (*prefix, group.name))


for _path, _cmd in iter_commands():
    _cmd.callback = _checked(_cmd.callback)


def main() -> None:
    """Console entry point: typed errors become one clear line on stderr and exit code 2.

    `mice --nproc N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] <command> …` runs the command in N
    processes per node (`mice.distributed.launch`, torch.distributed's elastic launcher)."""
    from mice.distributed import LAUNCH_FLAGS, LaunchFailed, launch, split_launch_args

    try:
        if len(sys.argv) > 1 and sys.argv[1].split("=", 1)[0] in LAUNCH_FLAGS:
            opts, command = split_launch_args(sys.argv[1:])
            try:
                sys.exit(launch(opts, command))
            except LaunchFailed as err:
                typer.echo(f"error: {err}", err=True)
                sys.exit(err.code)
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
    except OSError as err:  # full disk, read-only output, permissions, a folder where a file goes: one line
        from mice.files import os_error_line

        typer.echo(f"error: {os_error_line(err)}", err=True)
        sys.exit(2)
    except Exception as err:  # usage errors (click's, or typer's vendored click): one line, exit 2
        if any(c.__name__ in ("ClickException", "UsageError") for c in type(err).__mro__):
            message = err.format_message() if hasattr(err, "format_message") else str(err)
            typer.echo(f"error: {' '.join(str(message).split())}", err=True)
            sys.exit(2)
        raise
