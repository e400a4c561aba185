"""Sampling against diffusers as an independent reference: SD-exact DDIM and the seeded start noise.

diffusers' DDIMScheduler with Stable Diffusion's settings (set_alpha_to_one=False, steps_offset=1, leading
spacing) is the original DDIMSampler's arithmetic. It is pure maths, so its loop is driven here with our
own U-Net's eps predictions (guided in eps space, as the original does) and compared with our "sd" DDIM
variant, which runs the same U-Net through our denoiser, guidance and sigma grid. The same holds for UniPC
(UniPCMultistepScheduler), Euler and LCM on the trailing grid.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from factories import tiny_model

from ldm.sampling.options import SamplingOptions
from ldm.tasks.base import Conditioning, denoise, start_noise
from ldm.tasks.prompts import prompt_conditions

TOLERANCE = 1e-4  # of the largest value; measured: about 7e-7 at 10 and at 50 steps
SCALE = 7.5


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.fixture(scope="module")
def setup():
    eps_model, v_model = tiny_model(0), tiny_model(1, parameterization="v")
    with torch.no_grad():
        cond, uncond = prompt_conditions(eps_model, ["a cat", "a dog"], ["", "blurry"])
        v_cond, v_uncond = prompt_conditions(v_model, ["a cat", "a dog"], ["", "blurry"])
    noise = start_noise((4, 8, 8), [0, 1], torch.device("cpu"))
    return {"eps": (eps_model, cond, uncond), "v": (v_model, v_cond, v_uncond), "noise": noise}


@torch.no_grad()
def diffusers_ddim(model, cond, uncond, noise, steps, steps_offset=1, eta=0.0, seed=None):
    """diffusers' DDIM loop as SD runs it, with eps-space guidance; with eta > 0 its noise is drawn from a generator
    seeded `seed`, one draw per step, as our DDIM draws it."""
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=steps_offset,
        timestep_spacing="leading",
        prediction_type="v_prediction" if model.prediction == "v" else "epsilon",
    )
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model.unet(
            torch.cat([x, x]),
            torch.full((2 * len(x),), int(t)),
            context=torch.cat([uncond["context"], cond["context"]]),
        )
        out_uncond, out_cond = out.chunk(2)
        variance_noise = torch.randn(x.shape, generator=generator) if eta > 0 else None
        x = scheduler.step(
            out_uncond + SCALE * (out_cond - out_uncond), t, x, eta=eta, variance_noise=variance_noise
        ).prev_sample
    return x


@torch.no_grad()
def ours(model, cond, uncond, noise, steps, variant="sd", eta=None, seed=None):
    options = SamplingOptions(steps=steps, guidance_scale=SCALE, ddim_variant=variant, eta=eta)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return denoise(model, Conditioning(cond, uncond), options, noise, generator, progress=False)


@pytest.mark.parametrize("steps", [10, 50])
def test_sd_ddim_matches_diffusers(setup, steps):
    model, cond, uncond = setup["eps"]
    assert (
        rel_err(
            ours(model, cond, uncond, setup["noise"], steps), diffusers_ddim(model, cond, uncond, setup["noise"], steps)
        )
        <= TOLERANCE
    )


def test_sd_ddim_matches_diffusers_for_v_models_and_with_eta(setup):
    model, cond, uncond = setup["v"]
    assert (
        rel_err(ours(model, cond, uncond, setup["noise"], 10), diffusers_ddim(model, cond, uncond, setup["noise"], 10))
        <= TOLERANCE
    )
    model, cond, uncond = setup["eps"]
    assert (
        rel_err(
            ours(model, cond, uncond, setup["noise"], 10, eta=0.5, seed=3),
            diffusers_ddim(model, cond, uncond, setup["noise"], 10, eta=0.5, seed=3),
        )
        <= TOLERANCE
    )


def test_the_comparison_can_fail(setup):
    """Every timestep one earlier (steps_offset 0) or the k variant's ends are far outside the tolerance."""
    model, cond, uncond = setup["eps"]
    theirs = diffusers_ddim(model, cond, uncond, setup["noise"], 10)
    shifted = diffusers_ddim(model, cond, uncond, setup["noise"], 10, steps_offset=0)
    assert rel_err(ours(model, cond, uncond, setup["noise"], 10), shifted) > 10 * TOLERANCE
    assert rel_err(ours(model, cond, uncond, setup["noise"], 10, variant="k"), theirs) > 10 * TOLERANCE


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 64, 96)])
def test_start_noise_is_diffusers_cpu_noise_for_the_same_seed(shape):
    """diffusers' randn_tensor with a CPU generator: one seed for a single image, one generator per image for a
    batch (seed + i, ours: ldm.tasks.base.sample_seeded)."""
    single = randn_tensor((1, *shape), generator=torch.Generator("cpu").manual_seed(1234))
    assert torch.equal(start_noise(shape, [1234], torch.device("cpu")), single)
    batch = randn_tensor((3, *shape), generator=[torch.Generator("cpu").manual_seed(1234 + i) for i in range(3)])
    assert torch.equal(start_noise(shape, [1234, 1235, 1236], torch.device("cpu")), batch)
    assert not torch.equal(start_noise(shape, [1235], torch.device("cpu")), single)  # the seed matters


