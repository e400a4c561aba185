"""Toy 2-D page logic: train one denoiser per schedule, compare samplers, as frames for Streamlit charts."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from ldm.core.errors import InvalidOptionError
from ldm.toys.points import ToyDiffusion, make_data, nearest_distance, noise_baseline


def train_schedules(
    dataset: str,
    schedules: list[str],
    steps: int,
    seed: int = 0,
    report: Callable[[str, int, float], None] | None = None,
    every: int = 50,
) -> dict[str, ToyDiffusion]:
    """One fresh ToyDiffusion per schedule on the same data; report(schedule, step, recent mean loss)."""
    if not schedules:
        raise InvalidOptionError("choose at least one schedule")
    if steps < 1:
        raise InvalidOptionError(f"training steps must be at least 1, got {steps}")
    data = make_data(dataset, 2000, seed=seed)
    models = {}
    for kind in schedules:
        toy = ToyDiffusion(data, schedule=kind, seed=seed)
        toy.train(steps, callback=(lambda step, loss, k=kind: report(k, step, loss)) if report else None, every=every)
        models[kind] = toy
    return models


def loss_frame(models: dict[str, ToyDiffusion], window: int = 50) -> pd.DataFrame:
    """Smoothed loss per schedule (a running mean: single-batch losses are too noisy to read)."""
    return pd.DataFrame(
        {k: pd.Series(m.losses).rolling(window, min_periods=1).mean() for k, m in models.items()}
    ).rename_axis("step")


POINT_COLORS = ["#c8c8c8", "#d62728"]  # data in light grey behind, the model's points in red


def points_frame(data: torch.Tensor, points: torch.Tensor, name: str) -> pd.DataFrame:
    """x plus one y column per series ("data", name), NaN elsewhere: st.scatter_chart(y=[...], color=[...])
    then colours the two series as asked, instead of two hard-to-tell default shades."""
    nan_d, nan_p = torch.full((len(data),), float("nan")), torch.full((len(points),), float("nan"))
    return pd.DataFrame(
        {
            "x": torch.cat([data[:, 0], points[:, 0]]).numpy(),
            "data": torch.cat([data[:, 1], nan_p]).numpy(),
            name: torch.cat([nan_d, points[:, 1]]).numpy(),
        }
    )


def samples_frame(toy: ToyDiffusion, sampler: str, steps: int, n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Data and samples (see points_frame)."""
    samples = toy.sample(n, steps=steps, sampler=sampler, seed=seed)
    return points_frame(toy.data[:n], samples, "samples")


def score_table(
    models: dict[str, ToyDiffusion], samplers: list[str], steps: list[int], n: int = 500, seed: int = 0
) -> pd.DataFrame:
    """Mean distance from each sample to the nearest data point, per schedule x sampler x steps (lower is better)."""
    rows = []
    for kind, toy in models.items():
        for sampler in samplers:
            for k in steps:
                dist = float(nearest_distance(toy.sample(n, steps=k, sampler=sampler, seed=seed), toy.data).mean())
                rows.append({"schedule": kind, "sampler": sampler, "steps": k, "distance to data": round(dist, 4)})
    table = pd.DataFrame(rows)
    if models:
        baseline = noise_baseline(next(iter(models.values())).data, n, seed)
        table.attrs["noise baseline"] = baseline
    return table


def trajectory_frame(
    toy: ToyDiffusion, sampler: str, steps: int, at_step: int, n: int = 800, seed: int = 0
) -> tuple[pd.DataFrame, float]:
    """(data and the sampler's points after `at_step` of `steps` steps, the noise level there).

    Step 0 is the start noise and step `steps` the finished samples; the same seed at every
    step, so moving the slider replays one sampling run.
    """
    if not 0 <= at_step <= steps:
        raise InvalidOptionError(f"step must be in [0, {steps}], got {at_step}")
    _, trajectory = toy.sample(n, steps=steps, sampler=sampler, seed=seed, return_trajectory=True)
    frame = points_frame(toy.data[:n], trajectory[at_step]["x"], "x_t")
    return frame, float(trajectory[at_step]["sigma"])
