"""Page: the forward (noising) process under three schedules, in pixel and latent space."""
import streamlit as st

from ldm.app import ui
from ldm.app.forward import forward_views, latent_start, schedule_curves, snr_at

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
    curves = schedule_curves(T, start, end)
    tabs = st.tabs(["beta_t", "alpha_bar_t", "log-SNR"])
    for tab, name in zip(tabs, ["beta", "alpha_bar", "log_snr"]):
        tab.line_chart(curves[name], x_label="t", y_label=name)
