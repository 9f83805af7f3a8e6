"""The ``bitswitch`` command line.

Each sub-command lives in its own module under :mod:`bitswitch.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments; returns an exit code). New commands need no change here.

User mistakes never end in a traceback: a bad argument, a bad input file or a busy run folder is one
line on stderr and exit code 2 (``--debug`` shows the traceback instead); Ctrl-C is one line and exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, commands
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``prog: error: ...``), not the usage block too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bitswitch",
        description="Bit-switchable and mixed-precision neural networks: train once, store integers, switch precision at run time.",
    )
    parser.add_argument("--version", action="version", version=f"bitswitch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # torch.onnx's graph passes log each step at INFO: noise around export's own report
        logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError) as e:  # bad input, files or folders: one clear line
        if args.debug:
            raise
        print(f"bitswitch {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's exit code for SIGINT (train says what it saved)
        if args.debug:
            raise
        print(f"bitswitch {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything else is a bitswitch bug or an unforeseen input: still one line
        if args.debug:
            raise
        print(f"bitswitch {args.command}: error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
