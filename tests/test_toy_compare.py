"""The GAN / VAE / diffusion comparison: its measures on known cases, and its app page in streamlit.testing."""

import math
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import ldm.interfaces.app
from ldm.core.errors import InvalidOptionError
from ldm.interfaces.app.compare import loss_frames, sample_frames, table_frame
from ldm.toys.compare import MODELS, ToyVAE, compare_models, diffusion_log_likelihood, loss_wobble, mode_coverage
from ldm.toys.points import ToyDiffusion, make_data

VIEWS = Path(ldm.interfaces.app.__file__).resolve().parent / "views"


def test_mode_coverage_counts_modes_that_get_their_share():
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    collapsed = centres[torch.tensor([0, 1] * 50)] + 0.01  # two modes, all near
    assert mode_coverage(collapsed, centres, radius=0.5) == (2, 1.0)
    spread = torch.cat([centres.repeat(20, 1), torch.full((20, 2), 2.5)])  # a fifth of the points between modes
    assert mode_coverage(spread, centres, radius=0.5) == (4, pytest.approx(0.8))


def test_loss_wobble_is_zero_for_a_flat_curve_and_grows_with_noise():
    assert loss_wobble([1.0] * 100) == 0.0
    assert loss_wobble([1.0, 1.2] * 50) > loss_wobble([1.0, 1.1] * 50) > 0


def test_the_diffusion_likelihood_of_gaussian_data_is_near_the_true_density():
    """A model trained on N(0, I)-like data: the ODE log-likelihood of held-out points should be near the
    true density's (2-D unit Gaussian: -1.84 nats per point on average, the entropy 2.84 with its sign turned)."""
    data = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    toy = ToyDiffusion(data, seed=0)
    toy.train(300)
    held_out = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    true = (-0.5 * held_out.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
    model = diffusion_log_likelihood(toy, held_out, steps=40)
    assert abs(float(model.mean() - true.mean())) < 0.15, (float(model.mean()), float(true.mean()))
    assert torch.corrcoef(torch.stack([model, true]))[0, 1] > 0.9  # point by point, not just on average


def test_the_vae_bound_tightens_with_more_importance_samples():
    vae = ToyVAE(make_data("moons", 1000), seed=0)
    vae.train(200)
    x = make_data("moons", 200, seed=5)
    assert float(vae.log_likelihood(x, k=64).mean()) > float(vae.log_likelihood(x, k=1).mean())


def test_compare_models_measures_all_three():
    result = compare_models("gaussians", steps=60, n=200, sample_steps=10, nll_points=100, every=30)
    assert [r["model"] for r in result.rows] == list(MODELS)
    gan, vae, diffusion = result.rows
    assert gan["NLL (nats)"] is None and vae["NLL (nats)"] is not None and diffusion["NLL (nats)"] is not None
    assert (gan["evaluations"], vae["evaluations"], diffusion["evaluations"]) == (1, 1, 10)
    assert all(0 <= r["modes covered"] <= 8 and r["sampling ms"] > 0 for r in result.rows)
    assert set(sample_frames(result)) == set(MODELS) and all(len(f) == 60 for f in loss_frames(result).values())
    assert list(table_frame(result)["model"]) == list(MODELS)
    assert (
        compare_models("moons", steps=30, n=50, sample_steps=5, nll_points=20, every=30).rows[0]["modes covered"]
        is None
    )
    with pytest.raises(InvalidOptionError):
        compare_models(steps=0)


def test_the_comparison_page_trains_and_shows_the_table():
    at = AppTest.from_file(str(VIEWS / "compare.py"), default_timeout=120)
    at.run()
    assert not at.exception and at.header[0].value == "GAN, VAE and diffusion, side by side"
    at.number_input(key="cmp_steps").set_value(50)
    at.select_slider(key="cmp_sample_steps").set_value(10)
    at.button(key="cmp_train").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["model"]) == list(MODELS) and table["evaluations"].tolist() == [1, 1, 10]
    assert [s.value for s in at.subheader] == ["Samples", "Training losses", "Measured"]
