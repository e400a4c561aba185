"""ldm clip: train the small emoji CLIP (text encoder and judge) on a dataset's train/ split and report it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ldm.models.clip import DEFAULT_CONFIG

    p = sub.add_parser("clip", help="train a tiny OpenCLIP on a captioned folder with train/ and heldout/ splits")
    p.add_argument("--data", default="data/emoji", help="dataset root with train/ and heldout/ (default: data/emoji)")
    p.add_argument(
        "--out", default="runs/clip", help="output folder for clip.safetensors, clip_metrics.json, CLIP_CARD.md"
    )
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="open_clip model config JSON")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precision", choices=("bf16", "fp32"), default="bf16", help="autocast for the forward pass (default bf16)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train again into an --out folder that already holds clip.safetensors, replacing it",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="re-measure <out>/clip.safetensors and rewrite the card, keeping the training figures of "
        "clip_metrics.json",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldm.io.images import check_new_outputs
    from ldm.training.clip import WEIGHTS_NAME, train_and_report

    if not args.eval_only:  # --eval-only re-measures the weights there and rewrites only the card
        check_new_outputs(Path(args.out) / WEIGHTS_NAME, overwrite=args.overwrite)
    report = train_and_report(
        args.data,
        args.out,
        args.steps,
        args.batch_size,
        args.lr,
        args.weight_decay,
        args.config,
        args.threads,
        args.seed,
        args.precision,
        args.eval_only,
    )
    h = report["heldout"]
    print(
        f"{report['steps']} steps in {report['train_seconds'] / 60:.1f} min, final loss {report['loss_final']:.3f}; "
        f"held-out text->image top-1 {h['t2i_top1']:.1%}, top-5 {h['t2i_top5']:.1%} ({h['n']} pairs) -> "
        f"{args.out}/{WEIGHTS_NAME}"
    )
    return 0
