"""The `ldm` command: one subcommand per task, each defined in ldm/commands/<name>.py."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = [
    "ldm.commands.data",
    "ldm.commands.train",
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
    except (ValueError, OSError, KeyError) as exc:
        # Our errors are ValueError subclasses with one-line messages; say it and exit non-zero.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ldm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
