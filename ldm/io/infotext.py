"""The `parameters` text of a PNG in AUTOMATIC1111's layout ("infotext"), written and read.

Viewers, civitai and A1111's own "PNG Info" tab read this layout:

    a red apple, studio light
    Negative prompt: blurry, text
    Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 3f2a9c01de, Model: model

The prompt is every line before `Negative prompt:`, the negative prompt every line after it up to the
last, and the last line holds `Name: value` pairs. A value that holds a comma, a colon or a line break is
written as a JSON string, as A1111 does; a prompt never is. The model hash is A1111's short hash: the
first 10 hex digits of the file's SHA-256. Settings that A1111 has no name for (precision, spacing,
threshold) live only in the full JSON that `ldm.io.images.save_png` writes beside this text.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from ldm.core.errors import LdmError
from ldm.io.a1111_samplers import A1111_SAMPLERS, SCHEDULE_SETTINGS, sampler_settings, schedule_type_of, split_schedule
from ldm.io.controlnet_infotext import controlnet_fields
from ldm.io.task_infotext import TASK_SETTING_TYPES, task_fields, task_settings


class InfotextError(LdmError, ValueError):
    """A parameters text that names no setting we can use."""


# Our sampler names -> A1111's. Karras spacing is a separate "Schedule type" field in A1111 >= 1.9
# (ldm.io.a1111_samplers).
SAMPLER_NAMES = {
    "ddim": "DDIM",
    "plms": "PLMS",
    "ddpm": "DDPM",
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "lms": "LMS",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "unipc": "UniPC",
    "lcm": "LCM",
}
SAMPLERS_BY_A1111_NAME = {v: k for k, v in SAMPLER_NAMES.items()}
# Our seamless tiling (ldm.models.seamless) -> A1111's "Tiling" field (True: both axes); "x" and "y" as they are.
TILING_FIELD = {"xy": "True", "x": "x", "y": "y"}
TILING_READ = {**{v: k for k, v in TILING_FIELD.items()}, "False": None}

# One `Name: value` pair of the last line; a value is either a JSON string or runs to the next comma. A1111's
# pattern, less its leading \s* and with names of at most 64 characters: each start of a match then scans a bounded
# name, where A1111's rescanned a whole run of name characters (or spaces) from every start in it, quadratic in the
# line's length (minutes for a 200,000-character line).
PARAM = re.compile(r'(\w[\w \-/]{1,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# The longest `parameters` or `ldm` text read from an image, in characters: two prompts at their limit
# (ldm.core.limits.MAX_PROMPT_CHARS) and every setting fit many times over; a longer one is refused unparsed.
MAX_METADATA_CHARS = 256 * 1024
# A PNG's text chunks are checked from their headers before Pillow reads them: at most this many bytes each (Pillow
# itself stops a compressed chunk at 1 MB decompressed, PngImagePlugin.MAX_TEXT_CHUNK), and at most this many
# chunks before the pixel data.
MAX_TEXT_CHUNK_BYTES = 1024 * 1024
MAX_CHUNKS_BEFORE_PIXELS = 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quote(value: Any) -> str:
    """A value as A1111 writes it: bare unless a comma, colon or line break would cut it."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5", as A1111 shows CFG scales."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _short_hashes(named: Any) -> str | None:
    pairs = [f"{name}: {str(sha)[:12]}" for name, sha in named if name and sha]
    return ", ".join(pairs) or None


def _step_fraction(settings: dict[str, Any]) -> str | None:
    steps, refined = settings.get("steps"), settings.get("refiner_steps")
    return None if not steps or refined is None else format_number((steps - refined) / steps)


