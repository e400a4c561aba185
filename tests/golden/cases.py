"""The golden cases: every task, several samplers, a batch and stochastic samplers, on tiny seeded models.

`python tests/golden/cases.py` records them (tests/golden/outputs.safetensors) from the code as it is;
tests/tasks/test_golden.py replays them. Record only when an issue asks for a change of behaviour (and say so in
the commit): a refactor must keep every output, to the rounding tolerance tests/tasks/test_golden.py explains.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
OUTPUTS = HERE / "outputs.safetensors"
sys.path.insert(0, str(HERE.parents[1]))


def machine() -> str:
    """Where outputs were recorded (torch's version, its CPU capability), named when a replay differs; it does not
    make the results bitwise reproducible: CPUs of one capability still get different kernels."""
    return f"torch {torch.__version__}; {torch.backends.cpu.get_cpu_capability()}; {platform.machine()}"


def picture(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
    return Image.fromarray(base.astype(np.uint8))


def half_mask(size: int = 32) -> Image.Image:
    m = np.zeros((size, size), np.uint8)
    m[:, size // 2 :] = 255
    return Image.fromarray(m)


def _cases() -> dict[str, Callable[[Callable], list[Image.Image]]]:
    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.img2img import img2img
    from ldm.tasks.inpaint import inpaint, outpaint
    from ldm.tasks.txt2img import txt2img
    from ldm.tasks.upscale import upscale
    from ldm.tasks.walk import walk_frames
    from tests.factories import tiny_inpaint_model, tiny_model, tiny_upscaler_model

    eps, v = tiny_model(0), tiny_model(1, parameterization="v")
    inpainter, upscaler = tiny_inpaint_model(2), tiny_upscaler_model(3)
    common = dict(steps=5, guidance_scale=4.0, progress=False)
    cases: dict[str, Callable[[Callable], list[Image.Image]]] = {}
    for sampler in ("ddim", "ddpm", "plms", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde"):
        cases[f"txt2img/{sampler}"] = lambda cb, s=sampler: txt2img(
            eps, ["a cat", "a dog"], "blurry", seed=7, sampler=s, callback=cb, **common
        )
    cases["txt2img/ddim_eta"] = lambda cb: txt2img(eps, "a cat", seed=3, sampler="ddim", eta=0.7, callback=cb, **common)
    cases["txt2img/karras_rescale"] = lambda cb: txt2img(
        eps,
        "a cat",
        seed=4,
        sampler="dpmpp_2m",
        karras=True,
        guidance_rescale=0.7,
        spacing="trailing",
        callback=cb,
        **common,
    )
    cases["txt2img/v_euler_ancestral"] = lambda cb: txt2img(
        v, ["a", "b"], seed=5, sampler="euler_ancestral", callback=cb, **common
    )
    cases["txt2img/v_ddim_threshold"] = lambda cb: txt2img(
        v, "a", seed=6, height=48, width=32, threshold=0.9, callback=cb, **common
    )
    cases["img2img/ddim"] = lambda cb: img2img(
        eps, picture(0), ["a cat", "a dog"], strength=0.6, seed=8, callback=cb, **common
    )
    cases["img2img/euler_ancestral"] = lambda cb: img2img(
        eps, picture(1), "a cat", strength=0.8, seed=9, sampler="euler_ancestral", callback=cb, **common
    )
    cases["inpaint/blend"] = lambda cb: inpaint(
        eps, picture(2), half_mask(), "a dog", seed=10, mode="blend", callback=cb, **common
    )
    cases["inpaint/blend_strength"] = lambda cb: inpaint(
        eps,
        picture(3),
        half_mask(),
        "a dog",
        seed=11,
        mode="blend",
        strength=0.7,
        feather_radius=2,
        sampler="euler",
        callback=cb,
        **common,
    )
    cases["inpaint/concat"] = lambda cb: inpaint(
        inpainter, picture(4), half_mask(), ["a dog", "a cat"], seed=12, callback=cb, **common
    )
    cases["outpaint/concat"] = lambda cb: outpaint(
        inpainter, picture(5), "a dog", right=16, seed=13, callback=cb, **common
    )
    cases["upscale/plain"] = lambda cb: upscale(
        upscaler, picture(6, 16), "a tree", noise_level=20, seed=14, callback=cb, **common
    )
    cases["upscale/tiled"] = lambda cb: upscale(
        upscaler,
        picture(7, 24),
        "a tree",
        noise_level=40,
        seed=15,
        tile_size=16,
        tile_overlap=8,
        sampler="dpmpp_2m_sde",
        callback=cb,
        **common,
    )
    # 30 steps: the walk's default when the case was recorded (walks now default to 20, as the CLI's do).
    cases["walk/slerp"] = lambda cb: walk_frames(
        eps, "a cat", "a dog", seed_a=1, seed_b=2, frames=3, options=SamplingOptions(steps=30), progress=False
    )
    return cases


def run_all() -> dict[str, torch.Tensor]:
    """Each case's outputs: the images (uint8) and every sampler step's denoised latents (float32)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split over threads can round differently
    try:
        out: dict[str, torch.Tensor] = {}
        for name, case in _cases().items():
            steps: list[torch.Tensor] = []
            images = case(lambda info: steps.append(info["denoised"].detach().float().cpu().clone()))
            out[f"{name}/images"] = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
            if steps:
                out[f"{name}/denoised"] = torch.stack(steps)
        return out
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    from safetensors.torch import save_file

    outputs = run_all()
    save_file(outputs, str(OUTPUTS), metadata={"machine": machine()})
    print(f"recorded {len(outputs)} tensors on {machine()} -> {OUTPUTS}")
