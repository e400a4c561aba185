"""Options and steps several subcommands share: model loading, sampling options, saving."""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ldm.core import defaults
from ldm.core.devices import resolve_device, set_sampling_threads  # resolve_device: re-exported, the commands' --device
from ldm.core.errors import InvalidOptionError, LdmError, MissingFileError
from ldm.core.limits import MAX_PROMPT_CHARS, MAX_PROMPT_FILE_BYTES, MAX_PROMPTS_PER_FILE, check_prompt_length
from ldm.io.images import check_writable, make_grid, next_index, save_numbered_png
from ldm.models.prompt_options import PROMPT_SWITCHES, PROMPT_SYNTAXES, PromptOptions, prompt_options
from ldm.sampling.options import SamplingOptions, sampler_options_help, samplers_with, task_options
from ldm.sampling.precision import DEFAULT_PRECISION, PRECISIONS
from ldm.sampling.samplers import SAMPLERS

log = logging.getLogger("ldm")


class EmptyPromptFileError(LdmError, ValueError):
    pass


class PromptFileError(LdmError, ValueError):
    """A prompt file that is not UTF-8 text, or too large."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help says each option's default, unless its help already does or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default is not None and action.default is not False  # noqa: E501
                and action.default not in ("", []) and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class Given(argparse.Action):
    """Stores an option's value and records that the user gave it (in args.given): a model's own sampling
    defaults (a student's steps and spacing, ldm.formats.variants) fill only the options left out."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        mark_given(namespace, self.dest)


def mark_given(args: argparse.Namespace, *dests: str) -> None:
    args.given = set(getattr(args, "given", set())) | set(dests)


def apply_model_sampling(args: argparse.Namespace, own: dict[str, Any]) -> dict[str, Any]:
    """Set the model's own sampling defaults (a config's `sampling:`) on the options the user left out; returns those set."""  # noqa: E501
    from ldm.formats.variants import SAMPLING_KEYS

    given = getattr(args, "given", set())
    applied = {key: value for key, value in own.items() if SAMPLING_KEYS[key] not in given}
    for key, value in applied.items():
        setattr(args, SAMPLING_KEYS[key], value)
    return applied


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="model config YAML (ours or an original SD one); default: detected from --ckpt")
    p.add_argument("--ckpt", help="weights (.safetensors, or .ckpt read with weights_only) or a diffusers folder; "
                                  "default: the emoji model")
    p.add_argument("--prediction", choices=["eps", "v"], help="override the model's prediction type (SD 2.x 768-v "
                   "files without metadata need v; see ldm/formats/detect.py)")
    p.add_argument("--device", default=defaults.DEVICE, help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")  # noqa: E501
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads; default: the cores other work leaves idle (one-minute load average), unless "
                        "OMP_NUM_THREADS is set")
    p.add_argument("--compile", action="store_true",
                   help="compile the U-Net (torch.compile, inductor): 3-6 min once; pays with --precision bf16 "
                        "(0.65-0.69x the eager step: after 2 images at 512 px, 12 at 256 px), little in fp32")
    p.add_argument("--backend", choices=list(defaults.BACKENDS), default=defaults.BACKEND, help="what runs the "
                   'networks: torch, or openvino (CPU, pip install ".[openvino]"; docs/cpu-speed.md)')
    p.add_argument("--embedding", action="append", default=[], metavar="PATH",
                   help="a textual-inversion embedding (A1111 .pt/.safetensors or diffusers), or a folder of them; "
                        "its file name is the word that calls it in prompts; repeat for several")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="apply a LoRA (ours or kohya/A1111 layout) at WEIGHT (default 1); repeat for several")
    p.add_argument("--clip-skip", type=int, default=None, metavar="N",
                   help="the text encoder layer the U-Net reads, counted from the end as in A1111: 1 = the last "
                        "layer, 2 = the penultimate, ... (always through the final layer norm); default: the "
                        "model's own, 1 for SD 1.x, 2 for SD 2.x (which reads the penultimate layer)")
    p.add_argument("--tiled-vae", nargs="?", const="64:16", default=None, metavar="TILE:OVERLAP",
                   help="run the autoencoder in overlapping tiles of TILE latent samples (64: 512 px at f=8) for "
                        "images larger than one tile, to fit large images in memory (default when given: 64:16)")
    p.add_argument("--vae", metavar="FILE",
                   help="replace the autoencoder's weights with a separate VAE file's (original layout: encoder.*, "
                        "decoder.*, quant_conv.*, post_quant_conv.*, e.g. vae-ft-mse-840000-ema-pruned.safetensors)")


