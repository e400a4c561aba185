"""Streamlit pieces every page shares: the cached model, error display, common inputs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from PIL import Image

from ldm.core import defaults
from ldm.core.errors import LdmError
from ldm.interfaces.app.edit import read_image
from ldm.interfaces.app.samples import SAMPLES, sample_image
from ldm.interfaces.app.state import ModelSource, load_inpainter, load_main_model, load_upscaler, source_from_env
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.sampling.options import SamplingOptions, task_options
from ldm.sampling.samplers import SAMPLERS

# What a user's bad input or a missing file raises in the library (ldm.core.errors): shown as a message.
# Anything else is a bug, and Streamlit shows its traceback.
USER_ERRORS = (LdmError,)


def model_source() -> ModelSource:
    return source_from_env()


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _cached_model(config: str | None, ckpt: str | None, device: str, variant: str = "full") -> LatentDiffusion:
    return load_main_model(config, ckpt, device, variant)


@st.cache_resource(show_spinner="Loading the upscaler…", max_entries=1)
def _cached_upscaler(config: str, ckpt: str, device: str) -> LatentDiffusion:
    return load_upscaler(config, ckpt, device)


def get_model(variant: str = "full") -> LatentDiffusion | None:
    """The app's model, loaded once per process; None (with the reason shown) when it cannot be loaded. variant:
    of the shipped model, "student" for the text-to-image page's fast choice (ldm.formats.variants)."""
    src = model_source()
    try:
        return _cached_model(src.config, src.ckpt, src.device, variant)
    except USER_ERRORS as exc:
        st.error(f"No model: {exc}")
        return None


@st.cache_resource(show_spinner="Loading the inpainting model…", max_entries=1)
def _cached_inpainter(source: ModelSource) -> LatentDiffusion | None:
    return load_inpainter(source)


def get_inpainter() -> LatentDiffusion | None:
    """The shipped inpainting model (with the shipped text-to-image model only); None: blend with get_model()."""
    try:
        return _cached_inpainter(model_source())
    except USER_ERRORS as exc:
        st.error(f"The inpainting model could not be loaded, blending instead: {exc}")
        return None


def get_upscaler() -> LatentDiffusion | None:
    src = model_source()
    files = src.upscaler_files
    if files is None:
        return None
    try:
        return _cached_upscaler(*files, src.device)
    except USER_ERRORS as exc:
        st.error(f"The upscaler could not be loaded: {exc}")
        return None


@contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Show a failure of `what` as an error message and carry on with the rest of the page."""
    try:
        yield
    except USER_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        st.error(f"{what} failed: {message}")


def enlarge(image: Image.Image, width: int = 256) -> Image.Image:
    """Small model outputs scaled up with nearest-neighbour so pixels stay visible, not blurred."""
    if image.width >= width:
        return image
    factor = max(1, width // image.width)
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def image_input(prefix: str, size: int = 128, resize_uploads: bool = False) -> Image.Image | None:
    """A built-in sample (drawn at `size`) or an upload; None (with the reason shown) when there is nothing usable.

    Uploads keep their size unless `resize_uploads` (the editing tasks handle any size, and an
    uploaded mask must match the image as the user made it).
    """
    source = st.radio("Image", ["built-in sample", "upload"], key=f"{prefix}_source", horizontal=True)
    if source == "built-in sample":
        name = st.selectbox("Sample image", list(SAMPLES), key=f"{prefix}_sample")
        return sample_image(name, size)
    upload = st.file_uploader(
        "Upload an image", type=["png", "jpg", "jpeg", "webp", "gif", "bmp"], key=f"{prefix}_upload"
    )
    if upload is None:
        st.info("Upload an image to start.")
        return None
    with user_errors("Reading the image"):
        image = read_image(upload.getvalue())
        if resize_uploads:
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        return image
    return None


# The app's names for the tiling choices (ldm.models.seamless): the image's edges that join.
TILING_CHOICES = {"off": None, "both axes": "xy", "left-right (x)": "x", "top-bottom (y)": "y"}


def sampling_controls(
    prefix: str, task: str = "txt2img", seed: bool = True, model: LatentDiffusion | None = None
) -> tuple[SamplingOptions, int | None]:
    """Sampler, steps, guidance scale and (unless seed is False, for pages with their own seeds) a seed, starting
    at the task's defaults (ldm.core.defaults: the same as the CLI's and the Python API's) under the model's own (a
    student's steps and spacing, ldm.formats.variants)."""
    own = dict(model.sampling_defaults) if model is not None else {}
    d = task_options(task, **own)
    cols = st.columns(4 if seed else 3)
    sampler = cols[0].selectbox(
        "Sampler", list(SAMPLERS), index=list(SAMPLERS).index(d.sampler), key=f"{prefix}_sampler"
    )
    n_steps = cols[1].number_input("Steps", 1, 200, d.steps, key=f"{prefix}_steps")
    guidance = cols[2].number_input("Guidance scale", 0.0, 30.0, d.guidance_scale, step=0.5, key=f"{prefix}_scale")
    chosen = int(cols[3].number_input("Seed", 0, 2**31 - 1, defaults.SEED, key=f"{prefix}_seed")) if seed else None
    chosen_options = {"steps": int(n_steps), "guidance_scale": float(guidance), "sampler": sampler}
    if task != "upscale":  # seamless tiling (ldm.models.seamless); the upscaler's tiles would each wrap alone
        tiling = st.selectbox("Seamless tiling", list(TILING_CHOICES), key=f"{prefix}_tiling")
        chosen_options["tiling"] = TILING_CHOICES[tiling]
    return task_options(task, **{**own, **chosen_options}), chosen


def size_controls(prefix: str, model: LatentDiffusion) -> tuple[int, int]:
    """Height and width in steps of the model's size multiple, defaulting to its training size."""
    step = max(8, model.downscale)
    default = model.default_image_size
    c1, c2 = st.columns(2)
    height = c1.number_input("Height", step, 4 * default, default, step=step, key=f"{prefix}_height")
    width = c2.number_input("Width", step, 4 * default, default, step=step, key=f"{prefix}_width")
    return int(height), int(width)
