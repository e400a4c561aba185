"""Our samplers against k-diffusion itself (issue 41): k_diffusion.sampling of k-diffusion 0.1.1.post1, installed
beside the project by scripts/setup.sh, run on the same denoiser, the same sigmas and the same start noise.

- Every sampler k-diffusion has that we have too (PAIRS; DPM fast and DPM adaptive, which pick their own grids,
  we do not have) agrees with ours to float32 rounding: the deterministic ones as they are, the ancestral and SDE
  ones given the same noise. Ours draw noise from a torch.Generator; k-diffusion's from its `noise_sampler`
  argument, here one that draws from an identically seeded generator in the same order, which the generators'
  states after the run confirm.
- DPM++ SDE: k-diffusion draws its two noises of a step from a Brownian tree (torchsde) as increments of one path
  over sigma; ours draws two Gaussians and combines them into the same increments (sample_dpmpp_sde's docstring),
  not through torchsde. Given the same noise means here a `noise_sampler` that forms k-diffusion's increments
  from our two draws; a separate test checks that k-diffusion's own Brownian tree gives the correlation ours has.
- The sigma grids: our Karras and exponential schedules against k-diffusion's get_sigmas_karras and
  get_sigmas_exponential, our "linspace" spacing against its DiscreteSchedule.get_sigmas (A1111's "Uniform").
- A1111's labels on the default model: the grid and sampler our A1111-named entry runs (ldm.io.a1111_samplers,
  ldm.tasks.base.model_sigmas, ldm.sampling.options.sample) against the k-diffusion function A1111 calls on the
  grid A1111 builds, its next-to-last sigma dropped for DPM2, DPM2 a and DPM++ 3M SDE.

Two denoisers: the analytic one of Gaussian data (tests/sampling/test_samplers.py), in float32, and the shipped
default model (checkpoints/emoji/model.safetensors) with classifier-free guidance (our CFGDenoiser, the same
callable for both sides), a few steps at its 16 x 16 latent size on the CPU.
k-diffusion missing is a failure, not a skip: CI installs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from ldm.diffusion.schedules import exponential_sigmas, get_sigmas, karras_sigmas
from ldm.formats.load import load_model
from ldm.io.a1111_samplers import A1111_SAMPLERS, sampler_settings
from ldm.sampling.denoisers import CFGDenoiser
from ldm.sampling.options import SamplingOptions, sample
from ldm.sampling.samplers import SAMPLERS
from ldm.tasks.base import model_sigmas

ROOT = Path(__file__).resolve().parents[2]
K_DIFFUSION_VERSION = "0.1.1.post1"  # scripts/setup.sh pins it; docs/cli.md names it
# Our sampler -> k-diffusion's function of the same method.
PAIRS = {
    name: f"sample_{name}"
    for name in (
        "euler",
        "euler_ancestral",
        "heun",
        "lms",
        "dpm_2",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
    )
}
# A1111's labels of those samplers.
A1111_LABELS = [label for label, (ours, _) in A1111_SAMPLERS.items() if ours in PAIRS]
# k-diffusion's samplers without a counterpart here: DPM-Solver fast and adaptive choose their own steps between
# sigma_min and sigma_max (no sigma grid), A1111's "DPM fast" and "DPM adaptive".
NOT_OURS = {"sample_dpm_fast", "sample_dpm_adaptive"}
# A1111's sampler options, written out from its sd_samplers_kdiffusion.py (not from ours): the schedule its
# "Automatic" schedule type picks (no "scheduler" option: the model wrapper's get_sigmas, "Uniform"), and the labels
# it runs on the grid of steps + 1 with the next-to-last sigma dropped (discard_next_to_last_sigma).
A1111_AUTOMATIC = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2S a": "Karras",
    "DPM++ 3M SDE": "Exponential",
    "Euler a": "Uniform",
    "Euler": "Uniform",
    "LMS": "Uniform",
    "Heun": "Uniform",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
}
A1111_DISCARD_NEXT_TO_LAST = {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
# Float32 rounding: the largest difference allowed, relative to the largest value of k-diffusion's result. Observed
# on the Gaussian at most 4e-7 (dpm_2_ancestral); the operations are the same, in another order (k-diffusion goes
# through lambda = -log sigma and back), so each step differs by a few float32 ulps.
GAUSSIAN_RTOL = 1e-5
# The default model, on the same grid: the U-Net amplifies a step's rounding differences into the next step's
# prediction (observed at most 1.5e-6, LMS). On each side's own grid, which differ in their last float32 bits
# (A1111's computed in float32, ours in float64), DPM2 a differed by 1.2e-4 in a trial at 8 steps: hence the grids
# are compared apart (test_a1111_grid_on_the_gaussian_same_as_k_diffusion), and the model runs on A1111's.
MODEL_RTOL = 1e-5
STEPS = 10
MODEL_STEPS = 6


def k_diffusion_module(name: str) -> ModuleType:
    """k_diffusion.<name> without the package's __init__, which imports its training and evaluation modules and
    with them scikit-image, clean-fid, CLIP, kornia and wandb (whose requirements would pull numpy back to 1.x);
    sampling.py needs only scipy, torchdiffeq, torchsde and k_diffusion.utils (torch, torchvision, PIL,
    safetensors). scripts/setup.sh installs k-diffusion with --no-deps and those beside it."""
    spec = importlib.util.find_spec("k_diffusion")
    assert spec is not None, (
        f"k-diffusion is not installed: scripts/setup.sh installs k-diffusion=={K_DIFFUSION_VERSION}"
    )
    if "k_diffusion" not in sys.modules:
        sys.modules["k_diffusion"] = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
    return importlib.import_module(f"k_diffusion.{name}")


@pytest.fixture(scope="module")
def kd() -> ModuleType:
    return k_diffusion_module("sampling")


@pytest.fixture(scope="module")
def default_model():
    return load_model(variant="full", device="cpu")


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of data N(mu, s^2) per channel (tests/sampling/test_samplers.py), in float32."""
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0]).reshape(1, 4, 1, 1)
    s = torch.tensor([0.3, 1.0, 0.5, 0.6]).reshape(1, 4, 1, 1)
    sigma = sigma.reshape(-1, 1, 1, 1)
    return (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)


