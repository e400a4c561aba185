"""Model comparison page logic: a GAN, a VAE and a diffusion model on the same toy data, as frames for Streamlit."""

from __future__ import annotations

import pandas as pd

from ldm.interfaces.app.toy import points_frame
from ldm.toys.compare import Comparison


def sample_frames(comparison: Comparison, n: int = 800) -> dict[str, pd.DataFrame]:
    """Per model: the data and its samples (ldm.interfaces.app.toy.points_frame), for one scatter chart each."""
    return {
        name: points_frame(comparison.data[:n], points[:n], "samples") for name, points in comparison.samples.items()
    }


def loss_frames(comparison: Comparison, window: int = 50) -> dict[str, pd.DataFrame]:
    """Per model: its per-step training loss and a running mean. The losses measure different things (GAN:
    the discriminator's cross-entropy; VAE: -ELBO in nats; diffusion: eps MSE), so each gets its own chart."""
    frames = {}
    for name, losses in comparison.losses.items():
        series = pd.Series(losses)
        frames[name] = pd.DataFrame(
            {"loss": series, "running mean": series.rolling(window, min_periods=1).mean()}
        ).rename_axis("step")
    return frames


def table_frame(comparison: Comparison) -> pd.DataFrame:
    """The comparison table; a metric a model lacks (a GAN's likelihood, modes off the eight Gaussians) shows as empty."""  # noqa: E501
    return pd.DataFrame(comparison.rows)


LOSS_NAMES = {"GAN": "discriminator loss", "VAE": "-ELBO (nats)", "diffusion": "eps MSE"}
