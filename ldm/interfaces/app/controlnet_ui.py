"""The app's ControlNet controls: a ControlNet file or diffusers folder on this machine, its control image (an upload
or a file), its weight and the part of the steps it acts in; what `ldm txt2img --control` takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from ldm.core.errors import InvalidOptionError
from ldm.formats.controlnet_files import load_controlnet
from ldm.io.images import load_image, open_image
from ldm.models.controlnet import CONTROL_MODES, RESIZE_MODES, Control, ControlNet


def control_inputs(prefix: str) -> dict[str, Any]:
    """The ControlNet's widgets (in an expander); their values, for `controls_for` when the page runs."""
    with st.expander("ControlNet (spatial control by a control image)"):
        path = st.text_input(
            "ControlNet file or diffusers folder (on this machine; empty: none)", "", key=f"{prefix}_cn_file"
        )
        upload = st.file_uploader(
            "Control image", type=["png", "jpg", "jpeg", "webp", "bmp"], key=f"{prefix}_cn_upload"
        )
        image_path = st.text_input("or a control image file", "", key=f"{prefix}_cn_image")
        weight = st.number_input("Weight", -2.0, 2.0, 1.0, 0.05, key=f"{prefix}_cn_weight")
        resize = st.selectbox(
            "Control image of another shape",
            RESIZE_MODES,
            key=f"{prefix}_cn_resize",
            help="stretch to the output's size, crop (cover and centre-crop) or fill (fit, black borders)",
        )
        mode = st.selectbox(
            "Control mode",
            CONTROL_MODES,
            key=f"{prefix}_cn_mode",
            help="balanced; prompt: my prompt is more important; control: the ControlNet is more "
            "important (A1111's control modes)",
        )
        start, end = st.slider("Fraction of the steps it acts in", 0.0, 1.0, (0.0, 1.0), 0.05, key=f"{prefix}_cn_steps")
    return {
        "path": path.strip(),
        "upload": upload,
        "image": image_path.strip(),
        "weight": float(weight),
        "start": float(start),
        "resize": resize,
        "mode": mode,
        "end": float(end),
    }


def _cached_net(path: str, model: Any) -> ControlNet:
    """A ControlNet loaded once per file and model in this session."""
    cache = st.session_state.setdefault("controlnets", {})
    key = (str(Path(path).resolve()), id(model))
    if key not in cache:
        cache.clear()  # one at a time: a ControlNet is as large as half the U-Net
        cache[key] = load_controlnet(path, model)
    return cache[key]


def controls_for(model: Any, inputs: dict[str, Any]) -> tuple[list[Control], dict[str, Any]]:
    """(the Controls for using_controlnets, what the settings record); ([], {}) without a ControlNet file."""
    if not inputs["path"]:
        return [], {}
    if inputs["upload"] is not None:
        image, name = open_image(inputs["upload"].getvalue()), inputs["upload"].name
    elif inputs["image"]:
        image, name = load_image(inputs["image"]), inputs["image"]
    else:
        raise InvalidOptionError("a ControlNet needs a control image: upload one or name its file")
    net = _cached_net(inputs["path"], model)
    control = Control(
        net,
        image,
        inputs["weight"],
        inputs["start"],
        inputs["end"],
        name=Path(inputs["path"]).name,
        resize=inputs["resize"],
        mode=inputs["mode"],
    )
    record = {
        "image": name,
        "controlnet": inputs["path"],
        "weight": control.weight,
        "start": control.start,
        "end": control.end,
        "resize": control.resize,
        "mode": control.mode,
    }
    return [control], {"controls": [record]}
