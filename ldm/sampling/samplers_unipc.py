"""UniPC (Zhao et al. 2023), A1111's "UniPC": the sampler of ldm.sampling.samplers' conventions, as A1111's
modules/models/diffusion/uni_pc runs it (data prediction, order 3, lower orders at the start and the end, UniC after
every step but the last), written in sigma space. Compared out of tree with a VP-space transcription of A1111's
multistep_uni_pc_bh_update on the same grids: equal to 1e-14. tests/models/test_diffusers_parity.py checks both
variants against diffusers' UniPCMultistepScheduler on SD's trailing grid.
"""

from __future__ import annotations

import torch

from ldm.sampling.steps import Callback, Denoiser, Generators, _eval, _report, _steps

# The order of A1111's UniPC (its default uni_pc_order).
UNIPC_ORDER = 3


def _unipc_weights(rks: torch.Tensor, h: torch.Tensor, bh2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """UniPC's (Zhao et al. 2023) B(h) and its right-hand side b for the data-prediction form, with hh = -h:
    b_k = h phi_{k+1}(hh) k! / B(h), B(h) = hh (bh1) or e^{hh} - 1 (bh2), where h phi_1 = e^{hh} - 1 and
    h phi_{k+1} = h phi_k / hh - 1/k!."""
    hh = -h
    b_h = torch.expm1(hh) if bh2 else hh
    h_phi_k = torch.expm1(hh) / hh - 1
    factorial, b = 1, []
    for k in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return b_h, torch.stack(b)


def _unipc(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None,
    callback: Callback | None,
    disable: bool | None,
    bh2: bool,
) -> torch.Tensor:
    """UniPC multistep (UniP predictor + UniC corrector) in data prediction, order UNIPC_ORDER with the lower orders
    at the start and the end (lower_order_final), no corrector on the last step: A1111's settings. The corrector's
    model call at the new point is reused as the next step's D, so it costs one call per step.

    In sigma space (alpha = 1, lambda = -log sigma) the update is A1111's VP one divided by alpha: the methods agree
    on the same sigmas. The step to sigma = 0 is first order and returns D (there lambda is infinite).
    The callback's x is the point D was evaluated at: UniC corrects x after that evaluation (and keeps D)."""
    denoised = _eval(model, x, sigmas[0], extra_args)
    history, lambdas = [denoised], [-sigmas[0].log()]  # newest last
    seen_x = x
    steps = len(sigmas) - 1
    for i in _steps(sigmas, disable):
        _report(callback, i, seen_x, sigmas[i], history[-1])
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0:
            x = history[-1]
            break
        order = min(UNIPC_ORDER, i + 1, steps - i)  # warm-up, then lower_order_final
        lam_next = -sigma_next.log()
        h = lam_next - lambdas[-1]
        d0 = history[-1]
        rks = [(lambdas[-1 - k] - lambdas[-1]) / h for k in range(1, order)]
        d1s = [(history[-1 - k] - d0) / rk for k, rk in zip(range(1, order), rks)]
        rks_t = torch.stack(rks + [h.new_ones(())]) if rks else h.new_ones(1)
        b_h, b = _unipc_weights(rks_t, h, bh2)
        base = (sigma_next / sigma) * x - torch.expm1(-h) * d0
        x_pred = base
        if d1s:  # UniP
            rhos_p = b.new_tensor([0.5]) if order == 2 else torch.linalg.solve(_vander(rks_t[:-1]), b[:-1])
            x_pred = base - b_h * sum(rho * d1 for rho, d1 in zip(rhos_p, d1s))
        if i + 1 == steps:  # a grid that does not end in 0: no corrector on the last step, as A1111's
            x = x_pred
            break
        seen_x, denoised = x_pred, _eval(model, x_pred, sigma_next, extra_args)
        rhos_c = b.new_tensor([0.5]) if order == 1 else torch.linalg.solve(_vander(rks_t), b)  # UniC
        correction = sum(rho * d1 for rho, d1 in zip(rhos_c[:-1], d1s)) + rhos_c[-1] * (denoised - d0)
        x = base - b_h * correction
        history, lambdas = (history + [denoised])[-UNIPC_ORDER:], (lambdas + [lam_next])[-UNIPC_ORDER:]
    return x


def _vander(rks: torch.Tensor) -> torch.Tensor:
    """Rows rks^0, rks^1, ...: UniPC's matrix R."""
    return torch.stack([rks**k for k in range(len(rks))])


@torch.no_grad()
def sample_unipc(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """UniPC, variant bh1 (B(h) = h): A1111's "UniPC" with its default settings (order 3, bh1). See `_unipc`."""
    return _unipc(model, x, sigmas, extra_args, callback, disable, bh2=False)


@torch.no_grad()
def sample_unipc_bh2(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """UniPC, variant bh2 (B(h) = e^h - 1), recommended by its authors for guided sampling (ComfyUI's uni_pc_bh2)."""
    return _unipc(model, x, sigmas, extra_args, callback, disable, bh2=True)


# Imported last: ldm.sampling.samplers imports this module's samplers after defining these (see the module docstring).
