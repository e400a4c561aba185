"""ldm img2img: an input image + prompts -> numbered PNGs with their settings, and a grid."""

from __future__ import annotations

import argparse

from ldm.core import defaults
from ldm.interfaces.cli.common import (
    ImageWriter,
    add_model_args,
    add_sampling_args,
    check_counts,
    chunk_size,
    chunks,
    load_model_from_args,
    log,
    prompt_options_of,
    read_prompts,
    sampling_options,
)
from ldm.interfaces.cli.controlnet_args import add_control_args, attach_controls, control_specs
from ldm.interfaces.cli.sdxl_args import add_sdxl_args, sdxl_options
from ldm.sampling.samplers import check_strength
from ldm.tasks.depth import check_depth_map, load_depth_map
from ldm.tasks.editing import as_pil
from ldm.tasks.img2img import img2img, prepare_image


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("img2img", help="change an image following a prompt")
    p.add_argument("image", help="input image (any size; resized to a multiple of 8)")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--from-file", help="a UTF-8 file with one prompt per line")
    p.add_argument(
        "--strength",
        type=float,
        default=defaults.STRENGTH["img2img"],
        help="how much to change: 0 keeps the image, 1 ignores it",
    )
    p.add_argument(
        "--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images per prompt per batch"
    )
    p.add_argument(
        "--depth-map",
        help="a depth model's (SD 2 depth) depth map of the image: grey, brighter nearer, any size (resized "
        "bicubically to the latent size and scaled to [-1, 1]); the model file's MiDaS estimator is not run",
    )
    p.add_argument("--n-iter", type=int, default=1, help="number of batches")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    add_sampling_args(p)
    add_model_args(p)
    add_sdxl_args(p)
    add_control_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_strength(args.strength)
    prompts = read_prompts(args)
    options = sampling_options(args)
    prompting = prompt_options_of(args)
    options.validate()
    check_counts(("--n-samples", args.batch_size), ("--n-iter", args.n_iter))
    source = as_pil(args.image)  # an unreadable file fails before the model loads
    depth = load_depth_map(args.depth_map) if args.depth_map is not None else None  # so does the depth map
    control_specs(args)  # a missing control image or ControlNet fails before the model loads
    writer = ImageWriter(args.outdir, grid=not args.no_grid)
    model = load_model_from_args(args)
    sdxl = sdxl_options(args, model) or {}  # an SDXL model's refiner and micro-conditionings (ldm.tasks.sdxl_handoff)
    controlled = attach_controls(model, args)  # --control: ControlNets for every image of the run
    check_depth_map(model, depth)  # a depth model needs --depth-map, any other refuses it
    more = {"init_image": str(args.image), **({"depth_map": str(args.depth_map)} if depth is not None else {})}
    image = prepare_image(model, source)
    chunk = chunk_size(model, args, image.height, image.width, args.batch_size)
    seed = args.seed
    for _ in range(args.n_iter):
        for prompt in prompts:
            for start, n in chunks(args.batch_size, chunk):
                out = img2img(
                    model,
                    image,
                    [prompt] * n,
                    args.strength,
                    args.negative_prompt,
                    seed + start,
                    options,
                    progress=not args.no_progress,
                    prompt_options=prompting,
                    precision=args.precision,
                    depth_map=depth,
                    **sdxl,
                )
                for i, result in enumerate(out):
                    # The call's settings, and the files it never saw.
                    writer.write(result, {**out.settings.image(i), **more, **controlled})
            seed += args.batch_size
    paths = writer.finish()
    log.info("wrote %d image(s) to %s", args.n_iter * len(prompts) * args.batch_size, paths[0].parent)
    return 0