def add_sampling_args(p: argparse.ArgumentParser, task: str = "txt2img") -> None:
    """The sampling options; their defaults are the task's (ldm.core.defaults), as in the Python API and the app."""
    d = task_options(task)
    p.add_argument("--negative-prompt", default="",
                   help="what to steer away from (replaces the empty prompt in guidance); a prompt or negative "
                        f"prompt is at most {MAX_PROMPT_CHARS:,} characters")
    p.add_argument("--steps", type=int, default=d.steps, action=Given, help="sampling steps")
    p.add_argument("--scale", type=float, default=d.guidance_scale, action=Given, help="classifier-free guidance scale (1 = no guidance)")  # noqa: E501
    p.add_argument("--sampler", default=d.sampler, action=Given, help=f"one of {', '.join(SAMPLERS)}")
    p.add_argument("--sampler-option", dest="sampler_option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword option of the sampler (numbers and true/false are parsed), e.g. for pc: "
                        "--sampler-option snr=0.2 --sampler-option corrector_steps=2; an option the sampler "
                        "lacks, or a value outside its range, is refused; repeat for several. "
                        f"{sampler_options_help()}")
    p.add_argument("--eta", type=float, default=None, action=Given,
                   help=f"noise of {', '.join(samplers_with('eta'))} (default: the sampler's own, ddim 0, others 1)")
    p.add_argument("--ddim-variant", choices=["sd", "k"], default=None,
                   help="ddim only: sd starts and ends as the original Stable Diffusion DDIM (and diffusers) do, k as "
                        "k-diffusion does (default: the model's own, sd for original SD models, k for this project's)")
    p.add_argument("--spacing", default=d.spacing, action=Given,
                   help="timestep spacing: leading, trailing, linspace or exponential (evenly in log sigma)")
    p.add_argument("--karras", action="store_true", help="Karras et al. sigma spacing")
    p.add_argument("--guidance-rescale", type=float, default=d.guidance_rescale, help="guidance rescale (for v-prediction models)")  # noqa: E501
    p.add_argument("--seed", type=int, default=defaults.SEED, help="noise seed; image i of a run uses seed + i")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=list(PRECISIONS), help="autocast precision")
    p.add_argument("--prompt-syntax", choices=list(PROMPT_SYNTAXES), default=None,
                   help="how prompts are read: plain as the reference SD code (cut at 77 tokens, brackets are text), "
                        "a1111 as AUTOMATIC1111 (long prompts, BREAK, emphasis and prompt editing, all below) "
                        f"(default: {defaults.PROMPT_SYNTAX}; --from-png of an A1111 image: a1111)")
    p.add_argument("--long-prompts", action="store_true",
                   help="A1111-style: encode prompts over 75 tokens in chunks of 75 instead of cutting them at 77")
    p.add_argument("--emphasis", action="store_true", help="A1111-style (word:1.2), (word) and [word] weights")
    if task != "upscale":  # the upscaler's tiles would each wrap on their own edges
        p.add_argument("--tiling", nargs="?", const="xy", default=None, choices=["xy", "x", "y"],
                       help="seamless tiling: the image's opposite edges join, so copies laid side by side show no "
                            "seam (the U-Net's and the autoencoder's convolutions pad circularly for this run); "
                            "alone: both axes, x: left and right edges only, y: top and bottom only")
    p.add_argument("--prompt-editing", action="store_true",
                   help="A1111-style [from:to:when] and [a|b] in the prompt and the negative prompt: the text changes "
                        "during sampling (when: a step, or with a decimal point a fraction of the steps)")
    p.add_argument("--outdir", default="outputs",
                   help="where PNGs are written, as the next free numbers (an earlier image is never replaced)")
    p.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help="refuse work estimated to need more memory than this (default: 80%% of the device's; inf: no limit)")  # noqa: E501
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# What torch.Generator.manual_seed takes, with room for seed + i of each image.
SEED_RANGE = (-(2**63), 2**63 - 1)


