"""The SDXL controls of the text-to-image and edit pages: the refiner hand-off and the micro-conditionings
(ldm.tasks.sdxl_handoff), with the references' defaults; the same options as `ldm txt2img / img2img / inpaint
--refiner ... --original-size ...` (ldm.interfaces.cli.sdxl_args)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import streamlit as st

from ldm.core.errors import MissingFileError
from ldm.formats.load import load_model
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.sdxl_conditioning import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE
from ldm.tasks.sdxl_refiner import DEFAULT_SWITCH, RefinerError, is_sdxl, micro_from_args


@st.cache_resource(show_spinner="Loading the refiner…", max_entries=1)
def load_refiner(path: str, device: str) -> LatentDiffusion:
    if not Path(path).exists():
        raise MissingFileError(f"refiner not found: {path}")
    refiner = load_model(None, path, device)
    if not is_sdxl(refiner):
        raise RefinerError(f"{path} is not an SDXL model")
    return refiner


def sdxl_controls(model: LatentDiffusion, prefix: str = "t2i") -> dict[str, Any] | None:
    """The keyword arguments of ldm.tasks.sdxl_refiner.sdxl_txt2img (and of img2img, inpaint and outpaint, which take
    the same) the page's SDXL controls give (None: not SDXL)."""
    if not is_sdxl(model):
        return None
    with st.expander("SDXL: refiner and micro-conditionings"):
        path = st.text_input("Refiner (file or diffusers folder; empty: none)", "", key=f"{prefix}_refiner")
        switch = st.slider("Refiner switch", 0.05, 0.95, DEFAULT_SWITCH, 0.05, key=f"{prefix}_switch",
                           help="a fraction of the training timesteps, as diffusers' denoising_end (A1111's 'Refiner "
                                "switch at' counts steps)")  # fmt: skip
        original = st.text_input("Original size WxH (empty: the image's)", "", key=f"{prefix}_original")
        crop = st.text_input("Crop TOP,LEFT", "0,0", key=f"{prefix}_crop")
        target = st.text_input("Target size WxH (empty: the image's)", "", key=f"{prefix}_target")
        score = st.number_input("Refiner aesthetic score", 0.0, 10.0, AESTHETIC_SCORE, key=f"{prefix}_score")
        negative = st.number_input("Negative aesthetic score", 0.0, 10.0, NEGATIVE_AESTHETIC_SCORE, key=f"{prefix}_neg")
    given = SimpleNamespace(original_size=original.strip() or None, crop=crop.strip() or None,
                            target_size=target.strip() or None, aesthetic_score=score,
                            negative_aesthetic_score=negative)  # fmt: skip
    refiner = load_refiner(path.strip(), str(model.device)) if path.strip() else None
    return {"refiner": refiner, "switch": switch, "micro": micro_from_args(given)}
