"""ldm upscale: a low-res image (+ optional prompt) -> a 4x larger PNG, tiled when big."""
from __future__ import annotations

import argparse

from ldm.errors import InvalidOptionError
from ldm.commands.common import add_model_args, add_sampling_args, load_model_from_args, log, sampling_options, save_images
from ldm.editing import as_pil
from ldm.pipeline import settings_dict
from ldm.upscale import UPSCALE_DEFAULTS, upscale


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="x4 super-resolution with the SD x4 upscaler (x4-upscaling.yaml)")
    p.add_argument("image", help="low-res input image")
    p.add_argument("prompt", nargs="?", default="", help="what the image shows (optional; guides invented detail)")
    p.add_argument("--noise-level", type=int, default=20,
                   help="noise added to the input (0-350): higher invents more detail, forgives artefacts (default 20)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile size in input px (default: the model's training size, 128 for SD); smaller saves memory")
    p.add_argument("--tile-overlap", type=int, default=None, help="overlap between tiles in input px (default: tile/4)")
    p.add_argument("--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images to make")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    add_sampling_args(p, steps=UPSCALE_DEFAULTS["steps"], scale=UPSCALE_DEFAULTS["guidance_scale"])
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = sampling_options(args)
    options.validate()
    if args.batch_size < 1:
        raise InvalidOptionError("--n-samples must be at least 1")
    image = as_pil(args.image).convert("RGB")
    model = load_model_from_args(args)
    images = upscale(model, image, [args.prompt] * args.batch_size, args.negative_prompt, args.noise_level, args.seed,
                     args.tile_size, args.tile_overlap, options, progress=not args.no_progress)
    tile = args.tile_size or model.image_size  # the defaults upscale() applies, written out for the record
    overlap = tile // 4 if args.tile_overlap is None else args.tile_overlap
    settings = [settings_dict(args.prompt, args.negative_prompt, args.seed + i, img.height, img.width, options,
                              task="upscale", noise_level=args.noise_level, init_image=str(args.image),
                              tile_size=tile, tile_overlap=overlap, tiled=max(image.size) > tile)
                for i, img in enumerate(images)]
    paths = save_images(images, settings, args.outdir, grid=not args.no_grid)
    log.info("wrote %d image(s) to %s", len(images), paths[0].parent)
    return 0
