"""The `ldm` command: one subcommand per task, each defined in ldm/commands/<name>.py."""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from ldm.errors import LdmError, one_line

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = [
    "ldm.commands.data",
    "ldm.commands.train",
    "ldm.commands.distill",
    "ldm.commands.clip",
    "ldm.commands.txt2img",
    "ldm.commands.img2img",
    "ldm.commands.inpaint",
    "ldm.commands.upscale",
    "ldm.commands.walk",
    "ldm.commands.app",
    "ldm.commands.evaluate",
    "ldm.commands.convert",
]


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so it unwinds as Ctrl-C does: the image being written is
    removed with its temporary file, the finished ones stay, and the exit status says so (143)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldm", description="Latent diffusion: generate, edit, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's --help prints its defaults (ldm.commands.common.DefaultsHelpFormatter)."""
    from ldm.commands.common import DefaultsHelpFormatter

    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    # Training stops at the end of a step, through Lightning's own SIGTERM handler, which would call this one too.
    # Restored on return: main() called in-process (tests, scripts) must not leave it behind for a later train.
    previous = None
    if args.command not in ("train", "distill") and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args) or 0
    except LdmError as exc:
        # The project's errors (ldm.errors) carry one-line messages: say it and exit non-zero. Anything
        # else is a bug and keeps its traceback; --verbose shows the traceback of these too.
        if args.verbose:
            logging.getLogger("ldm").exception("traceback (--verbose)")
        print(f"ldm {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        # What was made so far is already on disk (each image is written as soon as it is decoded).
        print(f"ldm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"ldm {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
