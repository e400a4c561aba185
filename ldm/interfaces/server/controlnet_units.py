"""A1111's ControlNet extension units (`alwayson_scripts.controlnet.args`) -> our ControlNet settings.

A unit names a ControlNet this server was given (`ldm serve --controlnet FILE`, by file name or stem, a trailing
" [hash]" ignored) and brings its control image, preprocessed (`module: "none"`) or to be made by the extension's
preprocessor of the same algorithm: only "canny" is served (Canny's edges, ldm.io.control_images, at the extension's
`processor_res` with `threshold_a`/`threshold_b` as the low/high thresholds). The extension's lineart and scribble
preprocessors are trained networks (lineart_realistic, scribble_hed, ...) or other filters (scribble_xdog), not ours,
so they are refused by name. Its weight, guidance start/end, resize and control modes map onto
ldm.models.controlnet.Control; the preprocessor's own fields are accepted, and idle without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.interfaces.server.fields import FieldError, check_type
from ldm.io.control_images import CANNY_HIGH, CANNY_LOW, control_image
from ldm.models.controlnet import check_control_numbers

# The extension's preprocessors served (module -> ours), and its defaults where a unit sends -1 (or nothing).
MODULES = {"canny": "canny"}
PROCESSOR_RES = 512

# A1111's resize and control modes, by label and by index -> ours (ldm.models.controlnet RESIZE_MODES, CONTROL_MODES)
RESIZE = {"Just Resize": "stretch", "Crop and Resize": "crop", "Resize and Fill": "fill"}
MODES = {"Balanced": "balanced", "My prompt is more important": "prompt", "ControlNet is more important": "control"}
# unit field -> (JSON type, "used", or "any": changes nothing without a preprocessor, or the neutral values)
UNIT_FIELDS: dict[str, tuple[str, Any]] = {
    "enabled": ("bool", "used"),
    "image": ("any", "used"),
    "input_image": ("any", "used"),
    "module": ("str", "used"),
    "model": ("str", "used"),
    "weight": ("float", "used"),
    "guidance_start": ("float", "used"),
    "guidance_end": ("float", "used"),
    "resize_mode": ("any", "used"),
    "control_mode": ("any", "used"),
    "processor_res": ("int", "any"),
    "threshold_a": ("float", "any"),
    "threshold_b": ("float", "any"),
    "pixel_perfect": ("bool", "any"),
    "low_vram": ("bool", "any"),
    "lowvram": ("bool", "any"),
    "save_detected_map": ("bool", "any"),
    "hr_option": ("str", "any"),
    "guess_mode": ("bool", (False,)),
    "mask": ("any", (None,)),
    "mask_image": ("any", (None,)),
    "effective_region_mask": ("any", (None,)),
    "ipadapter_input": ("any", (None,)),
    "inpaint_crop_input_image": ("bool", "any"),
}


def by_label(value: Any, table: dict[str, str], name: str) -> str:
    """A mode given by A1111's label or its index in the table."""
    labels = list(table)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return table[labels[value]]
    if isinstance(value, str) and value in table:
        return table[value]
    raise FieldError(name, f"unknown mode {value!r:.40}; known: {', '.join(labels)} (or 0-{len(labels) - 1})")


def find_controlnet(name: str, field: str, controlnets: list[str]) -> str:
    wanted = name.split(" [")[0].strip()
    for path in controlnets:
        if wanted in (Path(path).name, Path(path).stem, path):
            return path
    served = ", ".join(Path(p).stem for p in controlnets) or "none (ldm serve --controlnet FILE adds them)"
    raise FieldError(field, f"{name!r:.80} is not a ControlNet of this server; served: {served}")


