"""Page: the forward (noising) process under three schedules, in pixel and latent space; their curves beside a learned one."""  # noqa: E501

import streamlit as st

from ldm.interfaces.app import ui
from ldm.interfaces.app.forward import (
    LEARNED,
    LEARNED_DATA,
    LEARNED_TRAIN_STEPS,
    forward_views,
    latent_start,
    learned_schedule_alphas,
    schedule_curves,
    snr_at,
)

# Trained once per (T, linear_start, linear_end) and kept: a few seconds on one thread, fixed seed.
learned_alphas = st.cache_data(show_spinner="Training the toy VDM schedule...", max_entries=8)(learned_schedule_alphas)

st.header("Forward diffusion explorer")
st.caption("x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, with the same eps for every schedule.")

model = ui.get_model()
if model is None:
    st.info("Without a model only the pixel-space view is shown.")
# 128 px whatever the model: big enough to see the noise take over, a multiple of any VAE's factor.
size = 128
image = ui.image_input("fwd", size, resize_uploads=True)  # one size, so the schedules line up

with st.expander("Schedule parameters"):
    c1, c2, c3 = st.columns(3)
    T = int(c1.number_input("Timesteps T", 10, 4000, 1000, step=10, key="fwd_T"))
    start = c2.number_input("linear_start", 1e-6, 0.1, 0.00085, step=1e-4, format="%.5f", key="fwd_start")
    end = c3.number_input("linear_end", 1e-5, 0.5, 0.012, step=1e-3, format="%.4f", key="fwd_end")
t = st.slider("Timestep t", 0, T - 1, min(250, T - 1), key="fwd_t")
seed = int(st.number_input("Noise seed", 0, 2**31 - 1, 0, key="fwd_seed"))

if image is not None:
    with ui.user_errors("Noising"):
        # Encode once per image: the slider then only re-noises and decodes.
        key = (prefix_key := "fwd_latent", image.tobytes(), image.size)
        if model is not None and st.session_state.get(prefix_key, (None,))[0] != key:
            st.session_state[prefix_key] = (key, latent_start(model, image))
        z0 = st.session_state[prefix_key][1] if model is not None else None
        views = forward_views(image, t, model, seed, T, start, end, z0=z0)
        ab = snr_at(t, T, start, end)
        for col, (kind, view) in zip(st.columns(len(views)), views.items()):
            col.subheader(kind)
            col.image(ui.enlarge(view["pixel"]), caption=f"pixel space, alpha_bar={ab[kind]:.3f}")
            if "latent" in view:
                col.image(ui.enlarge(view["latent"]), caption="latent space, decoded")

with ui.user_errors("Plotting the schedules"):
    show_learned = st.checkbox("Add a learned schedule (VDM)", value=True, key="fwd_learned")
    curves = schedule_curves(T, start, end, learned=learned_alphas(T, start, end) if show_learned else None)
    if show_learned:
        st.caption(
            f"{LEARNED}: gamma(t) = -log SNR learned as in Variational Diffusion Models, by a 2-D toy model "
            f"trained {LEARNED_TRAIN_STEPS} steps on the toy '{LEARNED_DATA}' points (not images), with its "
            "ends pinned to the linear schedule's; only the shape in between is learned."
        )
    tabs = st.tabs(["beta_t", "alpha_bar_t", "log-SNR"])
    for tab, name in zip(tabs, ["beta", "alpha_bar", "log_snr"]):
        tab.line_chart(curves[name], x_label="t", y_label=name)
