"""ldm control-image: an image -> the control image a ControlNet takes (canny / lineart / scribble edge maps, the
tile ControlNet's blurred image, the inpaint ControlNet's image with its hole)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ldm.core.errors import InvalidOptionError
from ldm.interfaces.cli.common import log
from ldm.io.control_images import (
    CANNY_HIGH,
    CANNY_LOW,
    CONTROL_TYPES,
    INPAINT_MARK,
    TILE_FACTOR,
    check_tile_factor,
    control_image,
)
from ldm.io.images import OutputError, check_new_outputs, check_writable, load_image, save_png
from ldm.tasks.inpaint import as_mask


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("control-image", help="make a ControlNet's control image (edges, tile, inpaint) from an image")
    p.add_argument("image", help="the image to make it of (transparency counts as white)")
    p.add_argument(
        "--type",
        choices=CONTROL_TYPES,
        default="canny",
        help="canny: thin edges (cv2.Canny's); lineart: every line, unthinned; scribble: thick strokes of the "
        "main shapes; tile: the image blurred (down by --factor, up again); inpaint: the image with --mask's "
        "white pixels to repaint (written transparent; they reach the ControlNet as -1). No depth: it would need "
        "a downloaded estimator",
    )
    p.add_argument("--low", type=float, default=CANNY_LOW, help="edge threshold: weaker gradients are no edge")
    p.add_argument(
        "--high", type=float, default=CANNY_HIGH, help="canny/scribble: gradients above it always start an edge"
    )
    p.add_argument(
        "--factor",
        type=float,
        default=TILE_FACTOR,
        help="tile: how far the image is taken down before it is brought back up (default 8, as ControlNet 1.1's)",
    )
    p.add_argument("--mask", help="inpaint: the mask, at the image's size, white = repaint (L, RGB or RGBA alpha)")
    p.add_argument("--out", required=True, help="the control image to write (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out must end in .png, got {out.name!r}")
    if (args.type == "inpaint") != (args.mask is not None):
        raise InvalidOptionError("--mask goes with --type inpaint, which needs it (white = repaint)")
    check_tile_factor(args.factor)
    check_new_outputs(out, overwrite=args.overwrite)
    check_writable(out.parent)
    image = load_image(args.image)
    mask = as_mask(args.mask) if args.mask else None
    control = control_image(image, args.type, args.low, args.high, mask=mask, factor=args.factor)
    save_png(control, out, INPAINT_MARK if args.type == "inpaint" else None)
    log.info("wrote %s (%s control image of %s)", out, args.type, args.image)
    return 0
