"""Page: a GAN, a VAE and a diffusion model trained on the same 2-D data, measured side by side."""

import streamlit as st

from ldm.interfaces.app import ui
from ldm.interfaces.app.compare import LOSS_NAMES, loss_frames, sample_frames, table_frame
from ldm.interfaces.app.toy import POINT_COLORS
from ldm.toys.compare import MODELS, compare_models
from ldm.toys.points import DATASETS

st.header("GAN, VAE and diffusion, side by side")
st.caption(
    "Three small MLP models learn the same points; the table measures what the usual comparison asserts: "
    "sample quality, steady training, mode coverage, likelihood and sampling cost."
)

c1, c2, c3 = st.columns(3)
dataset = c1.selectbox("Data", DATASETS, index=list(DATASETS).index("gaussians"), key="cmp_data")
steps = int(c2.number_input("Training steps (each model)", 50, 20000, 1500, step=50, key="cmp_steps"))
sample_steps = int(c3.select_slider("Diffusion sampling steps", [10, 20, 50, 100, 250], 50, key="cmp_sample_steps"))

if st.button("Train all three", key="cmp_train", type="primary"):
    bar = st.progress(0.0, text="training…")

    def report(name: str, step: int, loss: float) -> None:
        done = (MODELS.index(name) * steps + step) / (len(MODELS) * steps)
        bar.progress(min(1.0, done), text=f"{name}: step {step}/{steps}, loss {loss:.3f}")

    with ui.user_errors("Training"):
        st.session_state["cmp_result"] = compare_models(dataset, steps, sample_steps=sample_steps, report=report)
    bar.empty()

result = st.session_state.get("cmp_result")
if result:
    st.subheader("Samples")
    for col, (name, frame) in zip(st.columns(len(MODELS)), sample_frames(result).items()):
        col.markdown(f"**{name}**")
        col.scatter_chart(frame, x="x", y=["data", "samples"], color=POINT_COLORS, height=300)
    st.subheader("Training losses")
    for col, (name, frame) in zip(st.columns(len(MODELS)), loss_frames(result).items()):
        col.markdown(f"**{name}**: {LOSS_NAMES[name]}")
        col.line_chart(frame, x_label="step", y_label="loss", height=250)
    st.subheader("Measured")
    st.dataframe(table_frame(result), hide_index=True)
    st.caption(
        "distance to data: mean distance of a sample to the nearest training point. modes covered / near a mode "
        "(eight Gaussians only): modes holding at least a quarter of an even share of samples within 0.2 of the "
        "centre, and the share of samples within 0.2 of any centre. NLL: held-out negative log-likelihood in nats "
        "per point, the VAE's an importance-weighted bound (64 samples), the diffusion model's from the "
        "probability-flow ODE; a GAN has none. loss wobble: std / mean of the second half of the per-step losses. "
        "evaluations: network calls per sample."
    )
else:
    st.info("Press Train: each model trains for the chosen steps (about a minute for all three at 1500).")