def format_infotext(settings: dict[str, Any]) -> str:
    """The A1111 `parameters` text for an image's settings (`ldm.tasks.results.Settings.image`)."""
    fields: dict[str, Any] = {
        "Steps": settings.get("steps"),
        "Sampler": SAMPLER_NAMES.get(settings.get("sampler", ""), settings.get("sampler")),
        "Schedule type": schedule_type_of(settings),
        "CFG scale": format_number(settings["guidance_scale"]) if "guidance_scale" in settings else None,
        "Seed": settings.get("seed"),
        "Size": f"{settings['width']}x{settings['height']}" if "width" in settings and "height" in settings else None,
        "Model hash": str(settings["model_sha256"])[:10] if settings.get("model_sha256") else None,
        "Model": Path(str(settings["model_file"])).stem if settings.get("model_file") else None,
        "VAE hash": str(settings["vae_sha256"])[:10] if settings.get("vae_sha256") else None,  # --vae
        "VAE": settings.get("vae_file"),
        "Clip skip": settings.get("clip_skip"),  # only when chosen (--clip-skip); else the model's own
        "Backend": settings.get("backend"),  # only another than torch (--backend openvino)
        "Denoising strength": settings.get("strength"),
        "Refiner": Path(str(settings["refiner_file"])).stem if settings.get("refiner_file") else None,
        "Refiner switch at": _step_fraction(settings),  # A1111's is a step fraction (ldm.tasks.sdxl_refiner)
        # A1111 calls DDIM's eta "Eta DDIM" and the ancestral samplers' "Eta"; 0 is not written.
        ("Eta DDIM" if settings.get("sampler") == "ddim" else "Eta"): settings.get("eta") or None,
        "CFG Rescale phi": settings.get("guidance_rescale") or None,
        # Seamless tiling: A1111 writes "Tiling: True" (both axes); one axis as its name.
        "Tiling": TILING_FIELD.get(settings.get("tiling")),
        # A1111's short hashes of the extra networks (sha256, first 12 hex digits), as civitai reads them.
        "Lora hashes": _short_hashes(
            (Path(str(x.get("file", ""))).stem, x.get("sha256"))
            for x in settings.get("loras") or ()
            if not x.get("merged")
        ),
        "TI hashes": _short_hashes((x.get("name"), x.get("sha256")) for x in settings.get("embeddings") or ()),
    }
    fields.update(controlnet_fields(settings))  # --control, as A1111's ControlNet extension writes it
    fields.update(task_fields(settings))  # the hires fix, inpainting only the masked area
    params = ", ".join(f"{name}: {quote(value)}" for name, value in fields.items() if value is not None)
    lines = [str(settings.get("prompt", ""))]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    lines.append(params)
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, str]:
    """Fields of an A1111 `parameters` text under A1111's names, read by the rules A1111's reader uses.

    "Prompt" and "Negative prompt" come from the lines; every pair of the last line becomes a field,
    JSON strings decoded; "Size" is also split into "Size-1" (width) and "Size-2" (height).
    """
    check_metadata_length(text, "the parameters text")
    lines = text.strip().split("\n")
    last = lines[-1]
    if len(PARAM.findall(last)) < 3:  # not a settings line: it belongs to the prompt
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines[:-1]:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for name, value in PARAM.findall(last):
        value = unquote(value.strip())
        fields[name.strip()] = value
        if name.strip() == "Size" and re.fullmatch(r"\d+x\d+", value):
            fields["Size-1"], fields["Size-2"] = value.split("x")
    return fields


