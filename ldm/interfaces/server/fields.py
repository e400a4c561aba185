"""A1111's request fields for txt2img and img2img, in ONE table: each field's JSON type and what happens to it.

A1111 clients send every field of A1111's request models with its default (read from A1111's modules/api/models.py
and modules/processing.py). Each field here is one of:

- USED: mapped onto our request (`ldm.interfaces.server.requests` reads it);
- NEUTRAL(values): accepted at a value that asks for nothing (`restore_faces: false`, `styles: []`), refused with a
  422 naming the field at any other;
- WHEN_OFF(field, off): ignored while `field` is at its off value (the hires fields without `enable_hr`, the
  inpainting fields without a `mask`), checked as the row below it says once it is on;
- ANY: accepted at any value of its type, because it changes nothing we make (`do_not_save_samples`).

A feature not served yet is a NEUTRAL row; switching it on is changing that row to USED and reading it in `requests`
(as the hires fix, "only masked" inpainting and tiling were). A field that is not in the table is refused by name:
nothing a client asks for is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ldm.core.errors import LdmError


class FieldError(LdmError, ValueError):
    """A request field with a wrong type or a value we cannot serve; answered 422 with the field's name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


# JSON types by name -> the Python types json.loads gives (bool is checked apart: it is an int in Python).
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


@dataclass(frozen=True)
class Field:
    type: str  # a key of TYPES; None is always accepted and means the default
    policy: str  # "used", "neutral", "any"
    neutral: tuple[Any, ...] = ()  # the accepted values of a "neutral" field (None always is)
    when_off: tuple[str, Any] | None = None  # (controlling field, its off value): ignored while it is off
    why: str = ""  # what the refused value would ask for, for the 422


def used(kind: str) -> Field:
    return Field(kind, "used")


def neutral(kind: str, *values: Any, why: str) -> Field:
    return Field(kind, "neutral", values, why=why)


def any_value(kind: str) -> Field:
    return Field(kind, "any")


def hires(kind: str, *values: Any, why: str = "") -> Field:
    """A hires-fix field: ignored without enable_hr; with it, used (no values) or accepted at its neutral values."""
    policy = "neutral" if values else "used"
    return Field(kind, policy, values, when_off=("enable_hr", False), why=why)


def with_mask(field: Field) -> Field:
    """An inpainting field: ignored without a mask."""
    return Field(field.type, field.policy, field.neutral, ("mask", None), field.why)