def check_seeds(args: argparse.Namespace) -> None:
    for name in ("seed", "seed_a", "seed_b"):
        value = getattr(args, name, None)
        if value is not None and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise InvalidOptionError(f"--{name.replace('_', '-')} must be between -2**63 and 2**63-1, got {value}")


def option_value(text: str) -> bool | int | float | str:
    """A --sampler-option value as the sampler wants it: true/false -> bool, 2 -> int, 0.2 / 1e-3 -> float, else text."""  # noqa: E501
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_sampler_options(specs: list[str]) -> dict[str, Any]:
    """["snr=0.2", "corrector_steps=2"] -> {"snr": 0.2, "corrector_steps": 2}; whether the sampler has them is
    checked with the other options (ldm.sampling.options.sampler_kwargs)."""
    options: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise InvalidOptionError(f"--sampler-option {spec!r}: give KEY=VALUE, e.g. snr=0.2")
        if key in options:
            raise InvalidOptionError(f"--sampler-option {key} is given twice; give it once")
        options[key] = option_value(value.strip())
        if isinstance(options[key], float) and not math.isfinite(options[key]):  # NaN gives black images
            raise InvalidOptionError(f"--sampler-option {spec!r}: the value must be a finite number")
    return options


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The sampling options of a generating command (each calls this first, so its seeds and prompts' lengths are
    checked here, before any work)."""
    check_seeds(args)
    for name in ("prompt", "prompt_a", "prompt_b", "negative_prompt"):
        if isinstance(getattr(args, name, None), str):
            check_prompt_length(getattr(args, name), name.replace("_", " "))
    return SamplingOptions(steps=args.steps, guidance_scale=args.scale, sampler=args.sampler, eta=args.eta,
                           spacing=args.spacing, karras=args.karras, guidance_rescale=args.guidance_rescale,
                           ddim_variant=args.ddim_variant, tiling=getattr(args, "tiling", None),
                           extra=parse_sampler_options(getattr(args, "sampler_option", None) or []))


def prompt_options_of(args: argparse.Namespace) -> PromptOptions:
    """How the command reads its prompts: --prompt-syntax's switches, each of --long-prompts, --emphasis and
    --prompt-editing given turning its own on."""
    switches = {name: True for name in PROMPT_SWITCHES if getattr(args, name, False)}
    return prompt_options(syntax=getattr(args, "prompt_syntax", None), **switches)


def load_model_from_args(args: argparse.Namespace, task: str = "txt2img", variant: str | None = "full"):
    """The model the options name, or without --ckpt the shipped one for `task` (ldm.core.defaults): for text-to-image
    the `variant` (ldm.formats.variants; "full" unless the command offers --model, None: the default one)."""
    from ldm.formats.load import load_model

    if args.config and not args.ckpt:
        # A config alone builds a model with random weights: its images are noise, which nobody wants by accident.
        raise InvalidOptionError("--config needs --ckpt (the model's weights); without them the model is random")
    from ldm.adapters.lora import apply_lora, parse_lora_spec

    if (backend := getattr(args, "backend", defaults.BACKEND)) != defaults.BACKEND:  # refused before loading
        from ldm.backends.openvino_networks import check_backend, use_backend
        check_backend(backend, compiled=getattr(args, "compile", False))

    loras = [parse_lora_spec(spec) for spec in getattr(args, "lora", [])]  # a missing file fails before loading
    clip_skip, vae = getattr(args, "clip_skip", None), getattr(args, "vae", None)
    if clip_skip is not None and clip_skip < 1:
        raise InvalidOptionError(f"--clip-skip must be at least 1 (1 is the last layer), got {clip_skip}")
    if vae is not None and not Path(vae).is_file():
        raise MissingFileError(f"VAE file not found: {vae}")
    if getattr(args, "embedding", None):
        from ldm.adapters.embeddings import embedding_files

        for path in args.embedding:  # a missing file fails before loading
            embedding_files(path)
    device = resolve_device(args.device)
    if device.type == "cpu":
        set_sampling_threads(getattr(args, "threads", None))
    shipped = args.config is None and args.ckpt is None
    model = load_model(args.config, args.ckpt, device, args.prediction, task=task, variant=variant if shipped else None)
    if vae is not None:
        model.load_vae_weights(vae)
    if getattr(args, "tiled_vae", None):
        model.vae_tiling = parse_tiling(args.tiled_vae)
    if clip_skip is not None:
        model.text_encoder.set_clip_skip(clip_skip)
        model.identity = {**model.identity, "clip_skip": clip_skip}  # it changes the image: the metadata says so
    for path, weight in loras:
        apply_lora(model, path, weight)
    if getattr(args, "embedding", None):
        from ldm.adapters.embeddings import load_embeddings

        load_embeddings(model, args.embedding)
    if backend != defaults.BACKEND:
        return use_backend(model, backend)  # float32 weights exported; --precision bf16 runs them in bf16
    if getattr(args, "precision", None) == "bf16" and device.type == "cpu":
        use_cpu_bf16(model)
    if getattr(args, "compile", False):
        model.compile_unet()
    return model


def use_cpu_bf16(model) -> None:
    """--precision bf16 on a CPU: the U-Net's weights in bf16 and channels-last (LoRAs are merged first, in fp32),
    under the bf16 autocast every --precision bf16 run has. SD 2-base: 0.47x diffusers' fp32 time, autocast alone
    0.60x. The text encoder and the autoencoder stay fp32: in bf16 they moved the picture three times as much for no
    speed (benchmarks/cpu_bf16.py). Without AVX-512 BF16 or AMX, PyTorch emulates bf16 many times slower than
    fp32: said, not refused."""
    import torch

    from ldm.core.devices import warn_if_bf16_is_emulated

    warn_if_bf16_is_emulated("--precision bf16", "--precision fp32")
    model.unet.to(torch.bfloat16, memory_format=torch.channels_last)


def parse_tiling(spec: str) -> dict[str, int]:
    """"TILE:OVERLAP" (latent samples) -> {"tile", "overlap"}, checked."""
    tile, _, overlap = spec.partition(":")
    try:
        tiling = {"tile": int(tile), "overlap": int(overlap or 16)}
    except ValueError:
        raise InvalidOptionError(f"--tiled-vae {spec!r}: give TILE:OVERLAP in latent samples, e.g. 64:16") from None
    if tiling["tile"] < 8 or not 0 <= tiling["overlap"] < tiling["tile"]:
        raise InvalidOptionError(f"--tiled-vae {spec!r}: the tile must be >= 8 and the overlap in [0, tile)")
    return tiling


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts to run: the one given, or each line of --from-file that is not blank, each checked against
    ldm.core.limits.MAX_PROMPT_CHARS (the whole file is checked before any work)."""
    if args.from_file:
        return read_prompt_file(args.from_file)
    if args.prompt is None:
        raise InvalidOptionError("give a prompt or --from-file")
    check_prompt_length(args.prompt)
    return [args.prompt]


