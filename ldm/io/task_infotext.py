"""The hires fix's and "only masked" inpainting's settings in A1111's infotext, written and read in one place.

A1111 writes them as `Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0.5` (Hires
steps only when not 0, "the first pass's") and `Inpaint area: Only masked, Masked area padding: 32`. Our keys
(ldm.tasks.hires.HiresOptions.record, ldm.tasks.inpaint.inpaint): hires_scale, hires_steps, hires_upscaler, strength;
inpaint_area, mask_padding. An A1111 upscaler we have no counterpart of is kept by its name, and the command that
would run it refuses it naming ours.

txt2img's x4 upscale pass (ldm.tasks.upscale_pass) is written as A1111's Extras tab writes a postprocessing upscale,
`Postprocess upscale by: 4, Postprocess upscaler: LDM x4`, with the upscaler's own `Upscale steps` and `Upscale noise
level`. Only ours is read back: another upscaler's postprocessing (R-ESRGAN, ...) is left out, as it was before.
"""

from __future__ import annotations

from typing import Any

# Our hires upscalers -> A1111's names ("Latent" is A1111's bilinear latent upscaler; A1111 has no plain bicubic
# one, nor our x4 upscaler, so those two are written under names of ours).
HIRES_UPSCALER_NAMES = {"latent": "Latent", "bicubic": "Bicubic", "model": "LDM x4"}
HIRES_UPSCALERS_BY_NAME = {v: k for k, v in HIRES_UPSCALER_NAMES.items()}
UPSCALE_PASS_NAME = "LDM x4"
INPAINT_AREA_NAMES = {"masked": "Only masked", "whole": "Whole picture"}
INPAINT_AREAS_BY_NAME = {v: k for k, v in INPAINT_AREA_NAMES.items()}

# The types of these settings in our JSON (ldm.io.infotext.check_setting_types).
TASK_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "hires_scale": (int, float),
    "hires_steps": (int,),
    "hires_upscaler": (str,),
    "inpaint_area": (str,),
    "mask_padding": (int,),
    "upscale": (int,),
    "upscale_steps": (int,),
    "upscale_noise_level": (int,),
    "upscaler_file": (str,),
    "upscaler_sha256": (str,),
}


def _number(value: float) -> str:
    """2.0 -> "2", 1.5 -> "1.5", as A1111 writes its scales."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def task_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """A1111's fields for the settings that have them (None: not written)."""
    hires = settings.get("hires_scale") is not None
    masked = settings.get("inpaint_area") == "masked"
    upscaler = settings.get("hires_upscaler")
    return {
        "Hires upscale": _number(settings["hires_scale"]) if hires else None,
        "Hires steps": settings.get("hires_steps") or None if hires else None,
        "Hires upscaler": HIRES_UPSCALER_NAMES.get(upscaler, upscaler) if hires else None,
        "Inpaint area": INPAINT_AREA_NAMES["masked"] if masked else None,
        "Masked area padding": settings.get("mask_padding") if masked else None,
        "Postprocess upscale by": settings.get("upscale"),
        "Postprocess upscaler": UPSCALE_PASS_NAME if settings.get("upscale") else None,
        "Upscale steps": settings.get("upscale_steps") if settings.get("upscale") else None,
        "Upscale noise level": settings.get("upscale_noise_level") if settings.get("upscale") else None,
    }


def task_settings(fields: dict[str, str]) -> dict[str, Any]:
    """Our settings from A1111's fields (parse_infotext's); raises ValueError on a value that is no number."""
    out: dict[str, Any] = {}
    if "Hires upscale" in fields:
        out["hires_scale"] = float(fields["Hires upscale"])
        out["hires_steps"] = int(fields.get("Hires steps", 0))
        name = fields.get("Hires upscaler", "Latent")
        out["hires_upscaler"] = HIRES_UPSCALERS_BY_NAME.get(name, name)
    if "Inpaint area" in fields:
        out["inpaint_area"] = INPAINT_AREAS_BY_NAME.get(fields["Inpaint area"], fields["Inpaint area"])
        if "Masked area padding" in fields:
            out["mask_padding"] = int(fields["Masked area padding"])
    if fields.get("Postprocess upscaler") == UPSCALE_PASS_NAME and "Postprocess upscale by" in fields:
        out["upscale"] = int(fields["Postprocess upscale by"])
        for name, key in (("Upscale steps", "upscale_steps"), ("Upscale noise level", "upscale_noise_level")):
            if name in fields:
                out[key] = int(fields[name])
    return out