class SameNoise:
    """k-diffusion's noise_sampler(sigma, sigma_next) drawing, from its own generator seeded as ours, what our
    sampler draws in the same place: unit Gaussians, one per call; for DPM++ SDE the Brownian increments that ours
    forms from its two draws (sample_dpmpp_sde): a call that starts where the last one did and ends below it gets
    (W(end') - W(start)) / sqrt(start - end') of the path the last call's draw began."""

    def __init__(self, x: torch.Tensor, seed: int, brownian: bool = False):
        self.generator = torch.Generator().manual_seed(seed)
        self.shape, self.dtype, self.brownian = x.shape, x.dtype, brownian
        self.last: tuple[float, float, torch.Tensor] | None = None

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        start, end = float(sigma), float(sigma_next)
        z = torch.randn(self.shape, generator=self.generator, dtype=self.dtype)
        if not self.brownian:
            return z
        last, self.last = self.last, (start, end, z)
        if last is None or abs(last[0] - start) > 1e-5 * start or not end < last[1]:
            return z
        mid, first = last[1], last[2]
        return ((start - mid) ** 0.5 * first + (mid - end) ** 0.5 * z) / (start - end) ** 0.5


def run_both(
    kd: ModuleType,
    name: str,
    denoiser,
    x: torch.Tensor,
    ours_sigmas: torch.Tensor,
    their_sigmas: torch.Tensor,
    ours=None,
    seed: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, k-diffusion's) from the same start x, with the same noise; asserts both drew as many noises."""
    function = getattr(kd, PAIRS[name])
    ours_generator = torch.Generator().manual_seed(seed)
    if ours is None:
        result = SAMPLERS[name](denoiser, x.clone(), ours_sigmas, disable=True, generator=ours_generator)
    else:
        result = ours(denoiser, x.clone(), ours_sigmas, ours_generator)
    kwargs = {}
    noise = SameNoise(x, seed, brownian=name == "dpmpp_sde")
    if "noise_sampler" in inspect.signature(function).parameters:
        kwargs["noise_sampler"] = noise
    theirs = function(denoiser, x.clone(), their_sigmas, disable=True, **kwargs)
    assert torch.equal(ours_generator.get_state(), noise.generator.get_state()), f"{name}: other numbers of draws"
    return result, theirs


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def test_k_diffusion_is_the_pinned_version_installed_beside_the_project():
    assert importlib.metadata.version("k-diffusion") == K_DIFFUSION_VERSION
    assert f"k-diffusion=={K_DIFFUSION_VERSION}" in (ROOT / "scripts" / "setup.sh").read_text()


def test_every_sampler_of_k_diffusion_is_compared_or_named_as_not_ours(kd):
    theirs = {name for name, value in vars(kd).items() if name.startswith("sample_") and callable(value)}
    assert theirs == set(PAIRS.values()) | NOT_OURS
    assert set(PAIRS) <= set(SAMPLERS)
    # Every A1111 label over a k-diffusion sampler is one of the pairs, and each is compared below.
    assert {A1111_SAMPLERS[label][0] for label in A1111_LABELS} == set(PAIRS)
    assert set(A1111_LABELS) == set(A1111_AUTOMATIC)


def test_sigma_schedules_match_k_diffusion(kd, default_model):
    for n in (1, 2, 10, 31):
        torch.testing.assert_close(
            karras_sigmas(0.0292, 14.61, n).float(), kd.get_sigmas_karras(n, 0.0292, 14.61)[:-1], rtol=2e-6, atol=0
        )
        torch.testing.assert_close(
            exponential_sigmas(0.0292, 14.61, n).float(), kd.get_sigmas_exponential(n, 0.0292, 14.61)[:-1],
            rtol=2e-6, atol=0,
        )  # fmt: skip
    # On a model's schedule, from its alphas_cumprod as A1111's k-diffusion wrapper holds them (float32 sigmas).
    ac = default_model.alphas_cumprod.float()
    schedule = k_diffusion_module("external").DiscreteSchedule(((1 - ac) / ac) ** 0.5, quantize=False)
    low, high = schedule.sigma_min.item(), schedule.sigma_max.item()
    for n in (1, 10, 31):
        torch.testing.assert_close(
            get_sigmas(ac, n, karras=True), kd.get_sigmas_karras(n, low, high), rtol=2e-6, atol=0
        )
        torch.testing.assert_close(
            get_sigmas(ac, n, spacing="exponential"), kd.get_sigmas_exponential(n, low, high), rtol=2e-6, atol=0
        )
        torch.testing.assert_close(get_sigmas(ac, n, spacing="linspace"), schedule.get_sigmas(n), rtol=2e-6, atol=0)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_gaussian_denoiser_same_as_k_diffusion(kd, name):
    sigmas = torch.cat([karras_sigmas(0.0292, 14.61, STEPS), torch.zeros(1, dtype=torch.float64)]).float()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    ours, theirs = run_both(kd, name, gaussian_denoiser, x, sigmas, sigmas)
    assert ours.dtype == theirs.dtype == torch.float32
    difference = relative_difference(ours, theirs)
    print(f"{name}: max abs difference {float((ours - theirs).abs().max()):.2e}, relative {difference:.2e}")
    assert difference <= GAUSSIAN_RTOL, name


def test_ancestral_noise_is_drawn_where_k_diffusion_draws_it(kd):
    """Not a vacuous match: with another seed on k-diffusion's side the ancestral results differ by O(1)."""
    sigmas = torch.cat([karras_sigmas(0.0292, 14.61, STEPS), torch.zeros(1, dtype=torch.float64)]).float()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    ours = SAMPLERS["euler_ancestral"](gaussian_denoiser, x.clone(), sigmas, disable=True,
                                       generator=torch.Generator().manual_seed(5))  # fmt: skip
    other = kd.sample_euler_ancestral(gaussian_denoiser, x.clone(), sigmas, disable=True, noise_sampler=SameNoise(x, 6))
    assert relative_difference(ours, other) > 0.1


def test_dpmpp_sde_noise_has_the_correlation_of_k_diffusions_brownian_tree(kd):
    """k-diffusion's two noises of a DPM++ SDE step, (W(sigma_s) - W(sigma)) / sqrt(sigma - sigma_s) and
    (W(sigma') - W(sigma)) / sqrt(sigma - sigma'), are unit Gaussians with correlation sqrt((sigma - sigma_s) /
    (sigma - sigma')): the law of ours, whose second noise is built with exactly that correlation."""
    x = torch.zeros(20000)
    sigma, sigma_next = torch.tensor(3.0), torch.tensor(1.2)
    sigma_s = (sigma * sigma_next).sqrt()
    tree = kd.BrownianTreeNoiseSampler(x, sigma_next, sigma, seed=7)
    first, second = tree(sigma, sigma_s), tree(sigma, sigma_next)
    expected = float(((sigma - sigma_s) / (sigma - sigma_next)).sqrt())
    tolerance = 4 / len(x) ** 0.5  # four standard errors of a mean of 20000 products
    assert abs(float((first * second).mean()) - expected) < tolerance
    assert abs(float(first.std()) - 1) < tolerance and abs(float(second.std()) - 1) < tolerance


def a1111_grid(kd: ModuleType, label: str, alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """The sigmas A1111 runs `label` on with its "Automatic" schedule type (KDiffusionSampler.get_sigmas): the
    model wrapper's float32 sigmas give sigma_min and sigma_max; one step more and the next-to-last sigma dropped
    where the label says so."""
    schedule = k_diffusion_module("external").DiscreteSchedule(
        ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize=False
    )
    low, high = schedule.sigma_min.item(), schedule.sigma_max.item()
    discard = label in A1111_DISCARD_NEXT_TO_LAST
    n = steps + discard
    schedule_type = A1111_AUTOMATIC[label]
    if schedule_type == "Karras":
        sigmas = kd.get_sigmas_karras(n, low, high)
    elif schedule_type == "Exponential":
        sigmas = kd.get_sigmas_exponential(n, low, high)
    else:
        sigmas = schedule.get_sigmas(n)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def our_a1111_entry(label: str, steps: int, model) -> tuple[SamplingOptions, torch.Tensor]:
    """The options and grid our A1111-named entry runs for `label` with A1111's "Automatic" schedule type."""
    options = SamplingOptions(steps=steps, **sampler_settings(label, "Automatic", from_a1111=True))
    return options, model_sigmas(model, options)


def project_sampler(options: SamplingOptions):
    """Ours through the project's one way into the samplers, ldm.sampling.options.sample."""
    return lambda denoiser, x, sigmas, generator: sample(denoiser, x, sigmas, options, generator, progress=False)


@pytest.mark.parametrize("label", A1111_LABELS)
def test_a1111_grid_on_the_gaussian_same_as_k_diffusion(kd, default_model, label):
    """Our grid and sampler for an A1111 label against k-diffusion on A1111's grid, with the SD schedule's sigmas
    (A1111's DPM2 on the grid of 11 sigmas with the next-to-last dropped)."""
    ac = default_model.alphas_cumprod.float()
    options, ours_sigmas = our_a1111_entry(label, STEPS, SimpleNamespace(alphas_cumprod=ac, device="cpu"))
    their_sigmas = a1111_grid(kd, label, ac, STEPS)
    assert len(ours_sigmas) == len(their_sigmas) == STEPS + 1
    torch.testing.assert_close(ours_sigmas, their_sigmas, rtol=2e-6, atol=0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * their_sigmas[0]
    ours, theirs = run_both(
        kd, options.sampler, gaussian_denoiser, x, ours_sigmas, their_sigmas, ours=project_sampler(options)
    )
    assert relative_difference(ours, theirs) <= GAUSSIAN_RTOL


@pytest.fixture(scope="module")
def guided_default_model(default_model):
    """The shipped model's denoiser with classifier-free guidance at scale 5 ("red heart" against ""), the same
    callable for both sides."""
    cond, uncond = default_model.encode_text(["red heart"]), default_model.encode_text([""])
    return CFGDenoiser(default_model.denoiser(), {"context": cond}, {"context": uncond}, 5.0)


@pytest.mark.parametrize("label", A1111_LABELS)
def test_default_model_same_as_k_diffusion(kd, default_model, guided_default_model, label):
    """On A1111's grid for the label (which our own equals to float32 rounding: the Gaussian test above), so that
    the U-Net sees the same time inputs on both sides."""
    options, _ = our_a1111_entry(label, MODEL_STEPS, default_model)
    sigmas = a1111_grid(kd, label, default_model.alphas_cumprod.float(), MODEL_STEPS)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    ours, theirs = run_both(kd, options.sampler, guided_default_model, x, sigmas, sigmas, ours=project_sampler(options))
    difference = relative_difference(ours, theirs)
    print(f"{label}: max abs difference {float((ours - theirs).abs().max()):.2e}, relative {difference:.2e}")
    assert difference <= MODEL_RTOL, label
