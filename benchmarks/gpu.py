"""Stable Diffusion 2-base on a CUDA GPU: guided DDIM it/s and peak memory, ldm against diffusers, same weights.

    python benchmarks/gpu.py [--steps 50] [--rounds 2] [--size 512] [--no-compile]
    python benchmarks/gpu.py --sdxl [...]    # SDXL 1.0 base's architecture, 1024 px, against StableDiffusionXLPipeline

The model has random weights (nothing is downloaded); diffusers gets the very same weights through ldm's own
exporter (ldm.formats.diffusers_export), as a StableDiffusionPipeline folder in a temp dir. Each row is one prompt at
--size px, --steps DDIM steps with guidance 7.5 (one batched U-Net call of 2 a step in both), run --rounds times
interleaved with the other implementation. it/s is the denoising loop's steady rate (steps 2..N, from per-step
callbacks with a CUDA sync); peak memory is torch.cuda.max_memory_allocated over the whole call (text encoder,
loop, VAE decode). Rows: fp16 with SDPA, eager and compiled (torch.compile of the U-Net: ldm's --compile, and
the same for diffusers' U-Net), bf16 eager, and fp16 with xformers where it is installed.

With --sdxl it first prints one U-Net step at --size (128x128 latent at 1024 px), batch 1 and batch 2 (one guided
step), bf16, with peak CUDA memory: `benchmarks/unet_speed.py --sdxl --full-size` on this device, the configuration
of the CPU row in docs/benchmarks.md (each implementation in its own process, same seeded weights, interleaved).

Without CUDA it says so and exits 0. `--device cpu --config FILE --size 64 --steps 3` runs the same code on a
small config, to check the script itself. Published bar for this class (stable-fast, SD 1.5, 512 px, batch 1):
about 55 it/s on an A100, 105 it/s on an H100.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.formats.load import load_model  # noqa: E402
from ldm.formats.sdxl_diffusers import is_sdxl_model, write_any_folder  # noqa: E402
from ldm.tasks.txt2img import txt2img  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stable-diffusion" / "v2-inference.yaml"
SDXL_CONFIG = CONFIG.with_name("sd_xl_base.yaml")
PROMPT = "a photograph of an astronaut riding a horse"


class StepClock:
    """Per-step times (after a device sync), so that the rate excludes the text encoder, the first step's
    warm-up and the VAE decode."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def tick(self, *_args, **_kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return _args[3] if len(_args) == 4 else None  # diffusers' callback_on_step_end returns its kwargs

    def rate(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def peak_memory_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def run_ours(model, args, device) -> tuple[float, float]:
    clock = StepClock(device)
    reset_peak(device)
    txt2img(
        model,
        PROMPT,
        height=args.size,
        width=args.size,
        steps=args.steps,
        guidance_scale=7.5,
        sampler="ddim",
        ddim_variant="sd",
        seed=0,
        progress=False,
        callback=clock.tick,
    )
    return clock.rate(), peak_memory_mib(device)


def run_diffusers(pipe, args, device) -> tuple[float, float]:
    clock = StepClock(device)
    reset_peak(device)
    pipe(
        PROMPT,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        guidance_scale=7.5,
        generator=torch.Generator(device).manual_seed(0),
        callback_on_step_end=clock.tick,
    )
    return clock.rate(), peak_memory_mib(device)


def sdxl_unet_step_tables(args) -> None:
    """One SDXL U-Net step, ldm against diffusers, at the width of args.config (320: SDXL base), batch 1 and 2."""
    unet = yaml.safe_load(Path(args.config).read_text())["model"]["params"]["unet_config"]["params"]
    for batch in (1, 2):
        command = [sys.executable, str(Path(__file__).with_name("unet_speed.py")), "--sdxl", "--full-size"]
        channels = -(-unet["model_channels"] // 64) * 64  # a multiple of SDXL's 64-wide heads (a tiny config's 32)
        command += ["--sdxl-channels", str(channels), "--size", str(args.size // 8)]
        command += ["--batch", str(batch), "--device", args.device, "--repeats", "10" if args.device == "cuda" else "2"]
        subprocess.run(command, check=True)
        print(flush=True)


def random_model(args, folder: Path):
    """The one random fp32 model (on the CPU), also written to `folder` as a diffusers pipeline."""
    model = load_model(args.config, None, device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # the zero-initialised output layers would make every picture the same
        for p in model.unet.parameters():
            if (p == 0).all():
                p.normal_(0, 0.01)
    write_any_folder(model, {"model": yaml.safe_load(Path(args.config).read_text())["model"]}, folder)
    return model


def build(base, args, device, dtype, folder: Path, compiled: bool, xformers: bool):
    """(ours, diffusers' pipeline) at dtype on device, both from `base` (diffusers' through `folder`)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    ours = copy.deepcopy(base).to(device).networks_to(dtype)
    if is_sdxl_model(base):  # the base's pipeline, no watermark (it changes the images, not the loop)
        pipe = StableDiffusionXLPipeline.from_pretrained(
            folder, torch_dtype=dtype, local_files_only=True, add_watermarker=False
        )
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, torch_dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    # SD's settings: what ldm's "sd" DDIM variant reproduces (tests/tasks/test_ddim_variant.py)
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if xformers:
        pipe.enable_xformers_memory_efficient_attention()
    if compiled:
        ours.compile_unet()
        pipe.unet = torch.compile(pipe.unet)
    return ours, pipe


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="image size in px (512; with --sdxl 1024)")
    p.add_argument("--config", default=None, help=f"model config ({CONFIG.name}; with --sdxl {SDXL_CONFIG.name})")
    p.add_argument("--sdxl", action="store_true", help="SDXL 1.0 base's architecture against StableDiffusionXLPipeline")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows (minutes of compiling)")
    args = p.parse_args()
    args.config = args.config or str(SDXL_CONFIG if args.sdxl else CONFIG)
    args.size = args.size or (1024 if args.sdxl else 512)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; nothing measured")
        return 0
    from ldm.models.attention import xformers_available

    half = torch.float16 if device.type == "cuda" else torch.bfloat16  # no fp16 on a CPU: the check runs bf16
    short = "fp16" if half is torch.float16 else "bf16"
    rows = [(f"{short}, SDPA, eager", half, False, False)]
    if not args.no_compile:
        rows.append((f"{short}, SDPA, compiled", half, True, False))
    rows.append(("bf16, SDPA, eager", torch.bfloat16, False, False))
    if device.type == "cuda" and xformers_available():
        rows.append(("fp16, xformers, eager", half, False, True))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.sdxl:
        sdxl_unet_step_tables(args)
    print(
        f"{Path(args.config).name}, {args.size} px, {args.steps} guided DDIM steps (guidance 7.5, batch 1), {name}, "
        f"torch {torch.__version__}\n"
    )
    print("| setting | ldm it/s | diffusers it/s | ldm / diffusers | ldm peak MiB | diffusers peak MiB |")
    print("|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd"
        base = random_model(args, folder)
        for label, dtype, compiled, xformers in rows:
            ours, pipe = build(base, args, device, dtype, folder, compiled, xformers)
            run_ours(ours, args, device), run_diffusers(pipe, args, device)  # warm-up (and compile)
            results: dict[str, list[tuple[float, float]]] = {"ldm": [], "diffusers": []}
            for _ in range(args.rounds):
                results["ldm"].append(run_ours(ours, args, device))
                results["diffusers"].append(run_diffusers(pipe, args, device))
            rate = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
            peak = {k: max(r[1] for r in v) for k, v in results.items()}
            print(
                f"| {label} | {rate['ldm']:.1f} | {rate['diffusers']:.1f} | {rate['ldm'] / rate['diffusers']:.2f} | "
                f"{peak['ldm']:.0f} | {peak['diffusers']:.0f} |",
                flush=True,
            )
            del ours, pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