def read_prompt_file(name: str | Path) -> list[str]:
    """The lines of a UTF-8 prompt file that are not blank: at most MAX_PROMPT_FILE_BYTES read, MAX_PROMPTS_PER_FILE
    prompts of at most MAX_PROMPT_CHARS characters each; anything else is refused in one line naming the file."""
    path = Path(name)
    if not path.is_file():
        raise MissingFileError(f"prompt file not found: {path}")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PROMPT_FILE_BYTES + 1)
    except OSError as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise PromptFileError(f"prompt file {path} is larger than {MAX_PROMPT_FILE_BYTES // 2**20} MiB; split it")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptFileError(
            f"prompt file {path} is not UTF-8 text: byte {exc.start} (0x{data[exc.start]:02x}) "
            f"cannot be decoded; save it as UTF-8"
        ) from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            check_prompt_length(line.strip(), f"line {number} of {path}")
            prompts.append(line.strip())
            if len(prompts) > MAX_PROMPTS_PER_FILE:
                raise PromptFileError(f"prompt file {path} holds more than {MAX_PROMPTS_PER_FILE:,} prompts; split it")
    if not prompts:
        raise EmptyPromptFileError(f"prompt file {path} has no prompts")
    return prompts


def check_counts(*counts: tuple[str, int]) -> None:
    for name, value in counts:
        if value < 1:
            raise InvalidOptionError(f"{name} must be at least 1, got {value}")


