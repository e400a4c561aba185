"""ldm upscale: a low-res image (+ optional prompt) -> a 4x larger PNG, tiled when big."""

from __future__ import annotations

import argparse
from typing import Any

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.interfaces.cli.common import (
    ImageWriter,
    add_model_args,
    add_sampling_args,
    apply_model_sampling,
    chunk_size,
    load_model_from_args,
    log,
    prompt_options_of,
    sampling_options,
)
from ldm.tasks.editing import as_pil
from ldm.tasks.upscale import upscale


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="x4 super-resolution with the SD x4 upscaler (x4-upscaling.yaml)")
    p.add_argument("image", help="low-res input image")
    p.add_argument("prompt", nargs="?", default="", help="what the image shows (optional; guides invented detail)")
    p.add_argument(
        "--noise-level",
        type=int,
        default=defaults.NOISE_LEVEL,
        help="noise added to the input (0-350): higher invents more detail, forgives artefacts",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile size in input px (default: the model's training size, 128 for SD); smaller saves memory",
    )
    p.add_argument("--tile-overlap", type=int, default=None, help="overlap between tiles in input px (default: tile/4)")
    p.add_argument(
        "--back-projection",
        type=int,
        default=None,
        metavar="N",
        help="iterations of back-projection, so that the result shrunk x4 gives the input back (default: the "
        "model's own: 10 for the shipped upscaler, 0 for SD's)",
    )
    p.add_argument("--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images to make")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    add_sampling_args(p, "upscale")
    add_model_args(p)
    p.set_defaults(func=run)


def check_upscale_memory(model: Any, args: argparse.Namespace, image: Any) -> None:
    """Tiles bound the sampling memory, but the blended output is held whole (with its blend weights)."""
    from ldm.core.errors import ResourceLimitError
    from ldm.core.limits import GIB, memory_limit

    tile = args.tile_size or model.image_size
    f = model.downscale
    tile_px = min(tile, max(image.size)) * f
    chunk_size(model, args, tile_px, tile_px, 1)  # refuses a tile too big for the limit
    per_image = 4 * 3 * 3 * (image.width * f) * (image.height * f)  # fp32 RGB: the sum, its weights, the result
    limit = memory_limit(model.device, args.max_memory)
    if per_image * args.batch_size > limit:
        raise ResourceLimitError(
            f"a {image.width * f}x{image.height * f} result needs about "
            f"{per_image * args.batch_size / GIB:.1f} GiB, over the limit of {limit / GIB:.1f} GiB; "
            "upscale a smaller image or raise --max-memory (GiB)"
        )


def run(args: argparse.Namespace) -> int:
    options = sampling_options(args)
    options.validate()
    if args.batch_size < 1:
        raise InvalidOptionError("--n-samples must be at least 1")
    image = as_pil(args.image).convert("RGB")
    writer = ImageWriter(args.outdir, grid=not args.no_grid)
    model = load_model_from_args(args, task="upscale")  # without --ckpt: the shipped upscaler, where there is one
    if apply_model_sampling(args, model.sampling_defaults):
        options = sampling_options(args)  # the model's own steps, guidance and eta where the user gave none
        options.validate()
    check_upscale_memory(model, args, image)
    images = upscale(
        model,
        image,
        [args.prompt] * args.batch_size,
        args.negative_prompt,
        args.noise_level,
        args.seed,
        args.tile_size,
        args.tile_overlap,
        options,
        progress=not args.no_progress,
        back_projection=args.back_projection,
        prompt_options=prompt_options_of(args),
        precision=args.precision,
    )
    for i, img in enumerate(images):  # the call's settings (the tiling it chose, as it ran), and the file it never saw
        writer.write(img, {**images.settings.image(i), "init_image": str(args.image)})
    paths = writer.finish()
    log.info("wrote %d image(s) to %s", len(images), paths[0].parent)
    return 0
