"""Where the shipped default model and configs live, in a checkout and in an installed wheel."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

# ldm/shipped/ links to the repository's checkpoints/ and configs/; a wheel carries the files themselves
# there (pyproject.toml's package data). LDM_HOME points at another folder that holds the two.
SHIPPED = Path(str(files("ldm") / "shipped"))


def shipped_path(relative: str | os.PathLike) -> Path:
    """A file shipped with the package, e.g. "configs/stable-diffusion/v2-inference.yaml"."""
    home = os.environ.get("LDM_HOME")
    return (Path(home) if home else SHIPPED) / relative


def default_config_path() -> Path:
    return shipped_path("checkpoints/emoji/model.yaml")


def default_checkpoint_path() -> Path:
    return shipped_path("checkpoints/emoji/model.safetensors")


# The shipped model of each task, by file stem in checkpoints/emoji/: the inpainter, the upscaler and the few-step
# student are derived from the text-to-image model (ldm.formats.derived) and used by default where shipped (the student
# for text-to-image, ldm.formats.variants).
SHIPPED_MODELS = {"txt2img": "model", "inpaint": "inpaint", "upscale": "upscaler", "student": "student"}


def default_model_files(task: str = "txt2img") -> tuple[Path, Path] | None:
    """(config, weights) of the shipped model for `task`, or None when it is not shipped."""
    stem = SHIPPED_MODELS.get(task, "model")
    config, weights = (
        shipped_path(f"checkpoints/emoji/{stem}.yaml"),
        shipped_path(f"checkpoints/emoji/{stem}.safetensors"),
    )
    return (config, weights) if config.is_file() and weights.is_file() else None


# The shipped default model's canny ControlNet: what `--control IMAGE` uses when it names no ControlNet file, and the
# variant such a command samples with where --model leaves it open (docs/controlnet.md says why this one).
DEFAULT_CONTROLNET = "checkpoints/emoji/controlnet-canny.safetensors"
CONTROLNET_VARIANT = "student"


def default_controlnet_path() -> Path | None:
    """The shipped default model's ControlNet, or None when it is not shipped."""
    path = shipped_path(DEFAULT_CONTROLNET)
    return path if path.is_file() else None


# The one set of defaults. The CLI (whose --help prints them), the Python API and the app all read them
# here, so that the same settings give the same image wherever they are typed.
SEED = 42
DEVICE = "auto"  # cuda if available, else cpu; ldm.core.devices logs which one "auto" picked
STEPS = 30
GUIDANCE_SCALE = 7.5
SAMPLER = "ddim"
SPACING = "leading"
# Where a task's sampling defaults differ from the ones above: the x4 upscaler's published settings, and
# shorter walks (a walk samples every frame).
TASK_SAMPLING = {"upscale": {"steps": 50, "guidance_scale": 9.0}, "walk": {"steps": 20}}
STRENGTH = {"img2img": 0.75, "inpaint": 1.0}  # how far an edit moves away from its input image
NOISE_LEVEL = 20  # the upscaler's noise on its low-resolution input (0-350)
# Hires fix (ldm.tasks.hires), A1111's defaults: x2, the second pass with the first's steps (0), denoising 0.7,
# the latent upscaler (A1111's "Latent": bilinear).
HIRES_SCALE = 2.0
HIRES_STEPS = 0
HIRES_STRENGTH = 0.7
HIRES_UPSCALERS = ("latent", "bicubic", "model")
HIRES_UPSCALER = "latent"
# Inpainting "only masked" (A1111's inpaint area) and its padding around the mask's box, in px (A1111's 32).
INPAINT_AREAS = ("whole", "masked")
INPAINT_AREA = "whole"
MASK_PADDING = 32
WALK_FRAMES = 16
DDIM_VARIANTS = (
    "sd",
    "k",
)  # DDIM as the original SD code and diffusers run it, or as k-diffusion (ldm.sampling.options)
# How prompts are read (ldm.models.prompt_options): "plain", as the reference SD code reads them (cut at 77 tokens,
# brackets are text), so SD results stay reference-exact; "a1111" is AUTOMATIC1111's syntax.
PROMPT_SYNTAX = "plain"

# `ldm serve` (ldm.interfaces.server): where it listens and the limits on what one request may ask for; each is an
# option of the command, and its --help prints them.
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 7860  # A1111's, so its API clients find the server where they expect it
SERVE_MAX_BODY_BYTES = 32 * 2**20  # a request body: a few base64 images of a few megapixels
SERVE_MAX_PIXELS = 2048 * 2048  # per image, asked for or sent (width x height)
SERVE_MAX_STEPS = 150  # A1111's own slider ends there
SERVE_MAX_IMAGES = 16  # per request: batch_size x n_iter
SERVE_MAX_JOB_SECONDS = 600.0  # a job running longer is stopped at its next step
SERVE_QUEUE_SIZE = 32  # jobs waiting behind the running one; more are answered 503 with Retry-After
SERVE_KEEP_RESULTS = 64  # finished jobs of the job API kept for their results, oldest dropped first

# Inference backends (ldm.backends): "torch" runs the networks as they are; "openvino" exports them once to
# OpenVINO IR, kept under the cache folder ($LDM_CACHE/openvino, by default ~/.cache/ldm/openvino).
BACKENDS = ("torch", "openvino")
BACKEND = "torch"
CACHE_ENV = "LDM_CACHE"


def cache_root() -> Path:
    """Where derived files are kept: $LDM_CACHE, else ~/.cache/ldm."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ldm")
