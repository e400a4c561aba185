"""ldm data emoji / emoji-sources: build the emoji training set (see ldm.data.emoji)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build datasets")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    e = kinds.add_parser("emoji", help="render the emoji in every design with their names (needs fonts-noto-color-emoji)")
    e.add_argument("--out", default="data/emoji")
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--font", default=None)
    e.add_argument("--emoji-test", default=None)
    e.add_argument("--sources", default=None, help="folder of `ldm data emoji-sources` (default: data/emoji-sources)")
    e.add_argument("--styles", default=None, help="comma-separated styles (default: every one available)")
    e.set_defaults(func=run_emoji)
    s = kinds.add_parser("emoji-sources", help="fetch the pinned emoji SVG designs and keywords (npm pack, checksums verified)")
    s.add_argument("--dest", default=None, help="default: data/emoji-sources")
    s.set_defaults(func=run_sources)


def _argv(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    argv: list[str] = []
    for flag, attr in flags.items():
        value = getattr(args, attr)
        if value is not None:
            argv += [flag, str(value)]
    return argv


def run_emoji(args: argparse.Namespace) -> int:
    from ldm.data.emoji import main

    return main(_argv(args, {"--out": "out", "--size": "size", "--limit": "limit", "--font": "font",
                             "--emoji-test": "emoji_test", "--sources": "sources", "--styles": "styles"}))


def run_sources(args: argparse.Namespace) -> int:
    from ldm.data.emoji import sources_main

    return sources_main(_argv(args, {"--dest": "dest"}))
