"""An A1111 txt2img or img2img body -> a checked `GenerationRequest` (what the worker runs), or a FieldError naming
the field. Types and what each field may ask for: ldm.interfaces.server.fields; the limits: ServerLimits."""

from __future__ import annotations

import base64
import binascii
import io
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ldm.core import defaults
from ldm.core.limits import MAX_PROMPT_CHARS
from ldm.interfaces.server.fields import FieldError, check_fields
from ldm.io.a1111_samplers import A1111_SAMPLERS, SCHEDULE_SETTINGS, sampler_settings, split_schedule
from ldm.io.images import InvalidImageError, open_image
from ldm.io.task_infotext import HIRES_UPSCALERS_BY_NAME
from ldm.sampling.samplers import SAMPLERS

SEED_MAX = 2**32 - 1  # A1111's seeds are 32-bit; -1 asks for a random one
SCHEDULERS = ("Automatic", *SCHEDULE_SETTINGS)
# hr_upscaler -> our hires upscaler (ldm.tasks.hires): A1111's "Latent" (bilinear, no antialiasing) and the names our
# metadata writes for the two A1111 lacks ("Bicubic", "LDM x4"); our own names too. Absent: A1111's default, "Latent".
HR_UPSCALERS = {**HIRES_UPSCALERS_BY_NAME, **{ours: ours for ours in defaults.HIRES_UPSCALERS}}
# hires fields accepted where they ask for the first pass's own: empty, A1111's "Use same ..." or the same value
HIRES_SAME = {
    "hr_sampler_name": ("sampler_name", "Use same sampler"),
    "hr_scheduler": ("scheduler", "Use same scheduler"),
    "hr_prompt": ("prompt", None),
    "hr_negative_prompt": ("negative_prompt", None),
}
# A1111 options a request's override_settings (or POST /options) may set, each read in requests/app.
OVERRIDABLE = ("sd_model_checkpoint",)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; `ldm serve --help` prints each (ldm.core.defaults.SERVE_*)."""

    max_body_bytes: int = defaults.SERVE_MAX_BODY_BYTES
    max_pixels: int = defaults.SERVE_MAX_PIXELS
    max_steps: int = defaults.SERVE_MAX_STEPS
    max_images: int = defaults.SERVE_MAX_IMAGES
    max_job_seconds: float = defaults.SERVE_MAX_JOB_SECONDS


@dataclass
class GenerationRequest:
    """One A1111 request, checked: what ldm.interfaces.server.worker runs."""

    task: str  # "txt2img", "img2img" or "inpaint"
    prompt: str
    negative_prompt: str
    seed: int
    batch_size: int
    n_iter: int
    width: int | None  # None: the model's (txt2img) or the image's (img2img) size
    height: int | None
    sampling: dict[str, Any]  # SamplingOptions fields over the model's own defaults
    strength: float | None = None
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    mask_blur: int | None = None
    checkpoint: str | None = None  # override_settings' sd_model_checkpoint: this request's model
    restore_checkpoint: bool = True
    send_images: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)  # the body as given, for the answer's `parameters`
    controls: list[dict[str, Any]] = field(default_factory=list)  # ControlNet units (controlnet_units.parse_units)
    refiner: str | None = None  # refiner_checkpoint: a listed SDXL refiner
    refiner_switch_at: float = 0.8  # A1111's: the fraction of the steps the base runs
    hires: dict[str, Any] | None = None  # enable_hr: HiresOptions' scale, steps, strength, upscaler
    inpaint_area: str = "whole"  # inpaint_full_res: "masked" (A1111's "Only masked") or "whole"
    mask_padding: int = 0  # inpaint_full_res_padding, px around the mask's box


def integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    value = default if value is None else value
    if not low <= value <= high:
        raise FieldError(name, f"must be between {low} and {high}, got {value}")
    return value


def number(body: dict[str, Any], name: str, default: float | None, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if not math.isfinite(value) or not low <= value <= high:
        raise FieldError(name, f"must be a number between {low:g} and {high:g}, got {value!r:.40}")
    return float(value)


def text(body: dict[str, Any], name: str) -> str:
    value = body.get(name) or ""
    if len(value) > MAX_PROMPT_CHARS:
        raise FieldError(name, f"is {len(value):,} characters; at most {MAX_PROMPT_CHARS:,}")
    return value


def sampler_fields(body: dict[str, Any]) -> dict[str, Any]:
    """sampler_name (or sampler_index where it is null) and scheduler -> our sampler and its grid; {}: the model's
    own. A1111's labels ("DPM++ 2M", the old "DPM++ 2M Karras"), and our own names (ddim, pc, ...)."""
    name_field = "sampler_name" if body.get("sampler_name") else "sampler_index"
    label = body.get(name_field) or ""
    scheduler = body.get("scheduler") or None
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise FieldError("scheduler", f"unknown schedule type {scheduler!r:.40}; known: {', '.join(SCHEDULERS)}")
    if not label:
        if scheduler not in (None, "Automatic"):
            raise FieldError("scheduler", "give a sampler_name with a schedule type")
        return {}
    if label in SAMPLERS:
        return {"sampler": label, **SCHEDULE_SETTINGS.get(scheduler or "", {})}
    settings = sampler_settings(label, scheduler or "Automatic", from_a1111=True)
    if settings is None:
        known = ", ".join(A1111_SAMPLERS)
        if split_schedule(label)[0] not in A1111_SAMPLERS:
            raise FieldError(name_field, f"unknown sampler {label!r:.60}; known: {known}")
        raise FieldError("scheduler", f"unknown schedule type {scheduler!r:.40}")
    if settings["sampler"] not in SAMPLERS:
        raise FieldError(name_field, f"sampler {label!r} is not served here; known: {known_samplers()}")
    return settings


