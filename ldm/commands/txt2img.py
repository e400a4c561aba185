"""ldm txt2img: prompts -> numbered PNGs with their settings, and a grid."""
from __future__ import annotations

import argparse

from ldm.errors import InvalidOptionError
from ldm.commands.common import (ImageWriter, add_model_args, add_sampling_args, check_counts, chunk_size, chunks,
                                 load_model_from_args, log, read_prompts, sampling_options)
from ldm.images import check_size
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
    check_counts(("--n-samples", args.batch_size), ("--n-iter", args.n_iter))
    writer = ImageWriter(args.outdir, grid=not args.no_grid)  # an unwritable folder fails before any work
    model = load_model_from_args(args)
    height = model.default_image_size if args.height is None else args.height  # 0 is an error, not the default
    width = model.default_image_size if args.width is None else args.width
    check_size(height, width, max(8, model.downscale))
    chunk = chunk_size(model, args, height, width, args.batch_size)
    seed = args.seed
    for _ in range(args.n_iter):
        for prompt in prompts:
            # Image i has seed + i whatever the chunking (one generator per image), so chunks change nothing.
            for start, n in chunks(args.batch_size, chunk):
                images = txt2img(model, [prompt] * n, args.negative_prompt, height, width, seed + start, options,
                                 progress=not args.no_progress)
                for i, image in enumerate(images):
                    writer.write(image, settings_dict(prompt, args.negative_prompt, seed + start + i, height, width,
                                                      options, model))
            seed += args.batch_size
    paths = writer.finish()
    log.info("wrote %d image(s) to %s", args.n_iter * len(prompts) * args.batch_size, paths[0].parent)
    return 0
