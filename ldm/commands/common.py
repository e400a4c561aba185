"""Options and steps several subcommands share: model loading, sampling options, saving."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldm.errors import LdmError, InvalidOptionError, MissingFileError
from ldm.images import make_grid, next_index, save_png
from ldm.pipeline import PRECISIONS, SamplingOptions

log = logging.getLogger("ldm")


class EmptyPromptFileError(LdmError, ValueError):
    pass


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="model config YAML (ours or an original SD 2.x one); default: the shipped emoji model")
    p.add_argument("--ckpt", help="weights (.safetensors, or .ckpt read with weights_only)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def add_sampling_args(p: argparse.ArgumentParser, steps: int = 30, scale: float = 7.5) -> None:
    p.add_argument("--negative-prompt", default="", help="what to steer away from (replaces the empty prompt in guidance)")
    p.add_argument("--steps", type=int, default=steps, help="sampling steps")
    p.add_argument("--scale", type=float, default=scale, help="classifier-free guidance scale (1 = no guidance)")
    p.add_argument("--sampler", default="ddim", help="ddim, ddpm, plms, euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--spacing", default="leading", help="timestep spacing: leading, trailing or linspace")
    p.add_argument("--karras", action="store_true", help="Karras et al. sigma spacing")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale (for v-prediction models)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast precision")
    p.add_argument("--outdir", default="outputs", help="where PNGs are written")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    return SamplingOptions(steps=args.steps, guidance_scale=args.scale, sampler=args.sampler, eta=args.eta,
                           spacing=args.spacing, karras=args.karras, guidance_rescale=args.guidance_rescale,
                           precision=args.precision)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(f"device {name!r} requested but CUDA is not available")
    return device


def load_model_from_args(args: argparse.Namespace):
    from ldm.model import load_model

    if args.ckpt and not args.config:
        raise InvalidOptionError("--ckpt needs --config (the model's YAML)")
    return load_model(args.config, args.ckpt, resolve_device(args.device))


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.from_file:
        path = Path(args.from_file)
        if not path.is_file():
            raise MissingFileError(f"prompt file not found: {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise EmptyPromptFileError(f"prompt file {path} has no prompts")
        return prompts
    if args.prompt is None:
        raise InvalidOptionError("give a prompt or --from-file")
    return [args.prompt]


def save_images(images: list[Image.Image], settings: list[dict[str, Any]], outdir: str | Path,
                grid: bool = True) -> list[Path]:
    """Numbered PNGs in outdir/samples (continuing earlier runs' numbers) and a grid in outdir."""
    samples = Path(outdir) / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    start = next_index(samples)
    paths = [save_png(img, samples / f"{start + i:05d}.png", s) for i, (img, s) in enumerate(zip(images, settings))]
    if grid and len(images) > 1:
        grid_dir = Path(outdir)
        paths.append(save_png(make_grid(images), grid_dir / f"grid-{next_index_grid(grid_dir):04d}.png"))
    return paths


def next_index_grid(folder: Path) -> int:
    return len(list(folder.glob("grid-*.png")))
