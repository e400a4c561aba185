"""Page: text-to-image with a live preview of the predicted clean image."""

import streamlit as st

from ldm.core import defaults
from ldm.interfaces.app import ui
from ldm.interfaces.app.controlnet_ui import control_inputs, controls_for
from ldm.interfaces.app.sdxl import sdxl_controls
from ldm.interfaces.app.state import FULL_CHOICE, student_choice
from ldm.interfaces.app.text import NO_LABEL, generate, label_choices, png_bytes, takes_text
from ldm.models.controlnet import using_controlnets
from ldm.models.prompt_options import PROMPT_SYNTAXES
from ldm.tasks.hires import HiresOptions
from ldm.tasks.upscale_pass import UpscaleOptions

st.header("Text-to-image")
fast = student_choice(ui.model_source())  # the shipped student, the default where it is shipped (ldm.formats.variants)
variant = "full"
if fast is not None:
    chosen_model = st.radio(
        "Model",
        [fast, FULL_CHOICE],
        key="t2i_model",
        horizontal=True,
        help="the few-step student distilled from the full model (one U-Net call a step, no "
        "negative prompt), or the full model (guided, two calls a step)",
    )
    variant = "student" if chosen_model == fast else "full"
model = ui.get_model(variant)
if model is not None:
    prompt, negative, label, syntax = "", "", None, None
    if takes_text(model):
        prompt = st.text_input("Prompt", "red apple", key="t2i_prompt")
        if variant == "student":
            st.caption("The student takes no negative prompt (choose the full model for one).")
        else:
            negative = st.text_input("Negative prompt", "", key="t2i_negative")
        syntax = st.selectbox(
            "Prompt syntax",
            list(PROMPT_SYNTAXES),
            index=list(PROMPT_SYNTAXES).index(defaults.PROMPT_SYNTAX),
            key="t2i_prompt_syntax",
            help="plain: as the reference code (77 tokens, brackets are text); a1111: as AUTOMATIC1111, long "
            "prompts, (word:1.2) emphasis and [from:to:when] / [a|b] prompt editing (--prompt-syntax)",
        )
    else:
        st.caption("This model takes a class label only, no prompt.")
    choices = label_choices(model)
    if choices is not None:
        chosen = st.selectbox(
            "Class label",
            choices,
            key="t2i_label",
            help=f"guided against the null label; {NO_LABEL}: the null label alone (unconditional)",
        )
        label = None if chosen == NO_LABEL else chosen
    options, seed = ui.sampling_controls("t2i" if variant == "full" else "t2i_student", model=model)
    height, width = ui.size_controls("t2i", model)
    every = int(st.number_input("Preview every N steps", 1, 50, 5, key="t2i_every"))
    sdxl = None
    with ui.user_errors("The SDXL options"):
        sdxl = sdxl_controls(model)  # None for other models (ldm.interfaces.app.sdxl)
    control = control_inputs("t2i")
    hires = None
    with st.expander("Hires fix"):  # the same options as `ldm txt2img --hires-*` (ldm.tasks.hires)
        if st.checkbox("Sample at this size, upscale, then redraw by img2img", False, key="t2i_hires"):
            cols = st.columns(4)
            scale = cols[0].number_input("Upscale by", 1.0, 4.0, defaults.HIRES_SCALE, 0.25, key="t2i_hires_scale")
            hires_steps = cols[1].number_input(
                "Hires steps", 0, 200, defaults.HIRES_STEPS, key="t2i_hires_steps", help="0: the first pass's steps"
            )
            strength = cols[2].slider("Denoising strength", 0.0, 1.0, defaults.HIRES_STRENGTH, key="t2i_hires_strength")
            upscaler = cols[3].selectbox(
                "Upscaler",
                defaults.HIRES_UPSCALERS,
                key="t2i_hires_upscaler",
                help="latent: the latent resized (A1111's Latent); bicubic: the image resized; model: the x4 upscaler",
            )
            upscaler_model = ui.get_upscaler() if upscaler == "model" else None
            if upscaler == "model" and upscaler_model is None:
                st.caption("No x4 upscaler is shipped here; choose latent or bicubic.")
            else:
                hires = HiresOptions(float(scale), int(hires_steps), float(strength), upscaler, upscaler_model)

    upscale = None  # the same as `ldm txt2img --upscale` (ldm.tasks.upscale_pass)
    if st.checkbox("x4 upscale each image by the shipped upscaler (64 -> 256 px)", False, key="t2i_upscale"):
        upscaler_model = ui.get_upscaler()
        if upscaler_model is None:
            st.caption("No x4 upscaler is shipped here.")
        else:
            upscale = UpscaleOptions(upscaler_model=upscaler_model)

    if st.button("Generate", key="t2i_go", type="primary"):
        bar = st.progress(0.0, text="sampling…")
        preview = st.empty()

        def report(done: int, total: int, image) -> None:
            bar.progress(done / total, text=f"step {done}/{total}")
            if image is not None:
                preview.image(ui.enlarge(image), caption=f"predicted clean image at step {done}")

        with ui.user_errors("Generation"):
            controls, controlled = controls_for(model, control)
            with using_controlnets(model, controls):
                made = (model, prompt, negative, options, seed, height, width, every, report, label, sdxl, hires)
                image, settings = generate(*made, syntax, upscale)
            st.session_state["t2i_result"] = (image, {**settings, **controlled})
        bar.empty()
        preview.empty()

    result = st.session_state.get("t2i_result")
    if result is not None:
        image, settings = result
        st.image(ui.enlarge(image), caption="result", output_format="PNG")
        st.download_button(
            "Download PNG",
            png_bytes(image, settings),
            file_name=f"ldm-{settings['seed']}.png",
            mime="image/png",
            key="t2i_download",
        )
        with st.expander("Settings (saved in the PNG)"):
            st.json(settings)
