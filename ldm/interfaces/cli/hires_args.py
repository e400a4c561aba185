"""`ldm txt2img`'s hires fix options (ldm.tasks.hires): --hires-scale and the second pass's steps, strength and
upscaler, read from the command line or from an image's settings (--from-png)."""

from __future__ import annotations

import argparse
from typing import Any

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.tasks.hires import HiresOptions

# The settings keys (HiresOptions.record) -> the command's attributes.
HIRES_SETTINGS = {
    "hires_scale": "hires_scale",
    "hires_steps": "hires_steps",
    "hires_upscaler": "hires_upscaler",
    "strength": "hires_strength",
}


def add_hires_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "hires fix", "sample at the base size, upscale, then img2img at the target size (A1111's hires fix)"
    )
    g.add_argument(
        "--hires-scale",
        type=float,
        default=None,
        metavar="S",
        help="turn the hires fix on: the image is S times the base size (--height/--width), e.g. 2 (default: off)",
    )
    g.add_argument(
        "--hires-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"the second pass's steps; 0: the first pass's, as A1111 (default: {defaults.HIRES_STEPS})",
    )
    g.add_argument(
        "--hires-strength",
        type=float,
        default=None,
        metavar="F",
        help=f"the second pass's denoising strength (default: {defaults.HIRES_STRENGTH}, A1111's)",
    )
    g.add_argument(
        "--hires-upscaler",
        choices=defaults.HIRES_UPSCALERS,
        default=None,
        help="latent: the latent resized bilinearly (A1111's Latent); bicubic: the decoded image resized and "
        "encoded again; model: the shipped x4 upscaler, then resized to the target "
        f"(default: {defaults.HIRES_UPSCALER})",
    )


def apply_hires_png(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """The image's hires fix (--from-png), unless the command line gives that option."""
    if settings.get("hires_scale") is None:
        return
    for key, attr in HIRES_SETTINGS.items():
        if getattr(args, attr) is None and settings.get(key) is not None:
            setattr(args, attr, settings[key])


def hires_options(args: argparse.Namespace) -> HiresOptions | None:
    """The checked HiresOptions the command line asks for, or None (no --hires-scale)."""
    given = [f"--{attr.replace('_', '-')}" for attr in HIRES_SETTINGS.values() if getattr(args, attr) is not None]
    if args.hires_scale is None:
        if given:
            raise InvalidOptionError(f"{given[0]} sets the hires fix's second pass; turn it on with --hires-scale")
        return None
    hires = HiresOptions(
        scale=args.hires_scale,
        steps=defaults.HIRES_STEPS if args.hires_steps is None else args.hires_steps,
        strength=defaults.HIRES_STRENGTH if args.hires_strength is None else args.hires_strength,
        upscaler=args.hires_upscaler or defaults.HIRES_UPSCALER,
    )
    hires.validate()
    return hires
