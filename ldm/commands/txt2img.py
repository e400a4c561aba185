"""ldm txt2img: prompts -> numbered PNGs with their settings, and a grid."""
from __future__ import annotations

import argparse

from ldm.errors import InvalidOptionError
from ldm.commands.common import (add_model_args, add_sampling_args, load_model_from_args, log, read_prompts,
                                 sampling_options, save_images)
from ldm.pipeline import settings_dict, txt2img


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("txt2img", help="generate images from text")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--from-file", help="a file with one prompt per line")
    p.add_argument("--height", "--H", type=int, default=None, help="image height in px (default: the model's size)")
    p.add_argument("--width", "--W", type=int, default=None, help="image width in px (default: the model's size)")
    p.add_argument("--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images per prompt per batch")
    p.add_argument("--n-iter", type=int, default=1, help="number of batches")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    add_sampling_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    options = sampling_options(args)
    options.validate()
    if args.batch_size < 1 or args.n_iter < 1:
        raise InvalidOptionError("--n-samples and --n-iter must be at least 1")
    model = load_model_from_args(args)
    height = args.height or model.default_image_size
    width = args.width or model.default_image_size
    images, settings = [], []
    seed = args.seed
    for _ in range(args.n_iter):
        for prompt in prompts:
            batch = [prompt] * args.batch_size
            images += txt2img(model, batch, args.negative_prompt, height, width, seed, options,
                              progress=not args.no_progress)
            settings += [settings_dict(prompt, args.negative_prompt, seed + i, height, width, options)
                         for i in range(args.batch_size)]
            seed += args.batch_size
    paths = save_images(images, settings, args.outdir, grid=not args.no_grid)
    log.info("wrote %d image(s) to %s", len(images), paths[0].parent)
    return 0
