"""ldm convert: a pickled checkpoint (or a safetensors file) -> .safetensors, read safely, written atomically."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a .ckpt/.pt checkpoint to .safetensors",
        description="Every tensor is kept as it is (name, dtype, values) unless dropped below. "
        "Pickles are read with weights_only: a file that would run code is refused.",
    )
    p.add_argument("input", help="a .ckpt, .pt, .pth, .bin or .safetensors file, or a diffusers folder")
    p.add_argument("output", help="the .safetensors file to write (or, with --to diffusers, the folder)")
    p.add_argument(
        "--to",
        choices=["diffusers"],
        help="diffusers: write any model ldm loads as a diffusers folder (StableDiffusionPipeline, or "
        "StableDiffusionInpaintPipeline / StableDiffusionUpscalePipeline for SD 2 inpainting and "
        "x4-upscaler models; --config and --prediction as for loading). A diffusers folder as the "
        "input is written as one original-layout .safetensors file with its config",
    )
    p.add_argument("--no-ema", action="store_true", help="leave out the EMA copies (model_ema.*)")
    p.add_argument(
        "--no-schedule",
        action="store_true",
        help="leave out the noise-schedule buffers (betas, alphas_cumprod, ...: derived from the config)",
    )
    p.add_argument(
        "--prediction",
        choices=["eps", "v"],
        help="record the prediction type in the file's metadata (SD 2.x 768-v files: v)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument(
        "--merge-lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="bake a LoRA (ours or kohya/A1111) into the model at WEIGHT (default 1); repeat for several. "
        "The output is the whole model in the original key layout, with its config in the metadata",
    )
    p.add_argument(
        "--config", help="with --merge-lora or --to diffusers: the input model's config YAML (default: detected)"
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="with --merge-lora, --to diffusers or a folder input: write the floating tensors as float16",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldm.formats.convert import ConvertError, convert_checkpoint

    if args.merge_lora:
        import torch

        from ldm.adapters.lora import parse_lora_spec
        from ldm.formats.merge_lora import merge_loras_into_file

        if args.no_ema or args.no_schedule:
            raise ConvertError(
                "--merge-lora writes the merged model alone (no EMA copies, no schedule buffers): "
                "leave out --no-ema/--no-schedule"
            )
        loras = [parse_lora_spec(spec) for spec in args.merge_lora]  # a missing file fails before loading
        merge_loras_into_file(
            args.input,
            args.output,
            loras,
            args.config,
            args.prediction,
            args.overwrite,
            torch.float16 if args.fp16 else None,
        )
        return 0
    if args.to == "diffusers" or Path(args.input).is_dir():
        return _model_to_other_layout(args)
    if args.config or args.fp16:
        raise ConvertError("--config and --fp16 go with --merge-lora, --to diffusers or a folder input")
    convert_checkpoint(
        args.input,
        args.output,
        ema=not args.no_ema,
        schedule=not args.no_schedule,
        prediction=args.prediction,
        overwrite=args.overwrite,
    )
    return 0


def _model_to_other_layout(args: argparse.Namespace) -> int:
    """A whole model between layouts: any loadable model -> a diffusers folder, or a folder -> one file."""
    import logging

    import torch

    from ldm.formats.convert import ConvertError
    from ldm.formats.detect import resolve_config
    from ldm.formats.diffusers_export import write_single_file
    from ldm.formats.load import load_model
    from ldm.formats.sdxl_diffusers import any_folder_config, write_any_folder

    if args.no_ema or args.no_schedule:
        raise ConvertError("--to diffusers and folder inputs write the model alone: leave out --no-ema/--no-schedule")
    if not Path(args.input).exists():
        raise ConvertError(f"input not found: {args.input}")
    from_folder = Path(args.input).is_dir()
    if from_folder and args.config is None:
        config = any_folder_config(args.input, args.prediction)
    else:
        config = resolve_config(args.config, args.input, args.prediction)
    model = load_model(config, args.input, device="cpu")
    dtype = torch.float16 if args.fp16 else None
    if args.to == "diffusers":
        out = write_any_folder(model, config, args.output, args.overwrite, dtype)
    else:
        out = write_single_file(model, config, args.output, args.overwrite, dtype)
    logging.getLogger(__name__).info("wrote %s", out)
    return 0
