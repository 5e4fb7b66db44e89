"""Write docs/cli.md from the `mice` command itself, so the reference cannot drift from the code.

`python docs/scripts/cli_reference.py` (what `make docs` runs) rewrites the page; `--check` exits 1 when the
committed page differs from what the commands say now (the test suite runs that).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

PAGE = Path(__file__).resolve().parents[1] / "cli.md"
HEADER = """# Command-line reference

Generated from the `mice` commands by `docs/scripts/cli_reference.py` (`make docs`); `mice COMMAND --help` prints
the same text. Path convention: `a->b` = tokens of group `a` attend to tokens of group `b`.
"""


def _walk(cmd, path: tuple[str, ...]):
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], (*path, name))


def _is_option(p) -> bool:
    return getattr(p, "param_type_name", "") == "option"


def _param_row(p) -> str:
    if not _is_option(p):
        name = f"`{p.name.upper()}`"
    else:
        name = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
    default = ""
    if _is_option(p) and not p.required and p.default not in (None, "", ()) and not p.is_flag:
        default = f"`{p.default}`"
    elif _is_option(p) and p.is_flag and p.default not in (None, False):
        default = "on"
    text = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")
    required = " (required)" if p.required else ""
    return f"| {name} | {text}{required} | {default} |"


def render() -> str:
    from mice.cli import app

    root = typer.main.get_command(app)
    out = [HEADER]
    for path, cmd in _walk(root, ("mice",)):
        if cmd.hidden:
            continue
        out += [f"## `{' '.join(path)}`", ""]
        if cmd.help:
            out += [cmd.help.strip().split("\b")[0].strip().replace("<", "&lt;"), ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            out += ["| parameter | what it does | default |", "|---|---|---|", *map(_param_row, params), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run `python docs/scripts/cli_reference.py`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
