"""Page: a latent walk between two prompts and/or seeds, as an animated GIF."""

import importlib.util
import tempfile
from pathlib import Path

import streamlit as st

from ldm.core import defaults
from ldm.interfaces.app import ui
from ldm.tasks.walk import gif_bytes, save_mp4, walk_frames

st.header("Latent walk")
st.caption("Spherical interpolation of the start noise, linear interpolation of the text embeddings.")
model = ui.get_model()
if model is not None:
    c1, c2 = st.columns(2)
    prompt_a = c1.text_input("Prompt A", "smiling face", key="walk_prompt_a")
    prompt_b = c2.text_input("Prompt B", "loudly crying face", key="walk_prompt_b")
    seed_a = int(c1.number_input("Seed A", 0, 2**31 - 1, defaults.SEED, key="walk_seed_a"))
    seed_b = int(c2.number_input("Seed B", 0, 2**31 - 1, defaults.SEED, key="walk_seed_b"))
    c1, c2, c3 = st.columns(3)
    frames = int(c1.number_input("Frames", 2, 120, defaults.WALK_FRAMES, key="walk_frames"))
    duration = int(c2.number_input("ms per frame", 20, 2000, 100, step=10, key="walk_duration"))
    boomerang = c3.checkbox("Play back (seamless loop)", True, key="walk_boomerang")
    options, _ = ui.sampling_controls("walk", "walk", seed=False)  # the walk has seeds A and B
    height, width = ui.size_controls("walk", model)
    has_mp4 = importlib.util.find_spec("imageio_ffmpeg") is not None
    mp4 = st.checkbox(
        "Also make an MP4",
        False,
        key="walk_mp4",
        disabled=not has_mp4,
        help=None if has_mp4 else "needs `pip install imageio imageio-ffmpeg`",
    )

    if st.button("Make the walk", key="walk_go", type="primary"):
        bar = st.progress(0.0, text="frame 1…")
        latest = st.empty()

        def on_frame(k: int, image) -> None:
            bar.progress((k + 1) / frames, text=f"frame {k + 1}/{frames}")
            latest.image(ui.enlarge(image), caption=f"frame {k + 1}")

        with ui.user_errors("The walk"):
            images = walk_frames(
                model,
                prompt_a,
                prompt_b,
                seed_a,
                seed_b,
                frames,
                height=height,
                width=width,
                options=options,
                on_frame=on_frame,
                progress=False,
            )
            video = None
            if mp4:
                with tempfile.TemporaryDirectory() as tmp:
                    video = save_mp4(
                        [ui.enlarge(i) for i in images], Path(tmp) / "walk.mp4", fps=max(1, round(1000 / duration))
                    ).read_bytes()
            st.session_state["walk_result"] = (
                gif_bytes([ui.enlarge(i) for i in images], duration, boomerang=boomerang),
                video,
            )
        bar.empty()
        latest.empty()

    result = st.session_state.get("walk_result")
    if result is not None:
        gif, video = result
        st.image(gif, caption="walk")
        st.download_button("Download GIF", gif, file_name="walk.gif", mime="image/gif", key="walk_download")
        if video is not None:
            st.video(video)
            st.download_button("Download MP4", video, file_name="walk.mp4", mime="video/mp4", key="walk_download_mp4")
