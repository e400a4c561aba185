"""Latent walks: frames between two prompts and/or two seeds, as an animated GIF (or MP4).

Start noise is interpolated spherically: Gaussian noise in high dimension lives near a sphere of
radius sqrt(d), and a straight line between two samples cuts inside it (the midpoint has ~0.71x the
norm), which the sampler reads as "less noise" and renders as a washed-out frame. Text embeddings
are interpolated linearly: they are not Gaussian, and the U-Net's cross-attention is smooth in them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from ldm.core import defaults
from ldm.core.errors import LdmError
from ldm.io.images import OutputError, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions
from ldm.models.prompt_schedule import has_schedule
from ldm.models.seamless import seamless
from ldm.sampling.options import SamplingOptions
from ldm.sampling.precision import Precision, autocast
from ldm.tasks.base import Conditioning, check_task, denoise, resolve_options, start_noise
from ldm.tasks.prompts import prompt_conditions
from ldm.tasks.results import Generated, settings_of
from ldm.tasks.sdxl_handoff import DEFAULT_SWITCH, SDXLMicro, check_sdxl_options
from ldm.tasks.txt2img import image_size

log = logging.getLogger("ldm")


class WalkError(LdmError, ValueError):
    pass


class VideoUnavailableError(WalkError):
    """MP4 output needs imageio with its ffmpeg plugin."""


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation between a and b (treated as single flat vectors); t=0 gives a, t=1 gives b.

    Computed in float64 so the endpoints come back exactly; nearly parallel vectors fall back to a
    straight line, where the sphere's arc and its chord coincide and the sine ratio is ill-conditioned.
    """
    if a.shape != b.shape:
        raise WalkError(f"cannot interpolate tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return torch.lerp(a64, b64, t).to(a.dtype)
    cos = ((a64 / na) * (b64 / nb)).sum().clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if sin.abs() < eps:
        return torch.lerp(a64, b64, t).to(a.dtype)
    out = torch.sin((1.0 - t) * omega) / sin * a64 + torch.sin(t * omega) / sin * b64
    return out.to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation; torch.lerp computes from the nearer end, so both endpoints come back exactly."""
    return torch.lerp(a, b, float(t))


def walk_positions(frames: int) -> list[float]:
    """Evenly spaced t in [0, 1], both ends included."""
    if frames < 2:
        raise WalkError(f"a walk needs at least 2 frames, got {frames}")
    return [k / (frames - 1) for k in range(frames)]


@torch.no_grad()
def walk_frames(
    model: LatentDiffusion,
    prompt_a: str,
    prompt_b: str | None = None,
    seed_a: int = defaults.SEED,
    seed_b: int | None = None,
    frames: int = defaults.WALK_FRAMES,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    options: SamplingOptions | None = None,
    on_frame: Callable[[int, Image.Image], None] | None = None,
    progress: bool = True,
    prompt_options: PromptOptions | None = None,
    precision: str | Precision = "fp32",
    micro: SDXLMicro | None = None,
) -> Generated:
    """Images along the walk from (prompt_a, seed_a) to (prompt_b, seed_b).

    Leaving prompt_b or seed_b out keeps that end fixed, so a walk can vary only the prompt or
    only the seed. Every frame samples with the same generator seed, so ancestral samplers'
    injected noise does not flicker between frames. `on_frame(k, image)` reports each frame. `prompt_options`: how
    the prompts are read (ldm.models.prompt_options); prompt editing has no place in a walk and is refused.
    precision: the autocast, as txt2img's. micro: an SDXL model's micro-conditionings, the same for every frame
    (ldm.tasks.sdxl_handoff.SDXLMicro; a walk has no refiner hand-off).
    """
    prompt_b = prompt_a if prompt_b is None else prompt_b
    seed_b = seed_a if seed_b is None else seed_b
    if prompt_a == prompt_b and seed_a == seed_b:
        raise WalkError("both ends are the same: give a second prompt or a second seed")
    check_task(model, "walk")
    check_sdxl_options(model, micro, None, DEFAULT_SWITCH)
    precision = Precision.of(precision)
    options = resolve_options(options, {}, "walk", model=model)
    if prompt_options is not None and prompt_options.prompt_editing:
        if any(has_schedule(text) for text in (prompt_a, prompt_b, negative_prompt)):
            raise WalkError("prompt editing ([from:to:when], [a|b]) is not supported in a walk")
    positions = walk_positions(frames)
    height, width = image_size(model, height, width)
    shape = (model.latent_channels, height // model.downscale, width // model.downscale)
    noise_a, noise_b = start_noise(shape, [seed_a, seed_b], model.device)
    sdxl = hasattr(getattr(model, "text_encoder", None), "micro_conditions")
    numbers = None if micro is None else micro.sides(height, width)
    if sdxl and prompt_options is not None and (prompt_options.long_prompts or prompt_options.emphasis):
        # SDXL's chunked prompts: one batch brings both ends and the negative to one length (their chunk counts differ)
        both, negatives = [prompt_a, prompt_b], [negative_prompt] * 2
        ends, uncond = prompt_conditions(model, both, negatives, prompt_options, (height, width), numbers)
    elif sdxl:
        # SDXL: each end encoded alone, as txt2img encodes it (a batch of two sums in another order on several
        # threads), so the end frames are txt2img's images bit for bit; the vector y is interpolated with the context.
        sides = [
            prompt_conditions(model, [p], [negative_prompt], prompt_options, (height, width), numbers)
            for p in (prompt_a, prompt_b)
        ]
        ends, uncond = {k: torch.cat([sides[0][0][k], sides[1][0][k]]) for k in sides[0][0]}, sides[0][1]
    else:
        ends, uncond = prompt_conditions(
            model, [prompt_a, prompt_b], [negative_prompt], prompt_options, (height, width)
        )
    uncond = {k: v[:1] for k, v in uncond.items()}
    images: list[Image.Image] = []
    for k, t in enumerate(positions):
        # Each frame's conditioning: the prompts' contexts interpolated; its start: the seeds' noise slerped.
        conditioning = Conditioning({k: lerp(v[0:1], v[1:2], t) for k, v in ends.items()}, uncond)  # SDXL: y too
        generator = torch.Generator(model.device).manual_seed(seed_a)
        start = slerp(noise_a, noise_b, t)[None]
        with seamless(model, options.tiling):
            latent = denoise(model, conditioning, options, start, generator, progress=progress, precision=precision)
            with autocast(model.device, precision):
                image = tensor_to_pil(model.decode_latent(latent))[0]
        images.append(image)
        if on_frame is not None:
            on_frame(k, image)
    numbered = micro.record() if micro is not None else {}
    settings = settings_of(
        "walk",
        options,
        model,
        precision=precision,
        prompting=prompt_options,
        frames=frames,
        height=height,
        width=width,
        **numbered,
    )
    return Generated(images, settings)


def gif_bytes(frames: list[Image.Image], duration_ms: int = 100, loop: int = 0, boomerang: bool = False) -> bytes:
    """An animated GIF; `boomerang` plays the walk back too, so a looping GIF has no jump at the seam."""
    if not frames:
        raise WalkError("no frames to write")
    sequence = list(frames) + (list(frames[-2:0:-1]) if boomerang else [])
    buf = io.BytesIO()
    sequence[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=sequence[1:],
        duration=duration_ms,
        loop=loop,
        optimize=False,
        disposal=1,
    )
    return buf.getvalue()


def save_gif(
    frames: list[Image.Image],
    path: str | Path,
    duration_ms: int = 100,
    loop: int = 0,
    boomerang: bool = False,
    overwrite: bool = True,
) -> Path:
    """Write the GIF atomically; `overwrite=False` never replaces an existing file (WalkError instead)."""
    from ldm.io.checkpoint import atomic_path

    path = Path(path)
    data = gif_bytes(frames, duration_ms, loop, boomerang)
    try:
        with atomic_path(path, exclusive=not overwrite) as tmp:
            Path(tmp).write_bytes(data)
    except FileExistsError:
        raise WalkError(f"{path} already exists (--overwrite replaces it)") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def save_mp4(frames: list[Image.Image], path: str | Path, fps: int = 10, overwrite: bool = True) -> Path:
    """MP4 through imageio's ffmpeg plugin (the imageio-ffmpeg package ships its own ffmpeg binary);
    `overwrite=False` never replaces an existing file (WalkError instead)."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (fail here, with a clear message, not deep inside imageio)
    except ImportError as exc:
        raise VideoUnavailableError("MP4 output needs `pip install imageio imageio-ffmpeg`; GIF works without") from exc
    import numpy as np

    if not frames:
        raise WalkError("no frames to write")
    from ldm.io.checkpoint import atomic_path

    path = Path(path)
    try:
        # Written whole, then renamed: an interrupted encode leaves no half MP4 (ffmpeg needs the .mp4 ending).
        with atomic_path(path, suffix=".tmp.mp4", exclusive=not overwrite) as tmp:
            # macro_block_size=1: our frames may be any multiple of 8, not of the default 16.
            writer = imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv420p")
            try:
                for frame in frames:
                    writer.append_data(np.asarray(frame.convert("RGB")))
            finally:  # not `with`: imageio's writer stays open on an error, and ffmpeg wrote the file later
                writer.close()
    except FileExistsError:
        raise WalkError(f"{path} already exists (--overwrite replaces it)") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
