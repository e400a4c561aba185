"""ldm txt2img: prompts -> numbered PNGs with their settings, and a grid."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterator
from dataclasses import fields, replace

from ldm.core.defaults import CONTROLNET_VARIANT
from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.formats.load import load_model
from ldm.formats.variants import VARIANTS, config_sampling, default_variant, shipped_model_files, variant_of_file
from ldm.interfaces.cli.common import (
    ImageWriter,
    add_model_args,
    add_sampling_args,
    apply_model_sampling,
    check_counts,
    chunk_size,
    chunks,
    load_model_from_args,
    log,
    mark_given,
    prompt_options_of,
    read_prompts,
    sampling_options,
)
from ldm.interfaces.cli.controlnet_args import (
    add_control_args,
    apply_control_settings,
    attach_controls,
    control_specs,
    names_no_controlnet,
)
from ldm.interfaces.cli.devices_args import add_devices_args, devices_run, on_devices, run_prompt_file
from ldm.interfaces.cli.hires_args import HIRES_SETTINGS, add_hires_args, apply_hires_png, hires_options
from ldm.interfaces.cli.sdxl_args import add_sdxl_args, apply_sdxl_png, sdxl_options
from ldm.interfaces.cli.upscale_args import (
    UPSCALE_SETTINGS,
    add_upscale_args,
    apply_upscale_png,
    upscale_options,
    with_upscaler,
)
from ldm.io.images import check_size
from ldm.io.infotext import settings_from_png
from ldm.models.prompt_options import PROMPT_SWITCHES
from ldm.sampling.options import SamplingOptions, sampler_parameters
from ldm.sampling.samplers import SAMPLERS, get_sampler
from ldm.tasks.results import settings_of
from ldm.tasks.sdxl_refiner import sdxl_txt2img, with_refiner_switch
from ldm.tasks.txt2img import txt2img, txt2img_learned_variance


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("txt2img", help="generate images from text")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--from-file", help="a UTF-8 file with one prompt per line")
    p.add_argument(
        "--from-png",
        metavar="IMAGE",
        help="make an image again from the settings in its metadata (ours, or A1111's parameters text); "
        "prompt, seed, size and sampling options come from the image, counts and the model from here",
    )
    p.add_argument("--height", "--H", type=int, default=None, help="image height in px (default: the model's size)")
    p.add_argument("--width", "--W", type=int, default=None, help="image width in px (default: the model's size)")
    p.add_argument(
        "--n-samples", "--batch-size", dest="batch_size", type=int, default=1, help="images per prompt per batch"
    )
    p.add_argument("--n-iter", type=int, default=1, help="number of batches")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid")
    p.add_argument(
        "--label",
        "--class",
        dest="label",
        default=None,
        metavar="NAME",
        help="a class-conditional model's class (guided against the null label); a label-only model needs no prompt",
    )
    p.add_argument(
        "--learned-variance",
        action="store_true",
        help="with --sampler ddpm, on a model trained with learned_variance: ancestral DDPM with the "
        "U-Net's own step variance (ldm.tasks.txt2img.txt2img_learned_variance) instead of the fixed one",
    )
    add_sampling_args(p)
    add_model_args(p)
    add_sdxl_args(p)
    add_control_args(p)
    add_devices_args(p)
    add_hires_args(p)
    add_upscale_args(p)
    p.add_argument(
        "--model",
        choices=VARIANTS,
        default=None,
        help="which shipped model without --ckpt: student (few steps, one U-Net call a step, its own "
        "steps, spacing and scale; no negative prompt) or full (the model it was distilled from, "
        f"30 guided steps) (default: {default_variant()}: the student where it is shipped, else full)",
    )
    p.set_defaults(func=run)


# Settings of our JSON that are SamplingOptions fields or the command's own; other keys are the sampler's
# keyword options (SamplingOptions.extra), the model's identity or other commands' (strength).
OWN_SETTINGS = {
    "prompt",
    "negative_prompt",
    "seed",
    "height",
    "width",
    "model_file",
    "model_sha256",
    "model_hash",
    "model_name",
    "base_file",
    "label",
    "learned_variance",
    "precision",
    "backend",
    "controls",
    *PROMPT_SWITCHES,
    *HIRES_SETTINGS,
    *UPSCALE_SETTINGS,
}


def apply_png_settings(args: argparse.Namespace) -> None:
    """Fill args from the settings an image was made with (--from-png)."""
    if args.prompt is not None or args.from_file:
        raise InvalidOptionError("--from-png takes the prompt from the image; give no prompt or --from-file with it")
    settings = with_refiner_switch(settings_from_png(args.from_png))  # A1111's step fraction, made ours
    hires = settings.get("hires_scale") is not None  # its denoising strength is the hires fix's
    if ("strength" in settings and not hires) or "init_image" in settings:
        raise InvalidOptionError(
            f"{args.from_png} was made from an image (it has a denoising strength); "
            "--from-png regenerates text-to-image results"
        )
    if settings.get("prompt") is None:
        raise InvalidOptionError(f"{args.from_png} has settings but no prompt")
    # Types are checked (ldm.io.infotext.check_setting_types); ranges and lengths as the command line's, below.
    args.prompt, args.negative_prompt = settings["prompt"], settings.get("negative_prompt") or ""
    for key, attr in (
        ("seed", "seed"),
        ("height", "height"),
        ("width", "width"),
        ("steps", "steps"),
        ("guidance_scale", "scale"),
        ("sampler", "sampler"),
        ("eta", "eta"),
        ("spacing", "spacing"),
        ("karras", "karras"),
        ("guidance_rescale", "guidance_rescale"),
        ("precision", "precision"),
        ("backend", "backend"),
        ("long_prompts", "long_prompts"),
        ("emphasis", "emphasis"),
        ("prompt_editing", "prompt_editing"),
        ("ddim_variant", "ddim_variant"),
        ("tiling", "tiling"),
        ("refiner_switch", "refiner_switch"),
    ):
        if settings.get(key) is not None:
            setattr(args, attr, settings[key])
            mark_given(args, attr)  # the image's, not the model's defaults
    if args.sampler in SAMPLERS and "eta" not in sampler_parameters(args.sampler):
        args.eta = None  # the metadata records DDPM's fixed eta 1, which is no option of it
    args.png_threshold = settings.get("threshold")
    args.label = settings.get("label", args.label)
    apply_control_settings(args, settings)  # the image's ControlNets, unless --control is given
    apply_hires_png(args, settings)  # the image's hires fix, unless --hires-* is given
    apply_sdxl_png(args, settings, args.from_png)  # an SDXL image's micro-conditionings, unless given here
    apply_upscale_png(args, settings)  # the image's x4 upscale pass, unless --upscale-* is given
    if settings.get("learned_variance") or settings.get("sampler") == "ddpm_learned_variance":
        # the Python call (txt2img_learned_variance) names its sampler so; the CLI writes ddpm + learned_variance
        args.learned_variance, args.sampler = True, "ddpm"
    known = OWN_SETTINGS | {f.name for f in fields(SamplingOptions)}
    args.png_extra = {k: v for k, v in settings.items() if k not in known}
    args.png_model_hash = settings.get("model_sha256") or settings.get("model_hash")
    args.png_model_file = settings.get("model_file")


def choose_model(args: argparse.Namespace) -> str | None:
    """The shipped variant to load (None: --config/--ckpt name the model), with its own sampling defaults set on the
    options left out. --from-png takes the variant its image names (a student's image is re-made by the student)."""
    if args.model and (args.config or args.ckpt):
        raise InvalidOptionError("--model picks a shipped model (student or full); leave it out with --config/--ckpt")
    if args.config or args.ckpt:
        apply_model_sampling(args, config_sampling(args.config))
        return None
    variant = args.model or (variant_of_file(getattr(args, "png_model_file", None)) if args.from_png else None)
    if variant == "student" and not args.model and default_variant() != "student":
        raise MissingFileError(
            f"{args.from_png} was made by the few-step student (student.safetensors), which is "
            "not shipped here; give it with --config/--ckpt, or --model full for the full model's "
            "(different) image"
        )
    if variant is None and any(names_no_controlnet(spec) for spec in args.control or []):
        # --control IMAGE alone: the shipped ControlNet with the variant chosen for it (docs/controlnet.md)
        variant = "full" if CONTROLNET_VARIANT == "full" else None  # "student": the default variant anyway
    variant = variant or default_variant()
    applied = apply_model_sampling(args, config_sampling(shipped_model_files("txt2img", variant)[0]))
    if variant == "student":
        log.info(
            "using the few-step student (%s); --model full for the full model",
            ", ".join(f"{k} {v}" for k, v in applied.items()) or "options as given",
        )
    return variant


def run(args: argparse.Namespace) -> int:
    if args.from_png:
        apply_png_settings(args)
    if args.label is not None and args.prompt is None and not args.from_file:
        args.prompt = ""  # a label alone: what a label-only model takes
    prompts = read_prompts(args)
    variant = choose_model(args)
    options = sampling_options(args)
    prompting = prompt_options_of(args)
    if args.from_png:
        options.threshold = args.png_threshold
        # Only keyword options the sampler takes: a key it does not know would be an error, not a setting.
        # A --sampler-option given here changes the image's own.
        accepted = inspect.signature(get_sampler(options.sampler)).parameters
        options.extra = {**{k: v for k, v in args.png_extra.items() if k in accepted and k != "eta"}, **options.extra}
    options.validate()
    if args.learned_variance and options.sampler != "ddpm":
        raise InvalidOptionError("--learned-variance replaces ancestral DDPM's fixed variance: give --sampler ddpm")
    check_counts(("--n-samples", args.batch_size), ("--n-iter", args.n_iter))
    hires = hires_options(args)
    if hires is not None and (args.learned_variance or args.label is not None):
        raise InvalidOptionError("the hires fix is not implemented with --learned-variance or --label; leave it out")
    upscaled = upscale_options(args)  # the x4 upscale pass, its upscaler loaded with the model
    if upscaled is not None and args.learned_variance:
        raise InvalidOptionError("--upscale is not implemented with --learned-variance; leave one out")
    control_specs(args)  # a missing control image or ControlNet fails before the model loads
    devices = devices_run(args, len(prompts)) if on_devices(args) else None  # a prompt file through Lightning
    if devices is not None:
        args.device = devices.device  # this process's device (Lightning's choice)
    else:
        writer = ImageWriter(args.outdir, grid=not args.no_grid)  # an unwritable folder fails before any work
    model = load_model_from_args(args, variant=variant)
    if args.label is not None:
        model.class_labels([args.label])  # an unknown label is refused before any sampling, naming the known ones
    if args.learned_variance and not getattr(model, "learned_variance", False):
        raise InvalidOptionError(
            "--learned-variance: this model has no learned variance (its config's "
            "learned_variance is off); leave the option out"
        )
    sdxl = sdxl_options(args, model)  # an SDXL model's refiner and micro-conditionings (ldm.tasks.sdxl_refiner)
    controlled = attach_controls(model, args)  # --control: ControlNets for every image of the run, their files
    if hires is not None and sdxl is not None:
        raise InvalidOptionError("the hires fix is not implemented for SDXL models; leave --hires-scale out")
    if upscaled is not None and sdxl is not None:
        raise InvalidOptionError("--upscale is not implemented for SDXL models; leave it out")
    upscaled = with_upscaler(upscaled, args, model)  # a model larger than the shipped upscaler's input is refused
    if hires is not None and hires.upscaler == "model":  # loaded once for the whole run
        hires = replace(hires, upscaler_model=load_model(task="upscale", device=model.device))
    made_with = getattr(args, "png_model_hash", None)
    ours = model.identity.get("model_sha256", "")
    if made_with and not ours.startswith(str(made_with)):
        log.warning(
            "%s was made by another model (hash %s); this one (%s) makes a different image",
            args.from_png,
            str(made_with)[:10],
            ours[:10] or "unhashed",
        )
    height = model.default_image_size if args.height is None else args.height  # 0 is an error, not the default
    width = model.default_image_size if args.width is None else args.width
    check_size(height, width, max(8, model.downscale))
    # The memory check is the largest pass's: the hires fix's target size.
    big = hires.target_size(height, width, max(8, model.downscale)) if hires is not None else (height, width)
    chunk = chunk_size(model, args, *big, args.batch_size)
    progress = not args.no_progress and devices is None  # a prompt-file run has its own bar over the whole file

    def make(prompt: str, count: int, first_seed: int) -> Iterator[tuple]:
        """One prompt's `count` images, seeds first_seed.., each with the settings it is written with, yielded chunk
        by chunk: a plain run writes each image the moment it exists."""
        # Image i has seed + i whatever the chunking (one generator per image), so chunks change nothing.
        for start, n in chunks(count, chunk):
            if args.learned_variance:
                images = txt2img_learned_variance(
                    model,
                    [prompt] * n,
                    args.negative_prompt,
                    first_seed + start,
                    progress=progress,
                    height=height,
                    width=width,
                    label=args.label,
                    options=options,
                    prompt_options=prompting,
                    precision=args.precision,
                )
            elif sdxl is not None:
                images = sdxl_txt2img(
                    model,
                    [prompt] * n,
                    args.negative_prompt,
                    height,
                    width,
                    first_seed + start,
                    options,
                    progress=progress,
                    prompt_options=prompting,
                    precision=args.precision,
                    **sdxl,
                )
            else:
                images = txt2img(
                    model,
                    [prompt] * n,
                    args.negative_prompt,
                    height,
                    width,
                    first_seed + start,
                    options,
                    progress=progress,
                    label=args.label,
                    prompt_options=prompting,
                    precision=args.precision,
                    hires=hires,
                    upscale=upscaled,
                )
            for i, image in enumerate(images):  # the call's settings, and the ControlNet files it never saw
                yield image, {**images.settings.image(i), **controlled}

    if devices is not None:
        labelled = {"label": args.label} if args.label is not None else {}
        shared = settings_of(
            "txt2img", options, model, precision=args.precision, prompting=prompting,
            negative_prompt=args.negative_prompt, seed=args.seed, height=height, width=width, **labelled, **controlled,
            **(hires.record() if hires is not None else {}),
            **({"upscale": upscaled.upscaler_model.downscale} if upscaled is not None else {}),
        )  # fmt: skip
        return run_prompt_file(devices, args, model, prompts, make, shared)
    seed = args.seed
    for _ in range(args.n_iter):
        for prompt in prompts:
            for image, settings in make(prompt, args.batch_size, seed):
                writer.write(image, settings)
            seed += args.batch_size
    paths = writer.finish()
    log.info("wrote %d image(s) to %s", args.n_iter * len(prompts) * args.batch_size, paths[0].parent)
    return 0
