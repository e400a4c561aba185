"""ldm img2img: an input image + prompts -> numbered PNGs with their settings, and a grid."""
from __future__ import annotations

import argparse

from ldm.errors import InvalidOptionError
from ldm.commands.common import (add_model_args, add_sampling_args, load_model_from_args, log, read_prompts,
                                 sampling_options, save_images)
from ldm.editing import as_pil, check_strength
from ldm.img2img import img2img, prepare_image
from ldm.pipeline import settings_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("img2img", help="change an image following a prompt")
    p.add_argument("image", help="input image (any size; resized to a multiple of 8)")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--from-file", help="a file with one prompt per line")
    p.add_argument("--strength", type=float, default=0.75,
                   help="how much to change: 0 keeps the image, 1 ignores it (default 0.75)")
    p.add_argument("--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images per prompt per batch")
    p.add_argument("--n-iter", type=int, default=1, help="number of batches")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    add_sampling_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_strength(args.strength)
    prompts = read_prompts(args)
    options = sampling_options(args)
    options.validate()
    if args.batch_size < 1 or args.n_iter < 1:
        raise InvalidOptionError("--n-samples and --n-iter must be at least 1")
    source = as_pil(args.image)  # an unreadable file fails before the model loads
    model = load_model_from_args(args)
    image = prepare_image(model, source)
    images, settings = [], []
    seed = args.seed
    for _ in range(args.n_iter):
        for prompt in prompts:
            images += img2img(model, image, [prompt] * args.batch_size, args.strength, args.negative_prompt, seed,
                              options, progress=not args.no_progress)
            settings += [settings_dict(prompt, args.negative_prompt, seed + i, image.height, image.width, options,
                                       task="img2img", strength=args.strength, init_image=str(args.image))
                         for i in range(args.batch_size)]
            seed += args.batch_size
    paths = save_images(images, settings, args.outdir, grid=not args.no_grid)
    log.info("wrote %d image(s) to %s", len(images), paths[0].parent)
    return 0