def chunk_size(model: Any, args: argparse.Namespace, height: int, width: int, count: int) -> int:
    """Images per chunk for this size under the memory limit (refused with one line if not even one fits)."""
    from ldm.core.limits import memory_limit, plan_chunk

    return plan_chunk(model, height, width, count, memory_limit(model.device, args.max_memory))


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of consecutive chunks covering `count` images."""
    for start in range(0, count, size):
        yield start, min(size, count - start)


class ImageWriter:
    """Writes numbered PNGs into outdir/samples as they are made, and the grid at the end.

    The folder is checked for writing before any work (an unwritable --outdir used to be found only
    after generating). Each image is written atomically the moment it exists, so an interrupted run
    keeps every finished image. Numbers continue after the highest one present, and each is claimed by an
    exclusive create (save_numbered_png): runs writing into one folder at once never replace each other's images.
    """

    GRID_LIMIT = 64  # a grid of more images is too big to look at; they are in samples/ anyway

    def __init__(self, outdir: str | Path, grid: bool = True):
        self.outdir = Path(outdir)
        self.samples = self.outdir / "samples"
        check_writable(self.samples)
        self.next = next_index(self.samples)
        self.grid = grid
        self.paths: list[Path] = []
        self._grid_images: list[Image.Image] = []

    def write(self, image: Image.Image, settings: dict[str, Any]) -> Path:
        path, number = save_numbered_png(image, self.samples, "{:05d}.png", self.next, settings)
        self.next = number + 1
        self.paths.append(path)
        if self.grid and len(self._grid_images) <= self.GRID_LIMIT:
            self._grid_images.append(image)
        return path

    def finish(self) -> list[Path]:
        """Write the grid (for 2 to GRID_LIMIT images); returns every path written."""
        if self.grid and 1 < len(self._grid_images) <= self.GRID_LIMIT:
            first = next_index(self.outdir, r"grid-(\d+)", "grid-*.png")
            path, _ = save_numbered_png(
                make_grid(self._grid_images),
                self.outdir,
                "grid-{:04d}.png",
                first,
                pattern=r"grid-(\d+)",
                glob="grid-*.png",
            )
            self.paths.append(path)
        elif self.grid and len(self._grid_images) > self.GRID_LIMIT:
            log.info("no grid for more than %d images", self.GRID_LIMIT)
        return self.paths


def save_images(images: list[Image.Image], settings: list[dict[str, Any]], outdir: str | Path,
                grid: bool = True) -> list[Path]:
    """Numbered PNGs in outdir/samples (continuing earlier runs' numbers) and a grid in outdir."""
    writer = ImageWriter(outdir, grid)
    for image, s in zip(images, settings):
        writer.write(image, s)
    return writer.finish()
