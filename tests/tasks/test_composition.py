"""One composition for every task: checked sampler options, one parameterisation, no hidden state changes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from factories import tiny_model

from ldm.diffusion.parameterisation import (
    DiscreteTimeDenoiser,
    VPParameterisation,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_sample,
)
from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas
from ldm.models.latent_diffusion import CONDITIONING
from ldm.sampling.denoisers import CFGDenoiser
from ldm.sampling.options import SamplingOptions, sample, sampler_eta, sampler_kwargs
from ldm.sampling.samplers import SAMPLERS, InvalidStrengthError, SamplerOptionError
from ldm.tasks.base import WrongModelError, check_task, kinds_for
from ldm.tasks.editing import StrengthError
from ldm.tasks.inpaint import BlendDenoiser
from ldm.tasks.txt2img import txt2img
from ldm.tasks.upscale import TiledDenoiser

AC = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012)).float()


def gaussian(x, sigma, **kw):
    """The exact denoiser of N(0, 1) data: D(x, sigma) = x / (1 + sigma^2)."""
    return x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)


def test_eta_goes_to_every_sampler_that_has_one_and_is_refused_elsewhere():
    assert sampler_kwargs(SamplingOptions(sampler="ddim")) == {"eta": 0.0}
    assert sampler_kwargs(SamplingOptions(sampler="euler_ancestral")) == {"eta": 1.0}
    assert sampler_kwargs(SamplingOptions(sampler="dpmpp_2m_sde", eta=0.3)) == {"eta": 0.3}
    assert sampler_kwargs(SamplingOptions(sampler="euler")) == {}
    assert [sampler_eta(SamplingOptions(sampler=s)) for s in ("ddim", "ddpm", "euler", "euler_ancestral")] == [
        0.0,
        1.0,
        None,
        1.0,
    ]
    for name in ("euler", "heun", "plms", "dpmpp_2m", "ddpm"):
        with pytest.raises(SamplerOptionError, match=f"sampler '{name}' has no option 'eta'") as info:
            SamplingOptions(sampler=name, eta=0.5).validate()
        assert "\n" not in str(info.value) and "ddim" in str(info.value)
    with pytest.raises(SamplerOptionError, match="no option 'order'"):
        SamplingOptions(sampler="euler", extra={"order": 2}).validate()
    with pytest.raises(SamplerOptionError, match="given twice"):
        SamplingOptions(sampler="ddim", eta=0.1, extra={"eta": 0.2}).validate()


def test_the_eta_given_reaches_the_ancestral_samplers():
    sigmas = get_sigmas(AC, 6)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]

    def run(**kw):
        options = SamplingOptions(**kw)
        return sample(gaussian, x.clone(), sigmas.double(), options, torch.Generator().manual_seed(1), progress=False)

    euler = run(sampler="euler")
    torch.testing.assert_close(run(sampler="euler_ancestral", eta=0.0), euler)
    torch.testing.assert_close(run(sampler="dpmpp_2m_sde", eta=0.0), run(sampler="dpmpp_2m"))
    assert not torch.equal(run(sampler="euler_ancestral"), euler)  # its own default, eta = 1


def test_strength_is_one_check_with_one_class():
    assert StrengthError is InvalidStrengthError
    model = tiny_model()
    from PIL import Image

    from ldm.tasks.img2img import img2img

    with pytest.raises(InvalidStrengthError, match=r"strength must be in \[0, 1\]"):
        img2img(model, Image.new("RGB", (16, 16)), "x", strength=2.0)


def test_sampling_and_training_share_the_parameterisation():
    """The sampler's denoiser at sigma_t gives the x0 that the training-side conversion gives at t."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([5, 300, 900])
    for prediction in ("eps", "v"):
        param = VPParameterisation(AC, prediction)
        out = torch.randn(3, 4, 2, 2, generator=g)  # any network output
        x_t = q_sample(x0, t, AC, eps)
        den = DiscreteTimeDenoiser(lambda x_vp, tt, context=None, y=None: out, parameterisation=param)
        sigma = param.sigmas[t]
        x = x_t * (1 + sigma**2).sqrt().reshape(-1, 1, 1, 1)  # the same point in sigma space
        expected = (predict_x0_from_eps if prediction == "eps" else predict_x0_from_v)(x_t, t, out, AC)
        torch.testing.assert_close(den(x, sigma), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(param.x0_from_output(x_t, t, out), expected)
        c_skip, c_out, c_in = param.scalings(sigma)
        b = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        torch.testing.assert_close(b(c_skip) * x + b(c_out) * out, den(x, sigma), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b(c_in) * x, x_t, rtol=1e-5, atol=1e-5)


def test_wrappers_are_plain_callables():
    for cls in (DiscreteTimeDenoiser, CFGDenoiser, BlendDenoiser, TiledDenoiser):
        assert "__getattr__" not in vars(cls) and not issubclass(cls, torch.nn.Module)


def test_txt2img_leaves_the_callers_options_alone_and_records_what_ran():
    model = tiny_model()
    options = SamplingOptions(steps=2)
    before = dataclasses.replace(options)
    images = txt2img(model, "a cat", options=options, sampler="euler", guidance_scale=3.0, progress=False)
    assert options == before
    assert images.settings["sampler"] == "euler" and images.settings["guidance_scale"] == 3.0
    assert images.settings["eta"] is None and images.settings["task"] == "txt2img"


def test_conditioning_kinds_decide_the_tasks():
    assert kinds_for("upscale") == ["hybrid-adm"] and set(kinds_for("inpaint")) == {"crossattn", "hybrid"}
    assert set(CONDITIONING) == {"crossattn", "hybrid", "hybrid-adm", "depth"}
    assert set(kinds_for("img2img")) == {"crossattn", "depth"} and kinds_for("txt2img") == ["crossattn"]  # SD 2 depth
    from factories import tiny_inpaint_model

    with pytest.raises(WrongModelError, match="txt2img needs a text-to-image model, not a 'hybrid' model"):
        check_task(tiny_inpaint_model(), "txt2img")


def test_previews_use_a_view_and_leave_the_model_alone():
    from ldm.training.ldm_module import LatentDiffusionModule

    module = LatentDiffusionModule(tiny_model(), ema_decay=0.9)
    unet = module.model.unet
    view = module.model.with_unet(module.inference_unet())
    assert view.unet is module.inference_unet() and module.model.unet is unet and view.vae is module.model.vae
    assert module.sample_grid_images(["a"], steps=1) and module.model.unet is unet


def test_upscaler_module_does_not_write_into_the_batch():
    from factories import tiny_upscaler_model

    from ldm.training.editing import UpscalerModule

    module = UpscalerModule(tiny_upscaler_model(), ema_decay=None)
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": ["a", "b"]}
    keys = set(batch)
    module.loss(batch, torch.Generator().manual_seed(0), drop=False)
    assert set(batch) == keys
    assert torch.equal(module.label_condition(batch), module.conditions(batch, torch.zeros(2, 4, 8, 8))["y"])


def test_every_sampler_runs_through_the_checked_entry_point():
    sigmas = get_sigmas(AC, 3)
    for name in SAMPLERS:
        out = sample(
            gaussian,
            torch.randn(1, 2) * sigmas[0],
            sigmas,
            SamplingOptions(sampler=name),
            torch.Generator().manual_seed(0),
            progress=False,
        )
        assert torch.isfinite(out).all()
