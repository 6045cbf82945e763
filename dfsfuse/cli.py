"""The ``dfsfuse`` command line: one subcommand per module in :mod:`dfsfuse.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a function taking the parsed arguments and returning an exit code. To add a
subcommand, copy one of :mod:`dfsfuse.commands` and list it in ``COMMAND_MODULES``.

``dfsfuse --help`` (and every ``dfsfuse CMD --help``) builds all parsers, so it must not import
torch, numpy or the models: a command module imports only the standard library at the top,
heavy modules inside its ``run`` function, and takes choices/defaults for its options from
the torch-free :mod:`dfsfuse.options`. ``tests/test_cli_help.py`` checks this;
``benchmarks/cli_help.py`` times it (goal < 0.5 s).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .data.errors import DatasetError

# Order here is the order in ``dfsfuse --help``.
COMMAND_MODULES = (
    "dfsfuse.commands.fuse",
    "dfsfuse.commands.eval",
    "dfsfuse.commands.baseline",
    "dfsfuse.commands.bench",
    "dfsfuse.commands.segbench",
    "dfsfuse.commands.export",
)


class _VersionAction(argparse.Action):
    """``--version``: print the installed version (looked up only when asked) and exit."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        from . import __version__

        print(f"dfsfuse {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dfsfuse",
        description="Infrared/visible image fusion: distilled students, standard metrics, benchmarks.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not written yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``dfsfuse`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"dfsfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
