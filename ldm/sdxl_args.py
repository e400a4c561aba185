"""The SDXL options of `ldm txt2img` (ldm.interfaces.cli.txt2img): the refiner hand-off and the micro-conditionings
(ldm.tasks.sdxl_refiner). Kept outside ldm.interfaces.cli, whose modules load one per command named (tests/interfaces/test_fast_start.py)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.models.sdxl_conditioning import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE
from ldm.tasks.sdxl_refiner import DEFAULT_SWITCH, SDXLMicro, check_switch, is_sdxl

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


def _pair(text: str | None, option: str, separator: str) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(rf"\s*(\d{{1,6}})\s*{separator}\s*(\d{{1,6}})\s*", text)
    if match is None:
        example = "1024x768" if separator == "x" else "0,32"
        raise InvalidOptionError(f"{option} must be two whole numbers like {example}, got {text!r}")
    return int(match[1]), int(match[2])


def micro_from_args(args: argparse.Namespace) -> SDXLMicro:
    """The micro-conditionings the options give; sizes come as WIDTHxHEIGHT and are kept as (height, width)."""
    original = _pair(args.original_size, "--original-size", "x")
    target = _pair(args.target_size, "--target-size", "x")
    crop = _pair(args.crop, "--crop", ",")
    scores = {}
    if args.aesthetic_score is not None:
        scores["aesthetic_score"] = args.aesthetic_score
    if args.negative_aesthetic_score is not None:
        scores["negative_aesthetic_score"] = args.negative_aesthetic_score
    return SDXLMicro(
        original_size=None if original is None else (original[1], original[0]),
        crop=crop or (0, 0),
        target_size=None if target is None else (target[1], target[0]),
        **scores,
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


def sdxl_record(settings: dict[str, Any]) -> dict[str, Any]:
    """What an image's metadata adds from sdxl_txt2img's settings: the micro-conditionings and the refiner's."""
    own = {"original_size", "crop", "target_size", "aesthetic_score", "negative_aesthetic_score"}
    return {k: v for k, v in settings.items() if k in own or k.startswith("refiner_")}
