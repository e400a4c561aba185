"""Page: img2img, inpainting (drawn or uploaded mask), outpainting and x4 upscaling."""

import numpy as np
import streamlit as st
from PIL import Image

from ldm.core import defaults
from ldm.interfaces.app import ui
from ldm.interfaces.app.edit import mask_from_strokes, read_mask
from ldm.interfaces.app.sdxl import sdxl_controls

st.header("Edit")
model = ui.get_model()
mode = st.radio("Task", ["img2img", "inpaint", "outpaint", "upscale x4"], key="edit_mode", horizontal=True)


def load_canvas():
    """The drawing component, or None where it cannot run (it may be missing or not fit this Streamlit)."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception:  # noqa: BLE001 - any import failure of an optional component means "no drawing"
        return None
    return st_canvas


def run_and_show(what: str, fn) -> None:
    bar = st.progress(0.0, text=f"{what}…")
    steps = options.steps

    def callback(d: dict) -> None:
        bar.progress(min(1.0, (int(d["i"]) + 1) / steps), text=f"{what}: step {int(d['i']) + 1}")

    with ui.user_errors(what):
        st.session_state["edit_result"] = (mode, fn(callback))
    bar.empty()


if mode == "upscale x4":
    upscaler = ui.get_upscaler()
    if upscaler is None:
        st.info(
            "x4 upscaling needs the upscaler model: start the app with "
            "`ldm app --upscaler-config x4-upscaling.yaml --upscaler-ckpt x4-upscaler.safetensors`."
        )
        st.stop()
    # Samples at the upscaler's own low-res size (one tile: the latent is as large as the low-res image).
    image = ui.image_input("edit", upscaler.image_size)
    prompt = st.text_input("Prompt", "", key="edit_prompt")
    noise_level = st.slider(
        "Noise level", 0, int(upscaler.low_scale.max_noise_level), defaults.NOISE_LEVEL, key="edit_noise"
    )
    options, seed = ui.sampling_controls("edit", "upscale")
    if image is not None and st.button("Upscale", key="edit_go", type="primary"):
        from ldm.tasks.upscale import upscale

        run_and_show(
            "Upscaling",
            lambda cb: upscale(
                upscaler,
                image,
                prompt,
                noise_level=noise_level,
                seed=seed,
                options=options,
                callback=cb,
                progress=False,
            )[0],
        )
elif model is not None:
    image = ui.image_input("edit", model.default_image_size)
    prompt = st.text_input("Prompt", "smiling face", key="edit_prompt")
    negative = st.text_input("Negative prompt", "", key="edit_negative")
    options, seed = ui.sampling_controls("edit")
    if image is not None:
        st.image(ui.enlarge(image), caption=f"input, {image.width}x{image.height}")
    if mode in ("inpaint", "outpaint"):
        inpainter = ui.get_inpainter()
        if inpainter is not None and not st.checkbox(
            "Latent blending with the main model instead of the inpainting model", False, key="edit_blend"
        ):
            model = inpainter
        st.caption(
            "Model: "
            + (
                "the shipped inpainting model"
                if model is inpainter
                else "the main model, by latent blending (the known area is re-noised each step)"
            )
        )
    sdxl = None
    with ui.user_errors("The SDXL options"):
        sdxl = sdxl_controls(model, prefix="edit")  # None for other models (ldm.interfaces.app.sdxl)
    sdxl = sdxl or {}
    if mode == "img2img":
        strength = st.slider(
            "Strength (how much to change)", 0.0, 1.0, defaults.STRENGTH["img2img"], 0.05, key="edit_strength"
        )
        if image is not None and st.button("Run img2img", key="edit_go", type="primary"):
            from ldm.tasks.img2img import img2img

            run_and_show(
                "img2img",
                lambda cb: img2img(
                    model, image, prompt, strength, negative, seed, options, callback=cb, progress=False, **sdxl
                )[0],
            )
    elif mode == "inpaint":
        st_canvas = load_canvas()
        sources = (["draw"] if st_canvas else []) + ["upload"]
        if st_canvas is None:
            st.caption(
                "Drawing a mask needs the streamlit-drawable-canvas component, which is not usable here; "
                "upload a mask instead (white = repaint, black = keep, same size as the image)."
            )
        mask_source = st.radio("Mask", sources, key="edit_mask_source", horizontal=True)
        mask = None
        if image is not None and mask_source == "draw":
            scale = max(1, 256 // image.width)
            drawn = st_canvas(
                fill_color="rgba(255,255,255,1)",
                stroke_width=int(st.slider("Brush", 2, 60, 20, key="edit_brush")),
                stroke_color="#ffffff",
                background_image=image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST),
                height=image.height * scale,
                width=image.width * scale,
                drawing_mode="freedraw",
                return_image_data=True,
                key="edit_canvas",
            )
            if drawn is not None and drawn.image_data is not None:
                mask = mask_from_strokes(np.asarray(drawn.image_data), image.size)
        elif mask_source == "upload":
            upload = st.file_uploader("Mask image", type=["png", "jpg", "jpeg", "webp", "bmp"], key="edit_mask")
            if upload is not None:
                with ui.user_errors("Reading the mask"):
                    mask = read_mask(upload.getvalue())
        strength = st.slider(
            "Strength in the hole", 0.0, 1.0, defaults.STRENGTH["inpaint"], 0.05, key="edit_inpaint_strength"
        )
        area_cols = st.columns(2)  # the same options as `ldm inpaint --inpaint-area --mask-padding`
        area = area_cols[0].radio(
            "Inpaint area",
            defaults.INPAINT_AREAS,
            key="edit_inpaint_area",
            horizontal=True,
            help="masked: only a crop around the mask, at the model's own size, pasted back (A1111's Only masked)",
        )
        padding = int(
            area_cols[1].number_input("Masked area padding (px)", 0, 256, defaults.MASK_PADDING, key="edit_padding")
        )
        if image is not None and st.button("Inpaint", key="edit_go", type="primary"):
            if mask is None:
                st.error("Inpainting needs a mask: draw on the image or upload one.")
            else:
                from ldm.tasks.inpaint import inpaint

                run_and_show(
                    "Inpainting",
                    lambda cb: inpaint(
                        model,
                        image,
                        mask,
                        prompt,
                        negative,
                        seed,
                        strength,
                        options=options,
                        callback=cb,
                        progress=False,
                        inpaint_area=area,
                        mask_padding=padding,
                        **sdxl,
                    )[0],
                )
    else:
        st.caption("New canvas area on each side, in pixels; it is painted to match the prompt and the image.")
        cols = st.columns(4)
        sides = {
            side: int(col.number_input(side, 0, 512, 16 if side == "right" else 0, step=8, key=f"edit_{side}"))
            for col, side in zip(cols, ["left", "right", "top", "bottom"])
        }
        if image is not None and st.button("Outpaint", key="edit_go", type="primary"):
            from ldm.tasks.inpaint import outpaint

            run_and_show(
                "Outpainting",
                lambda cb: outpaint(
                    model,
                    image,
                    prompt,
                    **sides,
                    negative_prompt=negative,
                    seed=seed,
                    options=options,
                    callback=cb,
                    progress=False,
                    **sdxl,
                )[0],
            )

result = st.session_state.get("edit_result")
if result is not None and result[0] == mode:
    from ldm.interfaces.app.text import png_bytes

    st.image(ui.enlarge(result[1]), caption=f"result, {result[1].width}x{result[1].height}", output_format="PNG")
    st.download_button(
        "Download PNG",
        png_bytes(result[1], {"task": mode}),
        file_name=f"ldm-{mode.split()[0]}.png",
        mime="image/png",
        key="edit_download",
    )
