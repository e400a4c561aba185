"""The SDXL options of `ldm txt2img` (ldm.interfaces.cli.txt2img): the refiner hand-off and the micro-conditionings
(ldm.tasks.sdxl_refiner)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.models.sdxl_conditioning import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE
from ldm.tasks.sdxl_refiner import DEFAULT_SWITCH, check_switch, is_sdxl, micro_from_args

SDXL_DESTS = ("refiner", "original_size", "crop", "target_size", "aesthetic_score", "negative_aesthetic_score")


def add_sdxl_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SDXL", "the refiner hand-off and the micro-conditionings of SDXL models")
    g.add_argument(
        "--refiner",
        metavar="FILE",
        default=None,
        help="an SDXL refiner (single file or diffusers folder) that finishes the base's images: the base "
        "denoises to --refiner-switch, the refiner from there, as diffusers' denoising_end / "
        "denoising_start; its VAE decodes",
    )
    g.add_argument(
        "--refiner-switch",
        type=float,
        default=DEFAULT_SWITCH,
        metavar="FRACTION",
        help="where the refiner takes over, a fraction of the training timesteps as diffusers' "
        "denoising_end (not of the steps, as A1111's 'Refiner switch at') (default: %(default)s)",
    )
    g.add_argument(
        "--original-size",
        default=None,
        metavar="WIDTHxHEIGHT",
        help="SDXL's original-size conditioning (default: the image's size)",
    )
    g.add_argument(
        "--crop",
        default=None,
        metavar="TOP,LEFT",
        help="SDXL's crop conditioning, the top-left corner of the crop in px (default: 0,0)",
    )
    g.add_argument(
        "--target-size",
        default=None,
        metavar="WIDTHxHEIGHT",
        help="SDXL's target-size conditioning (default: the image's size)",
    )
    g.add_argument(
        "--aesthetic-score",
        type=float,
        default=None,
        help=f"the refiner's aesthetic score (default: {AESTHETIC_SCORE})",
    )
    g.add_argument(
        "--negative-aesthetic-score",
        type=float,
        default=None,
        help=f"the refiner's aesthetic score on the unconditional side (default: {NEGATIVE_AESTHETIC_SCORE})",
    )


def sdxl_options(args: argparse.Namespace, model: Any) -> dict[str, Any] | None:
    """Keyword arguments of ldm.tasks.sdxl_refiner.sdxl_txt2img for an SDXL model (None for any other, which takes none
    of these options: giving one is refused); the refiner is loaded onto the base's device."""
    from ldm.formats.load import load_model

    given = [d for d in SDXL_DESTS if getattr(args, d, None) is not None]
    if not is_sdxl(model):
        if given:
            raise InvalidOptionError(f"--{given[0].replace('_', '-')} is for SDXL models; this model is not one")
        return None
    check_switch(args.refiner_switch)
    micro = micro_from_args(args)
    micro.sides(1, 1)  # checks the numbers before any work
    refiner = None
    if args.refiner is not None:
        if not Path(args.refiner).exists():
            raise MissingFileError(f"refiner not found: {args.refiner}")
        refiner = load_model(None, args.refiner, model.device)
        if not is_sdxl(refiner):
            raise InvalidOptionError(f"--refiner {args.refiner} is not an SDXL model")
    return {"refiner": refiner, "switch": args.refiner_switch, "micro": micro}
