"""More samplers, by the names users know from A1111 (LMS, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, DPM++ 3M SDE, LCM;
UniPC is in ldm.sampling.samplers_unipc): plain functions over a denoiser with the conventions of
ldm.sampling.samplers (sigma space, a grid ending in 0, all noise from `generator`, one callback per step). Written
from the maths of the papers and of
k-diffusion's k_diffusion/sampling.py and A1111's LCM sampler, with the same step rules, so that a name picks the
same method as there. Differences from those are said in each docstring.

lambda = -log sigma below (half the log-SNR); h = lambda' - lambda is a step's length in it.
"""

from __future__ import annotations

import numpy as np
import torch

from ldm.sampling.steps import Callback, Denoiser, Generators, _d, _eval, _noise, _report, _steps, ancestral_step

# The order of k-diffusion's LMS.
LMS_ORDER = 4
# A1111 runs these on the grid of steps + 1 with its next-to-last sigma dropped (its discard_next_to_last_sigma), so
# that their costly last steps start from a larger sigma; ldm.tasks.base.model_sigmas does the same
# (`discard_next_to_last`).
DISCARD_NEXT_TO_LAST_SIGMA = ("dpm_2", "dpm_2_ancestral", "dpmpp_3m_sde")


def discard_next_to_last(sigmas: torch.Tensor) -> torch.Tensor:
    """The grid without its next-to-last sigma (the smallest above 0): [s_0, ..., s_{n-2}, 0] from
    [s_0, ..., s_{n-1}, 0]."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """Linear multistep weights for the step sigmas[i] -> sigmas[i + 1] from the derivatives at sigmas[i], ...,
    sigmas[i - order + 1] (newest first): the integral over the step of each Lagrange basis polynomial through those
    sigmas. k-diffusion integrates them numerically (scipy's quad); here exactly, as polynomials."""
    nodes = [sigmas[i - k] for k in range(order)]
    weights = []
    for j in range(order):
        basis = np.array([1.0])
        for k, node in enumerate(nodes):
            if k != j:
                basis = np.polynomial.polynomial.polymul(basis, [-node, 1.0]) / (nodes[j] - node)
        integral = np.polynomial.polynomial.polyint(basis)
        weights.append(
            float(
                np.polynomial.polynomial.polyval(sigmas[i + 1], integral)
                - np.polynomial.polynomial.polyval(sigmas[i], integral)
            )
        )
    return weights


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Linear multistep of order 4 on dx/dsigma = d(x, sigma) (k-diffusion's sample_lms, A1111's "LMS"):

        x' = x + sum_j c_j d_{i-j},   c_j = integral from sigma_i to sigma_{i+1} of the Lagrange basis l_j,

    with the order growing 1, 2, 3, 4 over the first steps. The weights are exact for uneven grids (unlike PLMS's
    constant ones), so the method is of order 4 where the derivative is smooth in sigma."""
    grid = sigmas.detach().double().cpu().tolist()
    history: list[torch.Tensor] = []
    for i in _steps(sigmas, disable):
        denoised = _eval(model, x, sigmas[i], extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        history = ([_d(x, sigmas[i], denoised)] + history)[:LMS_ORDER]
        weights = lms_coefficients(grid, i, len(history))
        x = x + sum(weight * d for weight, d in zip(weights, history))
    return x


def _dpm2_step(
    model: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_to: torch.Tensor,
    d: torch.Tensor,
    extra_args: dict | None,
) -> torch.Tensor:
    """DPM-Solver-2's midpoint step from sigma to sigma_to in sigma space: the derivative is taken again at the
    geometric mean sigma_mid = sqrt(sigma * sigma_to) (the midpoint in lambda) after an Euler step there."""
    sigma_mid = (sigma.log() + sigma_to.log()).div(2).exp()
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = _d(x_mid, sigma_mid, _eval(model, x_mid, sigma_mid, extra_args))
    return x + d_mid * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """DPM2 (k-diffusion's sample_dpm_2, Karras et al. Alg. 2 with DPM-Solver-2's midpoint): second order, two model
    calls per step; the last step to sigma = 0 is Euler's. k-diffusion's churn options (s_churn, ...) are left out:
    A1111 runs it with none."""
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        d = _d(x, sigma, denoised)
        x = x + d * (sigma_next - sigma) if sigma_next == 0 else _dpm2_step(model, x, sigma, sigma_next, d, extra_args)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DPM2 a: the DPM2 step down to sigma_down, then fresh noise of std sigma_up back to sigma_next
    (ldm.sampling.samplers.ancestral_step); eta = 0 is sample_dpm_2."""
    for i in _steps(sigmas, disable):
        sigma = sigmas[i]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        down, up = ancestral_step(sigma, sigmas[i + 1], eta)
        d = _d(x, sigma, denoised)
        if down == 0:
            x = x + d * (down - sigma)
        else:
            x = _dpm2_step(model, x, sigma, down, d, extra_args)
            if up > 0:
                x = x + _noise(x, generator) * up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DPM++ 2S a: a DPM-Solver++(2S) step (Lu et al. 2022, Alg. 1, r = 1/2) down to sigma_down, then noise
    sigma_up back to sigma_next. With h = lambda(sigma_down) - lambda(sigma) and sigma_s = sqrt(sigma sigma_down):

        x_s = (sigma_s / sigma) x - (e^{-h/2} - 1) D(x, sigma),
        x' = (sigma_down / sigma) x - (e^{-h} - 1) D(x_s, sigma_s).

    The step to sigma_down = 0 is Euler's (it returns D). eta = 0 is the deterministic DPM-Solver++(2S)."""
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        down, up = ancestral_step(sigma, sigma_next, eta)
        if down == 0:
            x = x + _d(x, sigma, denoised) * (down - sigma)
        else:
            h = sigma.log() - down.log()
            sigma_s = (sigma * down).sqrt()
            x_s = (sigma_s / sigma) * x - torch.expm1(-h / 2) * denoised
            x = (down / sigma) * x - torch.expm1(-h) * _eval(model, x_s, sigma_s, extra_args)
        if sigma_next > 0 and up > 0:
            x = x + _noise(x, generator) * up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DPM++ SDE: stochastic DPM-Solver++ with a midpoint stage (r = 1/2), as k-diffusion's sample_dpmpp_sde.

    Each of the two stages is an ancestral DPM-Solver++(1) step from sigma: to sigma_s = sqrt(sigma sigma') with
    D(x, sigma), then to sigma' with D' = (1 - 1/(2r)) D(x, sigma) + 1/(2r) D(x_s, sigma_s) = D(x_s, sigma_s),
    each splitting its target into sigma_down plus noise sigma_up (ldm.sampling.samplers.ancestral_step with eta).

    Differs from k-diffusion in its noise: k-diffusion draws each stage's unit noise from one Brownian tree
    (torchsde) over sigma, as the increments W(sigma_s) - W(sigma) and W(sigma') - W(sigma) of one path, normalised;
    here two fresh Gaussian draws z1, z2 from `generator` are combined with the same correlation,
        n1 = z1,   n2 = (sqrt(sigma - sigma_s) z1 + sqrt(sigma_s - sigma') z2) / sqrt(sigma - sigma'),
    so the law of a step is k-diffusion's but not its draws: results match k-diffusion's only at eta = 0
    (deterministic: DPM-Solver++(2S)) or given the same noise."""
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = x + _d(x, sigma, denoised) * (sigma_next - sigma)
            continue
        sigma_s = (sigma * sigma_next).sqrt()
        down, up = ancestral_step(sigma, sigma_s, eta)
        x_s = (down / sigma) * x - torch.expm1(down.log() - sigma.log()) * denoised
        z1 = _noise(x, generator) if up > 0 else None
        if z1 is not None:
            x_s = x_s + z1 * up
        denoised_s = _eval(model, x_s, sigma_s, extra_args)
        down, up = ancestral_step(sigma, sigma_next, eta)
        x = (down / sigma) * x - torch.expm1(down.log() - sigma.log()) * denoised_s
        if up > 0 and z1 is not None:
            brownian = (sigma - sigma_s).sqrt() * z1 + (sigma_s - sigma_next).sqrt() * _noise(x, generator)
            x = x + brownian / (sigma - sigma_next).sqrt() * up
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """DPM++ 3M SDE (k-diffusion's sample_dpmpp_3m_sde): a third-order multistep exponential integrator of the SDE
    whose noise eta scales. With h_eta = (1 + eta) h and phi_2 = (e^{-h_eta} - 1) / h_eta + 1, phi_3 = phi_2 / h_eta
    - 1/2, first and second divided differences d1, d2 of the last three D's (in steps of lambda relative to h):

        x' = e^{-h_eta} x + (1 - e^{-h_eta}) D_i + phi_2 d1 - phi_3 d2 + sigma' sqrt(1 - e^{-2 eta h}) z,

    (second order, phi_2 d1 only, on the second step; first order on the first); the step to 0 returns D_i.
    eta = 0 is the deterministic DPM-Solver++(3M). Noise: fresh Gaussian per step, not k-diffusion's Brownian tree,
    which for this sampler (one draw per step over disjoint intervals) has the same law."""
    old: list[torch.Tensor] = []  # the previous D's, newest first
    steps_back: list[torch.Tensor] = []  # the previous h's, newest first
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = sigma.log() - sigma_next.log()
        h_eta = h * (eta + 1)
        x = torch.exp(-h_eta) * x - torch.expm1(-h_eta) * denoised
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        if len(old) >= 2:
            r0, r1 = steps_back[0] / h, steps_back[1] / h
            d1_0, d1_1 = (denoised - old[0]) / r0, (old[0] - old[1]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif old:
            x = x + phi_2 * (denoised - old[0]) / (steps_back[0] / h)
        if eta > 0:
            x = x + _noise(x, generator) * sigma_next * (-torch.expm1(-2 * h * eta)).sqrt()
        old, steps_back = [denoised] + old[:1], [h] + steps_back[:1]
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """LCM multistep sampling (Luo et al. 2023) for LCM and Turbo models: each step takes the x0 prediction D and
    noises it afresh to the next level, x' = D + sigma' z; the last step returns D. A1111's "LCM" sampler; its
    consistency-model boundary scaling (c_skip, c_out) belongs to the model's denoiser and is not applied here."""
    for i in _steps(sigmas, disable):
        denoised = _eval(model, x, sigmas[i], extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + _noise(x, generator) * sigmas[i + 1]
    return x


# Imported last: ldm.sampling.samplers imports this module's samplers after defining these (see the module docstring).
