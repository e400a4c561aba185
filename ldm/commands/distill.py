"""ldm distill: guided progressive distillation of a text-to-image model into a few-step student."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a model into a few-step, guidance-conditioned student (Lightning)",
        description="Run the distillation stages of a config (distill.stages), each a training run "
        "taught by the one before; `section.key=value` overrides (YAML values) follow it.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. distill.stages=[guidance,8,4] distill.steps_per_stage=500",
    )
    p.add_argument("--config", required=True, help="distillation config YAML (e.g. configs/emoji/distill.yaml)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip the stages already exported and continue the current one from its last.ckpt",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldm.training.distill import run_distillation

    return run_distillation(args.config, list(args.overrides), resume=args.resume)
