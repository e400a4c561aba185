"""ldm inpaint / ldm outpaint: repaint a masked area, or extend the canvas and fill the new area."""

from __future__ import annotations

import argparse

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.core.masks import check_mask
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
from ldm.tasks.editing import as_pil, size_multiple
from ldm.tasks.inpaint import (
    INPAINT_MODES,
    as_mask,
    extend_canvas,
    inpaint,
    outpaint_record,
    parse_extend,
    resolve_mode,
)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-file", help="a UTF-8 file with one prompt per line")
    p.add_argument(
        "--mode",
        default="auto",
        choices=INPAINT_MODES,
        help="model: a dedicated inpainting model (without --ckpt: the shipped one); blend: any "
        "text-to-image model, known area re-noised each step; auto: model if the checkpoint is an "
        "inpainting one (default)",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=defaults.STRENGTH["inpaint"],
        help="1 repaints the area from scratch; lower keeps some of what is there",
    )
    p.add_argument(
        "--feather",
        type=int,
        default=None,
        help="soft paste-back edge in px, inside the mask (default: the VAE's downscale factor)",
    )
    p.add_argument(
        "--inpaint-area",
        choices=defaults.INPAINT_AREAS,
        default=defaults.INPAINT_AREA,
        help="whole: inpaint the whole image at its size; masked: only a crop around the mask, at the model's own "
        "size, pasted back (A1111's 'Only masked': more detail in a small hole of a large image; pixels outside the "
        f"mask are kept exactly either way) (default: {defaults.INPAINT_AREA})",
    )
    p.add_argument(
        "--mask-padding",
        type=int,
        default=defaults.MASK_PADDING,
        metavar="PX",
        help="with --inpaint-area masked: px of context around the mask's box in the crop, as A1111's "
        f"'Only masked padding' (default: {defaults.MASK_PADDING})",
    )
    p.add_argument("--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images per prompt")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    add_sampling_args(p)
    add_model_args(p)
    add_sdxl_args(p)
    add_control_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inpaint", help="repaint the white area of a mask following a prompt")
    p.add_argument("image", help="input image")
    p.add_argument("mask", help="mask image of the same size: white = repaint (L, RGB, or an RGBA's alpha)")
    p.add_argument("prompt", nargs="?", help="the prompt")
    _common_args(p)
    p.set_defaults(func=run, extend=None)

    p = sub.add_parser("outpaint", help="extend the canvas on chosen sides and fill the new area")
    p.add_argument("image", help="input image")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--extend", required=True, help="px to add per side, e.g. left=64,right=64 (left/right/top/bottom)")
    _common_args(p)
    p.set_defaults(func=run, mask=None)


def run(args: argparse.Namespace) -> int:
    check_strength(args.strength)
    prompts = read_prompts(args)
    options = sampling_options(args)
    prompting = prompt_options_of(args)
    options.validate()
    check_counts(("--n-samples", args.batch_size))
    if args.mask_padding < 0:
        raise InvalidOptionError(f"--mask-padding must be >= 0 px, got {args.mask_padding}")
    image = as_pil(args.image)
    extend = parse_extend(args.extend) if args.extend is not None else None  # "" is an error, not "no extension"
    if extend is None:  # bad masks fail before the model loads
        mask = as_mask(args.mask)
        check_mask(mask, image.size)
    control_specs(args, shipped_controlnet=False)  # a missing file fails before the model loads; the shipped
    # ControlNet is the text-to-image model's, which no inpainting model's U-Net (9 input channels) takes
    writer = ImageWriter(args.outdir, grid=not args.no_grid)
    # Without --ckpt: the shipped inpainting model, or the text-to-image one for blending (--mode blend).
    model = load_model_from_args(args, task="txt2img" if args.mode == "blend" else "inpaint")
    mode = resolve_mode(model, args.mode)
    sdxl = sdxl_options(args, model) or {}  # an SDXL model's refiner and micro-conditionings (ldm.tasks.sdxl_handoff)
    # What the metadata adds to the call's settings: the files it never saw, and that its canvas was an outpainting's
    # (as ldm.tasks.inpaint.outpaint records it).
    more = {"init_image": str(args.image), **attach_controls(model, args)}  # --control: for every image
    if extend:
        # The canvas's memory is checked before it is allocated: a side of 100000 px is refused here.
        chunk_size(
            model,
            args,
            image.height + extend["top"] + extend["bottom"],
            image.width + extend["left"] + extend["right"],
            1,
        )
        image, mask, added = extend_canvas(image, **extend, multiple=size_multiple(model), seed=args.seed)
        more.update(outpaint_record(added))
    else:
        more["mask"] = str(args.mask)
    chunk = chunk_size(model, args, image.height, image.width, args.batch_size)
    seed = args.seed
    for prompt in prompts:
        for start, n in chunks(args.batch_size, chunk):
            out = inpaint(
                model,
                image,
                mask,
                [prompt] * n,
                args.negative_prompt,
                seed + start,
                args.strength,
                mode,
                args.feather,
                options,
                progress=not args.no_progress,
                prompt_options=prompting,
                precision=args.precision,
                inpaint_area=args.inpaint_area,
                mask_padding=args.mask_padding,
                **sdxl,
            )
            for i, result in enumerate(out):
                writer.write(result, {**out.settings.image(i), **more})
        seed += args.batch_size
    paths = writer.finish()
    log.info("wrote %d image(s) to %s (%s mode)", len(prompts) * args.batch_size, paths[0].parent, mode)
    return 0
