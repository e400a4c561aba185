"""Guided progressive distillation (Meng et al. 2023, after Salimans & Ho 2022), in sigma space.

Denoisers D(x, sigma, **cond) -> x0 work on x = x0 + sigma * eps (ldm.sampling.denoisers); DDIM with eta 0 is the
Euler step of the probability-flow ODE there:

    x' = x + (sigma' - sigma) (x - D(x, sigma)) / sigma = (sigma' / sigma) x + (1 - sigma' / sigma) D(x, sigma)

Stage 1, guidance. The student S(x, sigma, w) learns the teacher's classifier-free-guided prediction

    D_w(x, sigma) = D(x, sigma | "") + w (D(x, sigma | c) - D(x, sigma | ""))

at any noise level and any scale w ~ U[w_min, w_max]: one network evaluation in place of two.

Stage 2, halving. On a grid of N DDIM steps, two teacher steps sigma_a -> sigma_b -> sigma_c give x_c. One student
step sigma_a -> sigma_c lands on x_c exactly when the student predicts

    D~ = (x_c - (sigma_c / sigma_a) x) / (1 - sigma_c / sigma_a)          (= x_c when sigma_c = 0),

Salimans & Ho's target x~ (their eq. 8, in VP variables) written in sigma space. Repeated, N -> N/2 -> ... -> 1.
The grid is DDIM's "trailing" spacing (ldm.diffusion.schedules.timesteps_for): every other point of its N-step grid is its
N/2-step grid, and its first point is the highest trained noise level.

Both stages regress in x0 space with truncated-SNR weights, max(SNR, 1) = max(1 / sigma^2, 1) (Salimans & Ho,
sec. 4): an eps-style weighting that stays finite at the noisiest levels, where eps-matching says little about x0.
Nothing here depends on how the network is parameterised (eps or v): a teacher and a student meet as denoisers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.parameterisation import batch_like
from ldm.diffusion.schedules import get_sigmas

Denoiser = Callable[..., torch.Tensor]


def ddim_step(x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """One DDIM (eta 0) step from sigma to sigma_next ([B] tensors): (sigma'/sigma) x + (1 - sigma'/sigma) D."""
    ratio = batch_like(sigma_next / sigma, x)
    return ratio * x + (1 - ratio) * denoised


def halving_target(
    x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, x_next: torch.Tensor
) -> torch.Tensor:
    """The prediction D~ whose single DDIM step from (x, sigma) lands on x_next at sigma_next (module docstring)."""
    ratio = batch_like(sigma_next / sigma, x)
    return (x_next - ratio * x) / (1 - ratio)


def truncated_snr_weight(sigma: torch.Tensor) -> torch.Tensor:
    """max(SNR, 1) = max(1 / sigma^2, 1), the x0-space weight of both stages."""
    return sigma.pow(-2).clamp(min=1.0)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """mean over the batch of max(SNR, 1) * mean squared x0 error, a scalar."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return (truncated_snr_weight(sigma.float()) * per_sample).mean()


def guided_prediction(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    scale: torch.Tensor,
    cond: dict,
    uncond: dict,
    embedded: bool = False,
) -> torch.Tensor:
    """D_w(x, sigma) with a per-sample scale w [B].

    embedded: the denoiser is a guidance-distilled student, which takes w as an input (one call); otherwise
    classifier-free guidance, with the unconditional and conditional halves as one batched call.
    """
    if embedded:
        return denoiser(x, sigma, guidance=scale, **cond)
    both = {key: torch.cat([uncond.get(key, value), value]) for key, value in cond.items()}
    d_uncond, d_cond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
    return d_uncond + batch_like(scale.to(x.dtype), x) * (d_cond - d_uncond)


def halving_grid(alphas_cumprod: torch.Tensor, teacher_steps: int) -> torch.Tensor:
    """The teacher's sigmas (N strictly decreasing, then 0) for N = teacher_steps, an even number."""
    if teacher_steps < 2 or teacher_steps % 2:
        raise InvalidOptionError(f"a halving stage needs an even number of teacher steps (>= 2), got {teacher_steps}")
    return get_sigmas(alphas_cumprod, teacher_steps, spacing="trailing")


def halving_example(
    teacher: Denoiser,
    x0: torch.Tensor,
    noise: torch.Tensor,
    grid: torch.Tensor,
    index: torch.Tensor,
    scale: torch.Tensor,
    cond: dict,
    uncond: dict,
    teacher_embedded: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, sigma_a, D~) for student step `index` [B] (from grid[2k] to grid[2k + 2]) of a halving stage.

    x = x0 + sigma_a * noise; the teacher takes its two guided DDIM steps from there; D~ is `halving_target`.
    """
    grid = grid.to(x0.device)
    sigma_a, sigma_b, sigma_c = grid[2 * index], grid[2 * index + 1], grid[2 * index + 2]
    x = x0 + batch_like(sigma_a, x0) * noise
    with torch.no_grad():
        x_b = ddim_step(
            x, sigma_a, sigma_b, guided_prediction(teacher, x, sigma_a, scale, cond, uncond, teacher_embedded)
        )
        # A step to sigma 0 is the prediction itself (the ratio is 0), as in DDIM's last step.
        x_c = ddim_step(
            x_b, sigma_b, sigma_c, guided_prediction(teacher, x_b, sigma_b, scale, cond, uncond, teacher_embedded)
        )
        target = halving_target(x, sigma_a, sigma_c, x_c)
    return x, sigma_a, target


def guidance_example(
    teacher: Denoiser,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    scale: torch.Tensor,
    cond: dict,
    uncond: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, D_w) for stage 1: x = x0 + sigma * noise and the teacher's guided prediction there."""
    x = x0 + batch_like(sigma, x0) * noise
    with torch.no_grad():
        return x, guided_prediction(teacher, x, sigma, scale, cond, uncond, embedded=False)
