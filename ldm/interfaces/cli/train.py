"""ldm train: train a latent diffusion model or its autoencoder from a YAML config (see configs/train/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ldm.core.errors import InvalidOptionError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a diffusion model or an autoencoder (Lightning)",
        description="Train from a config; `section.key=value` overrides (YAML values) follow it.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. trainer.max_steps=200 data.batch_size=8 training.lr=1e-5",
    )
    p.add_argument("--config", help="training config YAML (configs/train/*.yaml); optional with --resume CKPT")
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CKPT",
        help="continue from the run's checkpoints/last.ckpt, or from CKPT (a .ckpt or a run directory)",
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="write model.safetensors + model.yaml (vae.* for autoencoders) from the checkpoint, no training",
    )
    p.add_argument("--out", help="export directory (default: the run directory)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a run directory that holds an earlier one (its checkpoints are removed); "
        "with --export-only: replace the exports already there (without it they are refused)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldm.training.run import run as run_training

    overrides = list(args.overrides)
    # `--resume a.b=c` means a bare --resume followed by an override, not a checkpoint named "a.b=c".
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        overrides.insert(0, args.resume)
        args.resume = "last"
    if args.overwrite and args.resume and not args.export_only:
        raise InvalidOptionError("--overwrite starts a new run; it cannot be combined with --resume")
    return run_training(
        args.config, overrides, args.resume, export_only=args.export_only, out_dir=args.out, overwrite=args.overwrite
    )
