"""Page: train a small 2-D denoiser live, then sample it with DDPM and DDIM."""

import pandas as pd
import streamlit as st

from ldm.diffusion.schedules import SCHEDULES
from ldm.interfaces.app import ui
from ldm.interfaces.app.toy import (
    POINT_COLORS,
    loss_frame,
    samples_frame,
    score_table,
    train_schedules,
    trajectory_frame,
)
from ldm.toys.points import DATASETS

st.header("Train a denoiser, live")
st.caption("A 3-layer MLP predicts the noise in 2-D points; the samplers are the same ones the image models use.")

c1, c2, c3 = st.columns(3)
dataset = c1.selectbox("Data", DATASETS, key="toy_data")
schedules = c2.multiselect("Schedules", list(SCHEDULES), default=["linear", "cosine"], key="toy_schedules")
steps = int(c3.number_input("Training steps", 50, 20000, 1500, step=50, key="toy_steps"))

if st.button("Train", key="toy_train", type="primary"):
    bar = st.progress(0.0, text="training…")
    chart = st.empty()
    curves: dict[str, dict[int, float]] = {k: {} for k in schedules}
    done = {"n": 0}
    total = max(1, len(schedules) * steps)

    def report(kind: str, step: int, loss: float) -> None:
        curves[kind][step] = loss
        done["n"] = schedules.index(kind) * steps + step
        bar.progress(min(1.0, done["n"] / total), text=f"{kind}: step {step}/{steps}, loss {loss:.3f}")
        chart.line_chart(pd.DataFrame(curves).rename_axis("step"), x_label="step", y_label="loss")

    with ui.user_errors("Training"):
        st.session_state["toy_models"] = train_schedules(dataset, schedules, steps, report=report)
    bar.empty()
    chart.empty()  # the full curves follow below

models = st.session_state.get("toy_models")
if models:
    st.subheader("Loss")
    st.line_chart(loss_frame(models), x_label="step", y_label="loss (running mean)")
    st.subheader("Samples from noise")
    c1, c2 = st.columns(2)
    samplers = c1.multiselect("Samplers", ["ddpm", "ddim"], default=["ddpm", "ddim"], key="toy_samplers")
    sample_steps = int(c2.select_slider("Sampling steps", [5, 10, 20, 50, 100, 250, 1000], 50, key="toy_sample_steps"))
    with ui.user_errors("Sampling"):
        for kind, toy in models.items():
            cols = st.columns(max(1, len(samplers)))
            for col, sampler in zip(cols, samplers):
                col.markdown(f"**{kind} / {sampler}, {sample_steps} steps**")
                col.scatter_chart(
                    samples_frame(toy, sampler, sample_steps, n=800),
                    x="x",
                    y=["data", "samples"],
                    color=POINT_COLORS,
                    height=300,
                )
        st.subheader("One sampling run, step by step")
        c1, c2, c3 = st.columns(3)
        run_schedule = c1.selectbox("Schedule", list(models), key="toy_run_schedule")
        run_sampler = c2.selectbox("Sampler", ["ddpm", "ddim"], key="toy_run_sampler")
        at_step = c3.slider("After step", 0, sample_steps, sample_steps // 2, key="toy_run_step")
        frame, sigma = trajectory_frame(models[run_schedule], run_sampler, sample_steps, at_step)
        st.scatter_chart(frame, x="x", y=["data", "x_t"], color=POINT_COLORS, height=350)
        st.caption(f"noise level sigma = {sigma:.3g} (points shown as the network sees them, x / sqrt(1 + sigma^2))")
        table = score_table(models, samplers, sorted({10, sample_steps}))
        st.subheader("Mean distance of samples to the nearest data point")
        st.dataframe(table, hide_index=True)
        st.caption(f"Unit Gaussian noise scores {table.attrs.get('noise baseline', float('nan')):.3f}.")
else:
    st.info("Press Train: a model per schedule trains in a few seconds.")