def settings_from_infotext(text: str) -> dict[str, Any]:
    """Our settings (the keys of `ldm.tasks.results.settings_of`) from an A1111 text, for the fields that map.

    Fields without a counterpart (ADetailer, ...) are left out; an unknown sampler is an error.
    """
    fields = parse_infotext(text)
    # A1111 reads every prompt in its syntax (75-token chunks, BREAK, (word:1.2) emphasis, [from:to:when] and [a|b]
    # editing: ldm.models.prompt_options' "a1111"), so its images are remade that way.
    settings: dict[str, Any] = {
        "prompt": fields["Prompt"],
        "negative_prompt": fields["Negative prompt"],
        "long_prompts": True,
        "emphasis": True,
        "prompt_editing": True,
    }
    try:
        for name, key, kind in (
            ("Steps", "steps", int),
            ("CFG scale", "guidance_scale", float),
            ("Seed", "seed", int),
            ("Size-1", "width", int),
            ("Size-2", "height", int),
            ("Denoising strength", "strength", float),
            ("CFG Rescale phi", "guidance_rescale", float),
        ):
            if name in fields:
                settings[key] = kind(fields[name])
        for name in ("Eta DDIM", "Eta"):
            if name in fields:
                settings["eta"] = float(fields[name])
        if "Tiling" in fields:
            if fields["Tiling"] not in TILING_READ:
                raise ValueError(f"Tiling {fields['Tiling']!r}: known are {', '.join(TILING_READ)}")
            settings["tiling"] = TILING_READ[fields["Tiling"]]
        settings.update(task_settings(fields))  # the hires fix, inpainting only the masked area
    except ValueError as exc:
        raise InfotextError(f"bad value in the parameters text: {exc}") from None
    if "Sampler" in fields:  # with its schedule type: ldm.io.a1111_samplers
        label, schedule = fields["Sampler"], fields.get("Schedule type")
        if re.fullmatch(r"[a-z][a-z0-9_]*", label):  # our own name (pc, unipc_bh2: A1111 has none); A1111's are
            # capitalised ("Euler a"). An unknown one is refused where the command line's sampler is checked.
            chosen = {"sampler": label, **SCHEDULE_SETTINGS.get(schedule or "", {})}
        else:
            chosen = sampler_settings(label, schedule, from_a1111="Version" in fields)
        if chosen is None and split_schedule(label)[0] not in A1111_SAMPLERS:
            raise InfotextError(f"sampler {label!r} has no counterpart here; known: {', '.join(A1111_SAMPLERS)}")
        if chosen is None:
            raise InfotextError(
                f"schedule type {schedule!r} has no counterpart here; known: Automatic, {', '.join(SCHEDULE_SETTINGS)}"
            )
        settings.update(chosen)
    if "Model hash" in fields:
        settings["model_hash"] = fields["Model hash"]
    if "Refiner switch at" in fields:  # a step fraction, kept as read: ldm.tasks.sdxl_refiner.with_refiner_switch
        try:  # turns it into our timestep fraction, which needs the model's schedule
            fraction = float(fields["Refiner switch at"])
        except ValueError:
            fraction = math.nan
        if not 0.0 < fraction < 1.0:
            raise InfotextError(
                f"bad 'Refiner switch at' in the parameters text: {fields['Refiner switch at']!r} is "
                "not a fraction strictly between 0 and 1"
            )
        settings["refiner_switch_at_steps"] = fraction
        if "Refiner" in fields:
            settings["refiner_name"] = fields["Refiner"]
    if "steps" not in settings and "seed" not in settings:
        raise InfotextError("the parameters text has no Steps or Seed: not an A1111 or ldm image")
    return settings


def as_made(settings: dict[str, Any]) -> dict[str, Any]:
    """Our JSON read as what it ran with: a field written since a choice existed is absent from older images, which
    ran with what was then the only behaviour. DDIM was the k variant before `ddim_variant` (ldm.sampling.options) existed."""  # noqa: E501
    if settings.get("sampler") == "ddim" and "ddim_variant" not in settings:
        return {**settings, "ddim_variant": "k"}
    return settings


def check_metadata_length(text: str, name: str) -> None:
    if len(text) > MAX_METADATA_CHARS:
        raise InfotextError(
            f"{name} is {len(text):,} characters long; the limit is {MAX_METADATA_CHARS:,} "
            "(ldm.io.infotext.MAX_METADATA_CHARS)"
        )


def check_png_chunks(path: Path) -> None:
    """Refuse, from the chunk headers alone, a PNG whose text chunks are too large to read (ldm.io.infotext limits);
    a file that is not a PNG is left to Pillow."""
    with path.open("rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return
        for _ in range(MAX_CHUNKS_BEFORE_PIXELS):
            header = f.read(8)
            if len(header) < 8:
                return
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):  # Pillow reads no further without decoding the pixels
                return
            if kind in (b"tEXt", b"zTXt", b"iTXt") and length > MAX_TEXT_CHUNK_BYTES:
                raise InfotextError(
                    f"{path} has a text chunk of {length:,} bytes; the limit is "
                    f"{MAX_TEXT_CHUNK_BYTES:,} (ldm.io.infotext.MAX_TEXT_CHUNK_BYTES)"
                )
            f.seek(length + 4, 1)  # the data and its CRC
    raise InfotextError(f"{path} has more than {MAX_CHUNKS_BEFORE_PIXELS} chunks before its pixels; not read")


