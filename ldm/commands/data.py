"""ldm data emoji: build the emoji training set (see ldm.data.emoji)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build datasets")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    e = kinds.add_parser("emoji", help="render Noto Color Emoji with their names (needs fonts-noto-color-emoji)")
    e.add_argument("--out", default="data/emoji")
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--font", default=None)
    e.add_argument("--emoji-test", default=None)
    e.set_defaults(func=run_emoji)


def run_emoji(args: argparse.Namespace) -> int:
    from ldm.data.emoji import main

    argv = ["--out", args.out, "--size", str(args.size)]
    for flag, value in (("--limit", args.limit), ("--font", args.font), ("--emoji-test", args.emoji_test)):
        if value is not None:
            argv += [flag, str(value)]
    return main(argv)
