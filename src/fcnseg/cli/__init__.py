"""The ``fcnseg`` command: one sub-command per task."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from fcnseg import __version__
from fcnseg.logs import log_to_stderr

COMMANDS = ("convert", "train", "evaluate", "demo", "info", "predict", "serve", "export", "weights", "data")
"""Sub-command modules of this package; each has ``add_parser(subparsers)`` setting ``run``."""


def shown_default(value: Any, nargs: Any = None) -> str:
    """A default as one would type it: ``0.5``, ``64 128`` (several arguments), ``4,8,16`` (one list)."""
    if isinstance(value, tuple | list):
        return (" " if nargs else ",").join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, unless it has none or the help already speaks of it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is None
            or action.default is False  # a switch, off unless given
            or action.default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: {shown_default(action.default, action.nargs)})".replace("%", "%%").lstrip()


class _Parser(argparse.ArgumentParser):
    """A parser whose help shows defaults; sub-command parsers are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation.")
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fcnseg.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sub-command ``argv`` names, showing fcnseg's messages on stderr: status lines (but on
    torchrun's processes after the first, as rank 0 speaks for all), warnings and errors always;
    ``--quiet`` only hides the progress bars."""
    args = build_parser().parse_args(argv)
    log_to_stderr(quiet=os.environ.get("RANK", "0") != "0")
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as error:
        print(f"fcnseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fcnseg {args.command}: interrupted", file=sys.stderr)
        return 130
