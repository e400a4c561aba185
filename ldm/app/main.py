"""The app's entry point (`ldm app` runs `streamlit run` on this file): navigation and the model in use."""

from pathlib import Path

import streamlit as st

from ldm.interfaces.app.state import source_from_env

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="ldm", layout="wide")
pages = [
    st.Page(VIEWS / "forward.py", title="Forward diffusion", url_path="forward", default=True),
    st.Page(VIEWS / "toy.py", title="Train a denoiser", url_path="toy"),
    st.Page(VIEWS / "compare.py", title="GAN, VAE, diffusion", url_path="compare"),
    st.Page(VIEWS / "text.py", title="Text-to-image", url_path="text"),
    st.Page(VIEWS / "edit.py", title="Edit", url_path="edit"),
    st.Page(VIEWS / "walk.py", title="Latent walk", url_path="walk"),
]
page = st.navigation(pages)
source = source_from_env()
st.sidebar.caption(f"Model: {source.describe()}")
if source.has_upscaler:
    st.sidebar.caption("Upscaler: " + Path(source.upscaler_files[0]).name)
page.run()
