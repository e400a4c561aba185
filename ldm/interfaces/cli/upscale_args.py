"""`ldm txt2img --upscale`: the x4 upscale pass (ldm.tasks.upscale_pass), from the command line or from an image's
settings (--from-png)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.interfaces.cli.common import log
from ldm.tasks.upscale_pass import UpscaleOptions

# The settings keys (ldm.tasks.upscale_pass.upscale_pass's record) the command reads back.
UPSCALE_SETTINGS = {"upscale", "upscale_steps", "upscale_noise_level", "upscaler_file", "upscaler_sha256"}


def add_upscale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "x4 upscale", "each image as sampled, then through the x4 upscaler (ldm upscale) with its prompt and seed"
    )
    g.add_argument(
        "--upscale",
        action="store_true",
        default=None,
        help="write each image x4 (64 -> 256 px for the emoji models) by the shipped x4 upscaler (default: off)",
    )
    g.add_argument(
        "--upscale-steps",
        type=int,
        default=None,
        metavar="N",
        help="the upscaler's sampling steps (default: its own, 20 for the shipped one)",
    )
    g.add_argument(
        "--upscale-noise-level",
        type=int,
        default=None,
        metavar="L",
        help=f"noise on the upscaler's low-res input, as ldm upscale --noise-level (default: {defaults.NOISE_LEVEL})",
    )
    g.add_argument(
        "--upscaler",
        default=None,
        metavar="FILE",
        help="another x4 upscaler's checkpoint (its YAML beside it), e.g. for a model larger than the shipped "
        "upscaler's 64 px input (default: the shipped one)",
    )


def apply_upscale_png(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """The image's upscale pass (--from-png), unless the command line gives that option."""
    if not settings.get("upscale"):
        return
    args.upscale = True
    args.png_upscaler_sha256 = settings.get("upscaler_sha256")  # compared with the upscaler loaded (with_upscaler)
    for key, attr in (("upscale_steps", "upscale_steps"), ("upscale_noise_level", "upscale_noise_level")):
        if getattr(args, attr) is None and settings.get(key) is not None:
            setattr(args, attr, settings[key])


def upscale_options(args: argparse.Namespace) -> UpscaleOptions | None:
    """The checked UpscaleOptions the command line asks for (the upscaler model not yet loaded), or None."""
    given = [
        f"--{a.replace('_', '-')}" for a in ("upscale_steps", "upscale_noise_level", "upscaler") if getattr(args, a)
    ]
    if not args.upscale:
        if given:
            raise InvalidOptionError(f"{given[0]} sets the x4 upscale pass; turn it on with --upscale")
        return None
    if args.hires_scale is not None:
        raise InvalidOptionError("--upscale and the hires fix (--hires-scale) both enlarge the image; give one")
    if args.upscaler is not None and not Path(args.upscaler).is_file():
        raise MissingFileError(f"upscaler file not found: {args.upscaler}")
    noise = defaults.NOISE_LEVEL if args.upscale_noise_level is None else args.upscale_noise_level
    chosen = UpscaleOptions(steps=args.upscale_steps, noise_level=noise)
    chosen.validate()
    return chosen


def with_upscaler(chosen: UpscaleOptions | None, args: argparse.Namespace, model: Any) -> UpscaleOptions | None:
    """The options with their upscaler loaded once for the run: --upscaler's, or the shipped one where it fits the
    model (ldm.tasks.upscale_pass.upscaler_for: a one-line error where it does not)."""
    if chosen is None:
        return None
    from dataclasses import replace

    from ldm.formats.load import load_model
    from ldm.tasks.upscale_pass import upscaler_for

    if args.upscaler is not None:
        upscaler = load_model(checkpoint=args.upscaler, device=model.device)
    else:
        upscaler = upscaler_for(model, chosen)
    made_with, ours = getattr(args, "png_upscaler_sha256", None), upscaler.identity.get("model_sha256")
    if made_with and ours and made_with != ours:
        log.warning("%s was upscaled by another upscaler (%s); give it with --upscaler", args.from_png, made_with[:10])
    return replace(chosen, upscaler_model=upscaler)