def read_png_text(path: Path) -> dict[str, Any]:
    """The text chunks before the pixel data (where Pillow, and so A1111 and we, write them), without decoding a
    pixel. Pillow's own limits stay on: a compressed chunk over 1 MB decompressed, 64 MB of text in all, and images
    over Image.MAX_IMAGE_PIXELS (which img2img refuses too) are refused in one line."""
    import warnings

    from PIL import Image

    try:
        check_png_chunks(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return dict(image.info)  # never image.text: it decodes the pixels to look for chunks after them
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InfotextError(f"{path} is too large to open safely ({str(exc).split('.')[0]})") from None
    except Image.UnidentifiedImageError:
        raise InfotextError(f"cannot read {path}: not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, struct.error) as exc:  # Pillow: "Decompressed Data Too Large", ...
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise InfotextError(f"cannot read the metadata of {path}: {reason}") from None


# The type of each of our settings (the `ldm` JSON of `save_png`), as the command line's options take them; null is
# "not set". Sampler options (snr, corrector_steps, ...) are checked as --sampler-option's are (ldm.sampling.options).
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        (
            "prompt",
            "negative_prompt",
            "sampler",
            "spacing",
            "precision",
            "backend",
            "ddim_variant",
            "tiling",
            "label",
            "model_file",
            "model_sha256",
            "model_hash",
            "model_name",
        ),
        (str,),
    ),
    **dict.fromkeys(("seed", "height", "width", "steps"), (int,)),
    **dict.fromkeys(("guidance_scale", "eta", "guidance_rescale", "threshold", "strength"), (int, float)),
    **dict.fromkeys(("karras", "long_prompts", "emphasis", "prompt_editing", "learned_variance"), (bool,)),
    **TASK_SETTING_TYPES,
}
TYPE_NAMES = {(str,): "text", (int,): "an integer", (int, float): "a number", (bool,): "true or false"}


def check_setting_types(settings: dict[str, Any], source: str) -> None:
    """Refuse, in one line naming the field, a setting of the wrong type (a string seed, a list as the sampler)."""
    for key, kinds in SETTING_TYPES.items():
        value = settings.get(key)
        if value is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            raise InfotextError(f"{source}: setting {key!r} must be {TYPE_NAMES[kinds]}, got {value!r:.60}")


def settings_from_png(path: str | Path) -> dict[str, Any]:
    """The settings an image was made with: our full JSON ("ldm" chunk) if present (`as_made`), else A1111's text
    (which has no DDIM variant: the model's own applies). Both are bounded in length and type-checked
    (`check_setting_types`); their ranges are checked where the command line's are."""
    path = Path(path)
    if not path.is_file():
        raise InfotextError(f"image not found: {path}")
    chunks = read_png_text(path)
    if isinstance(chunks.get("ldm"), str):
        check_metadata_length(chunks["ldm"], f"the ldm settings of {path}")
        try:
            settings = json.loads(chunks["ldm"])
        except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, an integer of over 4,300 digits
            reason = getattr(exc, "msg", None) or str(exc).split(":")[0] or "nested too deep"
            raise InfotextError(f"{path}: the ldm settings are not valid JSON ({reason})") from None
        if isinstance(settings, dict):
            check_setting_types(settings, f"{path} (ldm settings)")
            return as_made(settings)
    if isinstance(chunks.get("parameters"), str):
        settings = settings_from_infotext(chunks["parameters"])
        check_setting_types(settings, f"{path} (parameters text)")
        return settings
    raise InfotextError(f"{path} holds no generation settings (no 'ldm' or 'parameters' text)")
