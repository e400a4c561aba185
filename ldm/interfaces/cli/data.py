"""ldm data emoji / emoji-sources / photos / shapes / shards: build the emoji training set (ldm.data.emoji), the
photo crops for the upscaler (ldm.data.photos), the tiny shapes set, WebDataset shards of a folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ldm.data.emoji import EMOJI_LIST_PACKAGE, FONT_PACKAGE
    from ldm.data.emoji_sources import DEFAULT_SOURCES_DIR, HELD_OUT_SOURCES, SOURCES
    from ldm.data.photo_sources import DEFAULT_SOURCES_DIR as PHOTO_SOURCES_DIR
    from ldm.data.photos import DEFAULT_OUT as PHOTOS_OUT
    from ldm.data.photos import TRAIN_CROPS

    p = sub.add_parser("data", help="build datasets")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    e = kinds.add_parser(
        "emoji", help="render the emoji in every design with their names (needs fonts-noto-color-emoji)"
    )
    e.add_argument("--out", default="data/emoji", help="output folder (default: data/emoji)")
    e.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    e.add_argument(
        "--limit", type=int, default=None, help="only this many emoji, spread over the list (for quick tests)"
    )
    e.add_argument("--font", default=None, help=f"path to NotoColorEmoji.ttf (default: the {FONT_PACKAGE} location)")
    e.add_argument(
        "--emoji-test", default=None, help=f"path to emoji-test.txt (default: the {EMOJI_LIST_PACKAGE} location)"
    )
    e.add_argument(
        "--sources",
        default=str(DEFAULT_SOURCES_DIR),
        help=f"folder of the SVG designs from `ldm data emoji-sources` (default: {DEFAULT_SOURCES_DIR}); "
        "without it only the Noto font is rendered",
    )
    e.add_argument(
        "--styles",
        default=None,
        help="comma-separated styles to render (default: every one available of "
        f"{', '.join(['noto', *(s.style for s in SOURCES)])}); held out of the default, rendered only "
        f"when named: {', '.join(s.style for s in HELD_OUT_SOURCES)}",
    )
    e.set_defaults(func=run_emoji)
    s = kinds.add_parser(
        "emoji-sources", help="fetch the pinned emoji SVG designs and keywords (npm pack, checksums verified)"
    )
    s.add_argument("--dest", default=str(DEFAULT_SOURCES_DIR), help=f"default: {DEFAULT_SOURCES_DIR}")
    s.set_defaults(func=run_sources)
    f = kinds.add_parser(
        "photos",
        help="crops of freely licensed photos from pinned Debian packages, for the x4 upscaler "
        "(apt-get download + dpkg-deb, sha256-checked; licences checked per image)",
    )
    f.add_argument("--out", default=PHOTOS_OUT, help=f"output folder (default: {PHOTOS_OUT})")
    f.add_argument(
        "--sources",
        default=PHOTO_SOURCES_DIR,
        help=f"cache of the downloaded and unpacked packages (default: {PHOTO_SOURCES_DIR})",
    )
    f.add_argument("--size", type=int, default=128, help="training crop side in pixels (default: 128)")
    f.add_argument("--eval-size", type=int, default=256, help="held-out crop side in pixels (default: 256)")
    f.add_argument(
        "--per-image",
        type=int,
        default=None,
        help=f"training crops per photo (default: about {TRAIN_CROPS} crops in all)",
    )
    f.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the crops' scales and places (default: 0); the held-out photos do not depend on it",
    )
    f.set_defaults(func=run_photos)
    t = kinds.add_parser("shapes", help='a tiny synthetic captioned set ("red square", ...) for the tiny configs')
    t.add_argument("root", help="output folder")
    t.add_argument("--size", type=int, default=16)
    t.add_argument("--count", type=int, default=48)
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that already holds files (its captions.jsonl and images are replaced)",
    )
    t.set_defaults(func=run_shapes)

    w = kinds.add_parser(
        "shards", help="a captioned folder as WebDataset tar shards (img2dataset's layout), for data.shards"
    )
    w.add_argument("root", help="captioned image folder (captions.jsonl/csv, metadata.jsonl, or .txt sidecars)")
    w.add_argument("out", help="output folder for 00000.tar, 00001.tar, ...")
    w.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    w.add_argument(
        "--controls",
        default=None,
        help="a folder with a control image under each image's relative path: written as KEY.control.png, a "
        "ControlNet's training triples (controlnet.control_key=control.png)",
    )
    w.set_defaults(func=run_shards)


def run_emoji(args: argparse.Namespace) -> int:
    from ldm.data.emoji import build_emoji_dataset, summary_line

    styles = [s.strip() for s in args.styles.split(",")] if args.styles else None
    summary = build_emoji_dataset(
        args.out,
        size=args.size,
        limit=args.limit,
        font_path=args.font,
        emoji_test_path=args.emoji_test,
        sources_dir=args.sources,
        styles=styles,
    )
    print(summary_line(summary, args.out))
    return 0


def run_sources(args: argparse.Namespace) -> int:
    from ldm.data.emoji_sources import fetch_sources

    folders = fetch_sources(args.dest)
    print(f"{len(folders)} packages verified in {args.dest}: " + ", ".join(f.name for f in folders))
    return 0


def run_photos(args: argparse.Namespace) -> int:
    from ldm.data.photos import build_photo_dataset, summary_line

    summary = build_photo_dataset(
        args.out,
        sources_dir=args.sources,
        size=args.size,
        eval_size=args.eval_size,
        per_image=args.per_image,
        seed=args.seed,
    )
    print(summary_line(summary, args.out))
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    from ldm.training.shapes import make_shapes_dataset

    make_shapes_dataset(args.root, args.size, args.count, overwrite=args.overwrite)
    print(f"wrote {args.count} images to {args.root}")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from ldm.data.shards import write_shards

    pattern = write_shards(args.root, args.out, args.per_shard, control_root=args.controls)
    print(f"wrote {pattern} (train with data.root=null data.shards={pattern})")
    return 0