def parse_units(args: list[Any], key: str, controlnets: list[str], decode: Any) -> list[dict[str, Any]]:
    """The enabled units as {"image" (PIL), "controlnet" (path), "weight", "start", "end", "resize", "mode"}.
    `decode(data, field)` reads a base64 image through the server's checks."""
    units = []
    for index, unit in enumerate(args):
        prefix = f"alwayson_scripts.{key}.args[{index}]"
        if not isinstance(unit, dict):
            raise FieldError(prefix, "must be a ControlNet unit object")
        for name, value in unit.items():
            if name not in UNIT_FIELDS:
                raise FieldError(f"{prefix}.{name}", "is not a ControlNet unit field served here")
            kind, policy = UNIT_FIELDS[name]
            if kind != "any":
                check_type(f"{prefix}.{name}", value, kind)
            if isinstance(policy, tuple) and value not in policy:
                raise FieldError(f"{prefix}.{name}", f"{value!r:.40} is not served; leave it at its default")
        if unit.get("enabled") is False:
            continue
        module = unit.get("module")
        if module in ("none", "None"):
            module = None
        if module is not None and module not in MODULES:
            raise FieldError(f"{prefix}.module", f"the preprocessor {module!r:.40} is not served; served: none, "
                             f"{', '.join(MODULES)} (or send the control image preprocessed, module none)")  # fmt: skip
        image = unit.get("image", unit.get("input_image"))
        if isinstance(image, dict):  # the extension's {"image": ..., "mask": ...}
            if image.get("mask") is not None:
                raise FieldError(f"{prefix}.image.mask", "a ControlNet mask is not served")
            image = image.get("image")
        if not unit.get("model"):
            raise FieldError(f"{prefix}.model", "name the ControlNet (GET /controlnet/model_list lists them)")
        decoded = decode(image, f"{prefix}.image")
        unit_settings = {
            "image": decoded if module is None else preprocessed(decoded, MODULES[module], unit, prefix),
            "controlnet": find_controlnet(unit["model"], f"{prefix}.model", controlnets),
            "weight": float(unit.get("weight", 1.0) if unit.get("weight") is not None else 1.0),
            "start": float(unit.get("guidance_start") or 0.0),
            "end": float(unit.get("guidance_end", 1.0) if unit.get("guidance_end") is not None else 1.0),
            "resize": by_label(unit.get("resize_mode", "Crop and Resize"), RESIZE, f"{prefix}.resize_mode"),
            "mode": by_label(unit.get("control_mode", "Balanced"), MODES, f"{prefix}.control_mode"),
        }
        try:
            check_control_numbers(unit_settings["weight"], unit_settings["start"], unit_settings["end"])
        except InvalidOptionError as exc:
            raise FieldError(prefix, str(exc)) from None
        units.append(unit_settings)
    return units


def preprocessed(image: Image.Image, kind: str, unit: dict[str, Any], prefix: str) -> Image.Image:
    """The extension's preprocessing: the image resized so its shorter side is `processor_res` (bicubic up, area
    down, as the extension's cv2 resize), then the control image (ldm.io.control_images) with threshold_a/threshold_b
    as the low/high thresholds; -1 or none: the extension's defaults (512, 100, 200). Pixel perfect (a resolution
    from the generation size) is not served."""
    if unit.get("pixel_perfect"):
        raise FieldError(f"{prefix}.pixel_perfect", "pixel perfect is not served with a preprocessor; give "
                         "processor_res")  # fmt: skip

    def setting(name: str, default: float) -> float:
        value = unit.get(name)
        return default if value is None or value == -1 else value

    resolution = int(setting("processor_res", PROCESSOR_RES))
    if not 64 <= resolution <= 2048:
        raise FieldError(f"{prefix}.processor_res", f"must be between 64 and 2048 (or -1), got {resolution}")
    scale = resolution / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    resized = image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX)
    try:
        return control_image(resized, kind, float(setting("threshold_a", CANNY_LOW)),
                             float(setting("threshold_b", CANNY_HIGH)))  # fmt: skip
    except InvalidOptionError as exc:
        raise FieldError(f"{prefix}.threshold_a", str(exc)) from None
