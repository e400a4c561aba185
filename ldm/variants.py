"""The default model's two variants: the few-step student distilled from it (ldm.diffusion.distillation) and the full model.

Once checkpoints/emoji/student.{yaml,safetensors} are shipped (a derived model over model.safetensors, ldm.formats.derived),
text-to-image uses the student by default (`ldm txt2img`, `load_model()`, the app's text-to-image page); the full
model is one option away (`--model full`, `load_model(variant="full")`). Without the student nothing changes.

A model's inference config may carry its own sampling defaults, used where the caller leaves them open, and a name
that image metadata records (`model_name`):

    name: emoji 4-step student
    sampling: {steps: 4, spacing: trailing, sampler: ddim, guidance_scale: 7.5}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldm.core.defaults import default_checkpoint_path, default_config_path, default_model_files, shipped_path
from ldm.core.errors import InvalidOptionError, MissingFileError

VARIANTS = ("student", "full")
# The sampling options a config's `sampling:` may set, and the `ldm txt2img` option (argparse dest) of each.
SAMPLING_KEYS = {"steps": "steps", "guidance_scale": "scale", "sampler": "sampler", "spacing": "spacing", "eta": "eta"}
STUDENT_FILE = "student.safetensors"  # what a student image's metadata names (model_file)
FULL_FILE = "model.safetensors"


def student_files() -> tuple[Path, Path] | None:
    """(config, weights) of the shipped student, or None when it is not shipped."""
    return default_model_files("student")


def default_variant() -> str:
    """ "student" where the student is shipped, else "full"."""
    return "student" if student_files() is not None else "full"


def shipped_model_files(task: str = "txt2img", variant: str | None = None) -> tuple[Path, Path]:
    """(config, weights) of the shipped model for `task`; for text-to-image the `variant` (None: the default one)."""
    if variant is not None and variant not in VARIANTS:
        raise InvalidOptionError(f"unknown model variant {variant!r}; known: {', '.join(VARIANTS)}")
    if task != "txt2img" or (variant or default_variant()) == "full":
        if variant == "student":
            raise InvalidOptionError(f"the student is a text-to-image model; {task} uses the full model")
        return default_model_files(task) or (default_config_path(), default_checkpoint_path())
    files = student_files()
    if files is None:
        raise MissingFileError(
            f"the few-step student is not shipped ({shipped_path('checkpoints/emoji/' + STUDENT_FILE)} "
            "is missing); use the full model (--model full)"
        )
    return files


def variant_of_file(model_file: str | None) -> str | None:
    """The variant whose shipped weights file an image's metadata names ("student.safetensors" -> "student")."""
    return {STUDENT_FILE: "student", FULL_FILE: "full"}.get(Path(str(model_file)).name) if model_file else None


def sampling_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's `sampling:` defaults, checked: only SAMPLING_KEYS ({} without the section)."""
    section = cfg.get("sampling") or {}
    if not isinstance(section, dict):
        raise InvalidOptionError("the config's sampling: must be a mapping, e.g. {steps: 4, spacing: trailing}")
    unknown = sorted(set(section) - set(SAMPLING_KEYS))
    if unknown:
        raise InvalidOptionError(f"the config's sampling: has {unknown[0]!r}; known: {', '.join(SAMPLING_KEYS)}")
    if "steps" in section and (not isinstance(section["steps"], int) or section["steps"] < 1):
        raise InvalidOptionError(f"the config's sampling.steps must be a whole number >= 1, got {section['steps']!r}")
    return dict(section)


def config_sampling(path: str | Path | None) -> dict[str, Any]:
    """`sampling_section` of a config file; {} for none, a missing file (its loading says so) or another format."""
    if path is None or not Path(path).is_file() or Path(path).suffix not in (".yaml", ".yml"):
        return {}
    from ldm.core.config import load_config

    cfg = load_config(path)
    return sampling_section(cfg) if isinstance(cfg, dict) else {}