def few_step_scheduler(kind: str):
    """SD's noise schedule on the trailing grid: SD-Turbo's Euler (diffusers' SD-Turbo pipeline) or LCMScheduler."""
    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
    )
    if kind == "euler":
        return EulerDiscreteScheduler(**common)
    return LCMScheduler(**common, clip_sample=False, set_alpha_to_one=True)


@torch.no_grad()
def diffusers_unguided(model, cond, noise, scheduler, steps):
    """diffusers' loop at guidance_scale <= 1 (SD-Turbo's 0.0, LCM-LoRA's 1): no classifier-free guidance, the
    conditional prediction alone, one U-Net call a step."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model.unet(scheduler.scale_model_input(x, t), torch.full((len(x),), int(t)), context=cond["context"])
        x = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    return x


@torch.no_grad()
def ours_one_step(model, cond, uncond, noise, sampler="lcm"):
    options = SamplingOptions(steps=1, guidance_scale=1.0, sampler=sampler, spacing="trailing")
    return denoise(model, Conditioning(cond, uncond), options, noise, torch.Generator().manual_seed(0), progress=False)


@pytest.mark.parametrize("sampler", ["lcm", "euler"])
def test_one_trailing_step_at_guidance_1_is_diffusers_sd_turbo_at_guidance_0(setup, sampler):
    """`--sampler lcm --spacing trailing --steps 1 --scale 1` (or euler) is diffusers' SD-Turbo call
    (num_inference_steps=1, guidance_scale=0.0: its Euler scheduler on the trailing grid, t = 999, no guidance)."""
    model, cond, uncond = setup["eps"]
    theirs = diffusers_unguided(model, cond, setup["noise"], few_step_scheduler("euler"), 1)
    assert rel_err(ours_one_step(model, cond, uncond, setup["noise"], sampler), theirs) <= TOLERANCE
    # Our guidance 0 is the unconditional prediction alone (k-diffusion's and A1111's CFG), not diffusers' "off".
    options = SamplingOptions(steps=1, guidance_scale=0.0, sampler=sampler, spacing="trailing")
    unconditional = denoise(model, Conditioning(cond, uncond), options, setup["noise"], None, progress=False)
    assert rel_err(unconditional, theirs) > 10 * TOLERANCE


def test_one_lcm_step_is_diffusers_lcm_scheduler_from_the_same_start(setup):
    """LCMScheduler's one step (t = 999 of its 50-step skipping grid, the trailing grid's) with its boundary
    scalings c_skip, c_out (about 1e-9 from x0 there) is our lcm step, once both start from the same latent: it
    starts from noise in VP space, noise * sqrt(1 + sigma^2) in ours, where ours (as k-diffusion's and A1111's
    LCM) starts from noise * sigma, 0.2% smaller at sigma 14.6."""
    model, cond, uncond = setup["eps"]
    sigma = ((1 - model.alphas_cumprod[-1]) / model.alphas_cumprod[-1]).sqrt()
    ours = ours_one_step(model, cond, uncond, setup["noise"])
    same_start = diffusers_unguided(
        model, cond, setup["noise"] * sigma / (1 + sigma**2).sqrt(), few_step_scheduler("lcm"), 1
    )
    assert rel_err(ours, same_start) <= TOLERANCE
    their_start = diffusers_unguided(model, cond, setup["noise"], few_step_scheduler("lcm"), 1)
    assert 10 * TOLERANCE < rel_err(ours, their_start) < 0.01


@torch.no_grad()
def diffusers_guided(model, cond, uncond, x, scheduler, steps, last_step_x0=False):
    """diffusers' loop with eps-space classifier-free guidance (SD's pipeline), from the VP-space latent x.
    last_step_x0: the last step (to sigma 0) returns the scheduler's x0 prediction there, which is what that step is:
    diffusers' UniPC bh1 computes it as x0 - B(h) * 0 with B(h) = -h = -inf at sigma 0, i.e. NaN."""
    scheduler.set_timesteps(steps)
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        out = model.unet(
            torch.cat([x_in, x_in]),
            torch.full((2 * len(x),), int(t)),
            context=torch.cat([uncond["context"], cond["context"]]),
        )
        out_uncond, out_cond = out.chunk(2)
        eps = out_uncond + SCALE * (out_cond - out_uncond)
        if last_step_x0 and i == len(scheduler.timesteps) - 1:
            return scheduler.convert_model_output(eps, sample=x)
        x = scheduler.step(eps, t, x).prev_sample
    return x


