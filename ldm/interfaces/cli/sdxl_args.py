"""The SDXL options of `ldm txt2img`, `ldm img2img`, `ldm inpaint` and `ldm outpaint`: the refiner hand-off and the
micro-conditionings (ldm.tasks.sdxl_handoff), from the command line or from an image's settings (--from-png)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.models.sdxl_conditioning import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE
from ldm.tasks.sdxl_refiner import DEFAULT_SWITCH, check_switch, is_sdxl, micro_from_args

# Settings an image records (ldm.tasks.sdxl_handoff.SDXLMicro.record: sizes as [height, width], crop as [top, left])
# and how the options write them: (setting, separator, whether the pair is turned round: WIDTHxHEIGHT).
MICRO_PAIRS = (("original_size", "x", True), ("crop", ",", False), ("target_size", "x", True))
MICRO_SCORES = ("aesthetic_score", "negative_aesthetic_score")
SDXL_DESTS = ("refiner", "original_size", "crop", "target_size", "aesthetic_score", "negative_aesthetic_score")


def add_sdxl_args(p: argparse.ArgumentParser, refiner: bool = True) -> None:
    """The SDXL options; refiner=False: the micro-conditionings alone (a walk has no hand-off)."""
    g = p.add_argument_group("SDXL", "the refiner hand-off and the micro-conditionings of SDXL models")
    if refiner:
        g.add_argument(
            "--refiner",
            metavar="FILE",
            default=None,
            help="an SDXL refiner (single file or diffusers folder) that finishes the base's images: the base "
            "denoises to --refiner-switch, the refiner from there, as diffusers' denoising_end / "
            "denoising_start (from an image the strength still picks the first step); its VAE decodes",
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


def apply_sdxl_png(args: argparse.Namespace, settings: dict[str, Any], source: str) -> None:
    """--from-png: the image's micro-conditionings where the command line gives none, and a warning where it was
    refined but no --refiner is given (the model and the refiner come from the command line; the switch is read with
    the sampling options)."""
    from ldm.interfaces.cli.common import log

    for key, separator, turned in MICRO_PAIRS:
        value = settings.get(key)
        if value is None or getattr(args, key, None) is not None:
            continue
        if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)):
            raise InvalidOptionError(f"{source}: setting {key!r} must be two whole numbers >= 0, got {value!r:.60}")
        first, second = value[::-1] if turned else value
        setattr(args, key, f"{first}{separator}{second}")
    for key in MICRO_SCORES:
        value = settings.get(key)
        if value is None or getattr(args, key, None) is not None:
            continue
        if type(value) not in (int, float):
            raise InvalidOptionError(f"{source}: setting {key!r} must be a number, got {value!r:.60}")
        setattr(args, key, float(value))
    refined = settings.get("refiner_file") or settings.get("refiner_name") or settings.get("refiner_steps")
    if refined and getattr(args, "refiner", None) is None:
        log.warning(
            "%s was finished by a refiner (%s); give --refiner FILE to make it again, without one the base makes "
            "another image",
            source,
            settings.get("refiner_file") or settings.get("refiner_name") or "unnamed",
        )


def sdxl_options(args: argparse.Namespace, model: Any) -> dict[str, Any] | None:
    """Keyword arguments of ldm.tasks.sdxl_refiner.sdxl_txt2img (and of img2img and inpaint, which take the same) for an
    SDXL model (None for any other, which takes none of these options: giving one is refused); the refiner is loaded
    onto the base's device."""
    from ldm.formats.load import load_model

    given = [d for d in SDXL_DESTS if getattr(args, d, None) is not None]
    if not is_sdxl(model):
        if given:
            raise InvalidOptionError(f"--{given[0].replace('_', '-')} is for SDXL models; this model is not one")
        return None
    switch = getattr(args, "refiner_switch", DEFAULT_SWITCH)
    check_switch(switch)
    micro = micro_from_args(args)
    micro.sides(1, 1)  # checks the numbers before any work
    refiner = None
    if getattr(args, "refiner", None) is not None:
        if not Path(args.refiner).exists():
            raise MissingFileError(f"refiner not found: {args.refiner}")
        refiner = load_model(None, args.refiner, model.device)
        if not is_sdxl(refiner):
            raise InvalidOptionError(f"--refiner {args.refiner} is not an SDXL model")
    return {"refiner": refiner, "switch": switch, "micro": micro}
