"""ldm control-image: an image -> the control image a ControlNet takes (canny / lineart / scribble edge maps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ldm.interfaces.cli.common import log
from ldm.io.control_images import CANNY_HIGH, CANNY_LOW, PREPROCESSORS, control_image
from ldm.io.images import OutputError, check_new_outputs, check_writable, load_image, save_png


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("control-image", help="make a ControlNet's control image (an edge map) from an image")
    p.add_argument("image", help="the image to take the edges of (transparency counts as white)")
    p.add_argument(
        "--type",
        choices=PREPROCESSORS,
        default="canny",
        help="canny: thin edges (cv2.Canny's); lineart: every line, unthinned; scribble: thick strokes of the "
        "main shapes (no depth: it would need a downloaded estimator)",
    )
    p.add_argument("--low", type=float, default=CANNY_LOW, help="edge threshold: weaker gradients are no edge")
    p.add_argument(
        "--high", type=float, default=CANNY_HIGH, help="canny/scribble: gradients above it always start an edge"
    )
    p.add_argument("--out", required=True, help="the control image to write (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out must end in .png, got {out.name!r}")
    check_new_outputs(out, overwrite=args.overwrite)
    check_writable(out.parent)
    image = load_image(args.image)
    control = control_image(image, args.type, args.low, args.high)
    save_png(control, out)
    log.info("wrote %s (%s edges of %s)", out, args.type, args.image)
    return 0