def unipc_scheduler(solver_type: str, order: int = 3) -> UniPCMultistepScheduler:
    """diffusers' UniPC as A1111's runs (ours): data prediction, UniC after every step, lower orders at the start
    and the end, a last step to sigma 0, SD's noise schedule on the trailing grid (ours and diffusers' alike)."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        solver_type=solver_type,
        solver_order=order,
        predict_x0=True,
        lower_order_final=True,
        disable_corrector=[],
        final_sigmas_type="zero",
        use_karras_sigmas=False,
        thresholding=False,
        prediction_type="epsilon",
    )


@torch.no_grad()
def ours_guided(model, cond, uncond, noise, sampler, steps):
    options = SamplingOptions(steps=steps, guidance_scale=SCALE, sampler=sampler, spacing="trailing")
    return denoise(model, Conditioning(cond, uncond), options, noise, None, progress=False)


@pytest.mark.parametrize(("sampler", "solver_type"), [("unipc", "bh1"), ("unipc_bh2", "bh2")])
def test_unipc_matches_diffusers_unipc_multistep_scheduler(setup, sampler, solver_type):
    """`--sampler unipc` (unipc_bh2) on SD's trailing grid, 10 steps, guided, is diffusers' UniPCMultistepScheduler
    (solver_type bh1 / bh2, solver_order 3) from the same start: ours starts from noise * sigma_max in sigma space,
    diffusers from that latent in VP space (/ sqrt(1 + sigma^2)). Measured: 1.2e-6 (bh1), 1.0e-6 (bh2).
    For bh1 diffusers' last step is NaN (see diffusers_guided), so its x0 prediction stands for that step.
    The comparison sees the order and the variant: solver_order 2 is 1.5e-3 (bh1) / 1.2e-3 (bh2) off, the other
    variant 2.5e-3."""
    model, cond, uncond = setup["eps"]
    sigma = ((1 - model.alphas_cumprod[-1]) / model.alphas_cumprod[-1]).sqrt()
    same_start = setup["noise"] * sigma / (1 + sigma**2).sqrt()
    bh1 = solver_type == "bh1"
    ours = ours_guided(model, cond, uncond, setup["noise"], sampler, 10)
    theirs = diffusers_guided(model, cond, uncond, same_start, unipc_scheduler(solver_type), 10, last_step_x0=bh1)
    assert rel_err(ours, theirs) <= TOLERANCE
    other_variant = "bh2" if bh1 else "bh1"
    for near_miss in (unipc_scheduler(solver_type, order=2), unipc_scheduler(other_variant)):
        diffusers_near_miss = diffusers_guided(model, cond, uncond, same_start, near_miss, 10, last_step_x0=True)
        assert rel_err(ours, diffusers_near_miss) > 10 * TOLERANCE
