"""ldm convert: a pickled checkpoint (or a safetensors file) -> .safetensors, read safely, written atomically."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a .ckpt/.pt checkpoint to .safetensors",
                       description="Every tensor is kept as it is (name, dtype, values) unless dropped below. "
                                   "Pickles are read with weights_only: a file that would run code is refused.")
    p.add_argument("input", help="a .ckpt, .pt, .pth, .bin or .safetensors file")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--no-ema", action="store_true", help="leave out the EMA copies (model_ema.*)")
    p.add_argument("--no-schedule", action="store_true",
                   help="leave out the noise-schedule buffers (betas, alphas_cumprod, ...: derived from the config)")
    p.add_argument("--prediction", choices=["eps", "v"],
                   help="record the prediction type in the file's metadata (SD 2.x 768-v files: v)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldm.convert import convert_checkpoint

    convert_checkpoint(args.input, args.output, ema=not args.no_ema, schedule=not args.no_schedule,
                       prediction=args.prediction, overwrite=args.overwrite)
    return 0
