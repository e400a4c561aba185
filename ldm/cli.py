"""The `ldm` command: one subcommand per task, each defined in ldm/commands/<name>.py."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ldm.errors import LdmError

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = [
    "ldm.commands.data",
    "ldm.commands.train",
    "ldm.commands.clip",
    "ldm.commands.txt2img",
    "ldm.commands.img2img",
    "ldm.commands.inpaint",
    "ldm.commands.upscale",
    "ldm.commands.walk",
    "ldm.commands.app",
    "ldm.commands.evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldm", description="Latent diffusion: generate, edit, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.func(args) or 0
    except LdmError as exc:
        # The project's errors (ldm.errors) carry one-line messages: say it and exit non-zero. Anything
        # else is a bug and keeps its traceback; --verbose shows the traceback of these too.
        if args.verbose:
            logging.getLogger("ldm").exception("traceback (--verbose)")
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ldm {args.command}: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        # What was made so far is already on disk (each image is written as soon as it is decoded).
        print(f"ldm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