SEED_EXTRAS = "variation seeds (subseed) and seed resizing are not served"
# The fields both routes share (StableDiffusionProcessing's, and the API's additions).
COMMON: dict[str, Field] = {
    "prompt": used("str"),
    "negative_prompt": used("str"),
    "styles": neutral("list", [], why="saved styles are A1111's own; put the style's words in the prompt"),
    "seed": used("int"),
    "subseed": Field("int", "any", when_off=("subseed_strength", 0)),
    "subseed_strength": neutral("float", 0, why=SEED_EXTRAS),
    "seed_resize_from_h": neutral("int", -1, 0, why=SEED_EXTRAS),
    "seed_resize_from_w": neutral("int", -1, 0, why=SEED_EXTRAS),
    "seed_enable_extras": any_value("bool"),
    "sampler_name": used("str"),
    "sampler_index": used("str"),  # the sampler where sampler_name is null (A1111's API does the same)
    "scheduler": used("str"),
    "batch_size": used("int"),
    "n_iter": used("int"),
    "steps": used("int"),
    "cfg_scale": used("float"),
    "width": used("int"),
    "height": used("int"),
    "restore_faces": neutral("bool", False, why="face restoration is not served"),
    "tiling": used("bool"),  # seamless tiling on both axes (ldm.models.seamless), as A1111's
    "do_not_save_samples": any_value("bool"),  # the server never saves
    "do_not_save_grid": any_value("bool"),
    "eta": used("float"),
    "s_min_uncond": neutral("float", 0, why="negative-guidance skipping is not served"),
    "s_churn": neutral("float", 0, why="the samplers' churn options are not served through the A1111 API"),
    "s_tmax": neutral("float", 0, why="the samplers' churn options are not served through the A1111 API"),
    "s_tmin": neutral("float", 0, why="the samplers' churn options are not served through the A1111 API"),
    "s_noise": neutral("float", 1, why="the samplers' churn options are not served through the A1111 API"),
    "override_settings": used("dict"),
    "override_settings_restore_afterwards": used("bool"),
    "refiner_checkpoint": used("str"),  # a listed SDXL refiner (txt2img), "" or "None": none
    "refiner_switch_at": Field("float", "used", when_off=("refiner_checkpoint", None)),
    "disable_extra_networks": any_value("bool"),  # <lora:...> in prompts is not parsed here either way
    "comments": neutral("dict", {}, why="comments are A1111's own"),
    "script_name": neutral("str", "", why="A1111's scripts are not served"),
    "script_args": Field("list", "neutral", ([],), ("script_name", None), "A1111's scripts are not served"),
    "send_images": used("bool"),
    "save_images": neutral("bool", False, why="the server does not save images; they are in the answer"),
    "alwayson_scripts": used("dict"),  # ControlNet units (controlnet_units); any other script only without arguments
    "force_task_id": any_value("str"),
    "infotext": neutral("str", "", why="reading the settings from an infotext is not served; send the fields"),
}
TXT2IMG: dict[str, Field] = {
    **COMMON,
    "enable_hr": used("bool"),  # the hires fix (ldm.tasks.hires), with the fields below
    "denoising_strength": hires("float"),  # the hires pass's strength
    "firstphase_width": hires("int", 0, why="A1111's old first-pass size; send width, height and hr_scale"),
    "firstphase_height": hires("int", 0, why="A1111's old first-pass size; send width, height and hr_scale"),
    "hr_scale": hires("float"),
    "hr_upscaler": hires("str"),  # requests.HR_UPSCALERS
    "hr_second_pass_steps": hires("int"),
    "hr_resize_x": hires("int", 0, why="a hires target size is not served; give hr_scale"),
    "hr_resize_y": hires("int", 0, why="a hires target size is not served; give hr_scale"),
    "hr_checkpoint_name": hires("str", "", "Use same checkpoint", why="the hires pass runs the first pass's model"),
    # the first pass's own (empty, "Use same ...", or equal to it): requests.check_hires_same
    "hr_sampler_name": hires("str"),
    "hr_scheduler": hires("str"),
    "hr_prompt": hires("str"),
    "hr_negative_prompt": hires("str"),
    "hr_additional_modules": hires("list", [], ["Use same choices"], why="the hires pass runs the first pass's model"),
}
IMG2IMG: dict[str, Field] = {
    **COMMON,
    "init_images": used("list"),
    "resize_mode": neutral("int", 0, why="only resize mode 0 (just resize) is served"),
    "denoising_strength": used("float"),
    "image_cfg_scale": neutral("float", why="instruct-pix2pix image guidance is not served"),
    "mask": used("str"),
    "mask_blur": with_mask(used("int")),
    "mask_blur_x": with_mask(any_value("int")),  # mask_blur, where given, sets both (as in A1111)
    "mask_blur_y": with_mask(any_value("int")),
    "mask_round": with_mask(neutral("bool", True, why="the mask is always rounded to white or black here")),
    "inpainting_fill": with_mask(used("int")),
    "inpaint_full_res": with_mask(used("bool")),  # "Only masked" (A1111's default, true) or the whole picture
    "inpaint_full_res_padding": with_mask(used("int")),
    "inpainting_mask_invert": with_mask(used("int")),
    "initial_noise_multiplier": neutral("float", 1, why="an initial noise multiplier is not served"),
    "latent_mask": neutral("str", "", why="a separate latent mask is not served"),
    "include_init_images": any_value("bool"),  # A1111 leaves them out of the answer too
}
ROUTE_FIELDS = {"txt2img": TXT2IMG, "img2img": IMG2IMG}


def type_name(kind: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "list": "a list", "dict": "an object"}[kind]  # fmt: skip


def check_type(name: str, value: Any, kind: str) -> None:
    """Refuse a value of the wrong JSON type (a string as steps, 1 as a bool, 1.5 as an integer)."""
    if value is None:
        return
    wrong_bool = isinstance(value, bool) and kind != "bool"
    if wrong_bool or not isinstance(value, TYPES[kind]):
        raise FieldError(name, f"must be {type_name(kind)}, got {value!r:.60}")


def is_off(body: dict[str, Any], field: str, off: Any) -> bool:
    """Whether a controlling field is at its off value (absent, null, the value, or an empty string)."""
    value = body.get(field)
    return value is None or value == off or value == "" or (off is None and value == "None")


def check_fields(route: str, body: dict[str, Any]) -> None:
    """Every field of `body` known to the route's table, of its type, and at a value we serve (FieldError naming the
    first that is not)."""
    table = ROUTE_FIELDS[route]
    for name, value in body.items():
        spec = table.get(name)
        if spec is None:
            raise FieldError(name, f"is not a field of A1111's {route} request")
        check_type(name, value, spec.type)
        if spec.when_off is not None and is_off(body, *spec.when_off):
            continue
        if spec.policy == "neutral" and value is not None and value not in spec.neutral:
            raise FieldError(name, f"{value!r:.60} is not served ({spec.why}); leave it at its default")
