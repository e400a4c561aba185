"""The `ldm` command: one subcommand per task, each defined in ldm/interfaces/cli/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from ldm.core.errors import LdmError, one_line

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = [
    "ldm.interfaces.cli.data",
    "ldm.interfaces.cli.train",
    "ldm.interfaces.cli.distill",
    "ldm.interfaces.cli.clip",
    "ldm.interfaces.cli.txt2img",
    "ldm.interfaces.cli.img2img",
    "ldm.interfaces.cli.inpaint",
    "ldm.interfaces.cli.upscale",
    "ldm.interfaces.cli.walk",
    "ldm.interfaces.cli.app",
    "ldm.interfaces.cli.evaluate",
    "ldm.interfaces.cli.convert",
    "ldm.interfaces.cli.verify",
    "ldm.interfaces.cli.serve",
    "ldm.interfaces.cli.control_image",
]
# The subcommands each module registers (tests/interfaces/test_fast_start.py checks this against the modules): a
# command line naming one imports and registers that module alone, since importing all of them is a tenth of a second
# of start-up.
COMMANDS = {
    "data": "ldm.interfaces.cli.data",
    "train": "ldm.interfaces.cli.train",
    "distill": "ldm.interfaces.cli.distill",
    "clip": "ldm.interfaces.cli.clip",
    "txt2img": "ldm.interfaces.cli.txt2img",
    "img2img": "ldm.interfaces.cli.img2img",
    "inpaint": "ldm.interfaces.cli.inpaint",
    "outpaint": "ldm.interfaces.cli.inpaint",
    "upscale": "ldm.interfaces.cli.upscale",
    "walk": "ldm.interfaces.cli.walk",
    "app": "ldm.interfaces.cli.app",
    "eval": "ldm.interfaces.cli.evaluate",
    "convert": "ldm.interfaces.cli.convert",
    "verify": "ldm.interfaces.cli.verify",
    "serve": "ldm.interfaces.cli.serve",
    "control-image": "ldm.interfaces.cli.control_image",
}
TOP_LEVEL_FLAGS = {"-v", "--verbose", "--version"}  # the only options before COMMAND that leave the choice to it


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so it unwinds as Ctrl-C does: the image being written is
    removed with its temporary file, the finished ones stay, and the exit status says so (143)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def command_module(argv: list[str]) -> str | None:
    """The module of the subcommand `argv` names, or None where the parser needs every command: `ldm`, `ldm --help`,
    an unknown command (whose error lists them), or anything else before the command."""
    for i, arg in enumerate(argv):
        if arg not in TOP_LEVEL_FLAGS:
            return COMMANDS.get(arg) if all(a in TOP_LEVEL_FLAGS for a in argv[:i]) else None
    return None


def version() -> str:
    """The installed distribution's version, else the package's own (a checkout on PYTHONPATH)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("ldm")
    except PackageNotFoundError:
        import ldm

        return ldm.__version__


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `ldm` parser with every subcommand, or given a command line that names one, with that one's module alone
    (same parser for that line: each module registers its commands independently of the others)."""
    parser = argparse.ArgumentParser(prog="ldm", description="Latent diffusion: generate, edit, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"ldm {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    only = command_module(argv) if argv is not None else None
    for name in [only] if only else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's --help prints its defaults (ldm.interfaces.cli.common.DefaultsHelpFormatter)."""
    from ldm.interfaces.cli.common import DefaultsHelpFormatter

    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def use_huge_pages() -> None:
    """Let PyTorch back CPU tensors of 2 MiB and more with transparent huge pages (its THP_MEM_ALLOC_ENABLE), unless
    the user set the variable: each fresh tensor then takes one page fault per 2 MiB instead of one per 4 KiB. The
    strict load fills ~110 MB of new fp32 parameters (measured ~20 ms less CPU; README, Start-up) and sampling
    allocates its activations afresh at every step. Only where torch is not imported yet: PyTorch reads the
    variable once, at its first allocation."""
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    use_huge_pages()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
        # The project's errors (ldm.core.errors) carry one-line messages: say it and exit non-zero. Anything
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