def known_samplers() -> str:
    return ", ".join(label for label, (ours, _) in A1111_SAMPLERS.items() if ours in SAMPLERS)


def decode_image(data: Any, name: str, limits: ServerLimits, mode: str = "RGB") -> Image.Image:
    """A base64 image (a data: URL prefix allowed) through the size limit, read without decoding, and then the checks
    every image the CLI opens has (ldm.io.images.open_image: decompression bombs, unreadable formats)."""
    if not isinstance(data, str) or not data:
        raise FieldError(name, "must be a base64-encoded image")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(name, "is not valid base64 (send the image file's bytes, base64-encoded)") from None
    try:
        with Image.open(io.BytesIO(raw)) as probe:  # reads the header only
            width, height = probe.size
    except Exception:  # noqa: BLE001 - any failure to identify is the same answer
        raise FieldError(name, "is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    if width * height > limits.max_pixels:
        raise FieldError(name, f"{width}x{height} is over this server's limit of {limits.max_pixels:,} pixels")
    try:
        return open_image(raw, mode)
    except InvalidImageError as exc:
        raise FieldError(name, str(exc)) from None


def check_scripts(body: dict[str, Any], controlnets: list[str], limits: ServerLimits) -> list[dict[str, Any]]:
    """alwayson_scripts (keys case-insensitive): A1111's ControlNet extension's units (controlnet_units), and any
    script with no arguments, which asks for nothing; anything else is refused by name. Returns the enabled units."""
    from ldm.interfaces.server.controlnet_units import parse_units

    units = []
    for key, value in (body.get("alwayson_scripts") or {}).items():
        name = f"alwayson_scripts.{key}"
        args = value.get("args") if isinstance(value, dict) else None
        if not isinstance(value, dict) or not isinstance(args, (list, type(None))):
            raise FieldError(name, 'must be an object {"args": [...]}')
        if key.lower() == "controlnet":
            units += parse_units(args or [], key, controlnets, lambda data, field: decode_image(data, field, limits))
        elif args:
            raise FieldError(name, "this script is not served (A1111's extensions are not part of this server)")
    return units


def check_overrides(body: dict[str, Any]) -> str | None:
    """override_settings: the sd_model_checkpoint of this request (None: the loaded model)."""
    overrides = body.get("override_settings") or {}
    for key in overrides:
        if key not in OVERRIDABLE:
            raise FieldError(f"override_settings.{key}", f"is not served; known: {', '.join(OVERRIDABLE)}")
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise FieldError("override_settings.sd_model_checkpoint", "must be a model's title or name")
    return checkpoint


def parse_request(route: str, body: Any, limits: ServerLimits, controlnets: list[str] = ()) -> GenerationRequest:
    """The checked request of an A1111 txt2img/img2img body (FieldError naming the first bad field)."""
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    check_fields(route, body)
    controls = check_scripts(body, list(controlnets), limits)
    seed = integer(body, "seed", -1, -1, SEED_MAX)
    batch_size = integer(body, "batch_size", 1, 1, limits.max_images)
    n_iter = integer(body, "n_iter", 1, 1, limits.max_images)
    if batch_size * n_iter > limits.max_images:
        raise FieldError("n_iter", f"batch_size x n_iter is {batch_size * n_iter}; at most {limits.max_images}")
    width, height = body.get("width"), body.get("height")
    for name, value in (("width", width), ("height", height)):
        if value is not None and not 8 <= value <= limits.max_pixels // 8:
            raise FieldError(name, f"must be at least 8 and a multiple of 8, got {value}")
        if value is not None and value % 8:
            raise FieldError(name, f"must be a multiple of 8, got {value}")
    if width is not None and height is not None and width * height > limits.max_pixels:
        raise FieldError("width", f"{width}x{height} is over this server's limit of {limits.max_pixels:,} pixels")
    sampling = sampler_fields(body)  # prompts are read as A1111 reads them (generate.Generator._task)
    if body.get("steps") is not None:
        sampling["steps"] = integer(body, "steps", 0, 1, limits.max_steps)
    if body.get("cfg_scale") is not None:
        sampling["guidance_scale"] = number(body, "cfg_scale", None, 0.0, 100.0)
    if body.get("eta") is not None:
        sampling["eta"] = number(body, "eta", None, 0.0, 10.0)
    if body.get("tiling"):
        sampling["tiling"] = "xy"  # A1111's tiling wraps both axes
    request = GenerationRequest(
        task=route,
        prompt=text(body, "prompt"),
        negative_prompt=text(body, "negative_prompt"),
        seed=secrets.randbelow(SEED_MAX + 1) if seed == -1 else seed,
        batch_size=batch_size,
        n_iter=n_iter,
        width=width,
        height=height,
        sampling=sampling,
        checkpoint=check_overrides(body),
        restore_checkpoint=body.get("override_settings_restore_afterwards") is not False,
        send_images=body.get("send_images") is not False,
        parameters=dict(body),
        controls=controls,
    )
    if body.get("refiner_checkpoint") not in (None, "", "None"):
        if route != "txt2img":
            raise FieldError("refiner_checkpoint", "the refiner is served for txt2img only")
        request.refiner = body["refiner_checkpoint"]
        switch = number(body, "refiner_switch_at", 0.8, 0.0, 1.0)
        if not 0.0 < switch < 1.0:
            raise FieldError("refiner_switch_at", f"must be a fraction strictly between 0 and 1, got {switch:g}")
        request.refiner_switch_at = switch
    if route == "txt2img" and body.get("enable_hr"):
        request.hires = hires_fields(body, limits)
    if route == "img2img":
        add_images(request, body, limits)
    return request


def hires_fields(body: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
    """enable_hr's fields -> HiresOptions' keywords (ldm.tasks.hires): A1111's hr_scale, hr_second_pass_steps (0: the
    first pass's), denoising_strength and hr_upscaler; the hr_* fields that would change the second pass's sampler,
    schedule or prompts only at the first pass's own."""
    from ldm.tasks.hires import MAX_HIRES_SCALE

    for name, (first, same) in HIRES_SAME.items():
        value = body.get(name)
        if value not in (None, "", same) and value != body.get(first):
            raise FieldError(name, f"{value!r:.60} is not served (the hires pass uses the first pass's {first}); "
                             "leave it empty")  # fmt: skip
    name = body.get("hr_upscaler") or "Latent"
    if name not in HR_UPSCALERS:
        raise FieldError("hr_upscaler", f"unknown upscaler {name!r:.60}; served: {', '.join(HR_UPSCALERS)}")
    return {
        "scale": number(body, "hr_scale", defaults.HIRES_SCALE, 1.0, MAX_HIRES_SCALE),
        "steps": integer(body, "hr_second_pass_steps", defaults.HIRES_STEPS, 0, limits.max_steps),
        "strength": number(body, "denoising_strength", defaults.HIRES_STRENGTH, 0.0, 1.0),
        "upscaler": HR_UPSCALERS[name],
    }


def add_images(request: GenerationRequest, body: dict[str, Any], limits: ServerLimits) -> None:
    """img2img's init image, strength and (inpainting) mask."""
    images = body.get("init_images") or []
    if len(images) != 1:
        raise FieldError("init_images", f"give exactly one base64 image, got {len(images)}")
    request.init_image = decode_image(images[0], "init_images[0]", limits)
    request.strength = number(body, "denoising_strength", defaults.STRENGTH["img2img"], 0.0, 1.0)
    if body.get("mask") is None:
        return
    request.task = "inpaint"
    request.mask = decode_image(body["mask"], "mask", limits, mode="L")
    if request.mask.size != request.init_image.size:
        raise FieldError("mask", f"is {request.mask.size}, the image {request.init_image.size}: give them one size")
    if body.get("inpainting_mask_invert") not in (None, 0, 1):
        raise FieldError("inpainting_mask_invert", "must be 0 (repaint white) or 1 (repaint black)")
    if body.get("inpainting_mask_invert") == 1:
        request.mask = request.mask.point(lambda v: 255 - v)
    fill = body.get("inpainting_fill")
    # 1 (original): the hole starts from the noised original, which is what inpaint does; at strength 1 the start is
    # pure noise whatever the hole was filled with, so every fill gives that image.
    if fill not in (None, 0, 1, 2, 3) or (fill not in (None, 1) and request.strength < 1.0):
        raise FieldError(
            "inpainting_fill", f"{fill!r} is not served below denoising_strength 1; use 1 (original) there"
        )
    blur = integer(body, "mask_blur", 4, 0, 64) if body.get("mask_blur") is not None else None
    request.mask_blur = blur
    if body.get("inpaint_full_res") is not False:  # A1111's default: "Only masked", its padding 0
        request.inpaint_area = "masked"
        request.mask_padding = integer(body, "inpaint_full_res_padding", 0, 0, 1024)
