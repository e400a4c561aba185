"""ldm eval: generate at several guidance scales and score the images (FID/KID/precision/recall, prompt accuracy, CLIP score)."""
from __future__ import annotations

import argparse

import torch

from ldm.errors import InvalidOptionError, MissingFileError
from ldm.commands.common import add_model_args, log, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a text-to-image model against real captioned images")
    p.add_argument("--data", default="data/emoji", help="dataset root with train/, heldout/ and heldout_combinations.txt")
    p.add_argument("--clip", default="checkpoints/emoji/clip.safetensors",
                   help="weights of the judge CLIP (open_clip state dict); 'random' = untrained (for smoke tests only)")
    p.add_argument("--clip-config", default=None, help="open_clip JSON config of the judge CLIP (default: configs/emoji/emoji-clip.json)")
    p.add_argument("--inception-weights", default=None,
                   help="local torchvision inception_v3 state dict for Inception FID/KID (never downloaded; skipped when absent)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 7.0], help="guidance scales (default: 1 3 7)")
    p.add_argument("--n-train-prompts", type=int, default=200, help="random train captions added to the held-out ones")
    p.add_argument("--max-heldout", type=int, default=None, help="use only the first N held-out captions")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--seed", type=int, default=0, help="prompt i is generated with seed+i at every scale")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=None, help="image size in px (default: the model's)")
    p.add_argument("--k", type=int, default=3, help="neighbourhood size for precision/recall")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=100,
                   help="rows per KID subset, capped at the group size (default 100: below the group sizes, so the std is informative)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--table", default=None, help="also write the markdown table here")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldm.commands.common import load_model_from_args
    from ldm.evaluate import EvalSettings, InceptionFeatures, evaluate_model, format_table, save_results
    from ldm.training.clip import DEFAULT_CONFIG, create_clip, load_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = EvalSettings(scales=tuple(args.scales), n_train_prompts=args.n_train_prompts, max_heldout=args.max_heldout,
                            seed=args.seed, steps=args.steps, sampler=args.sampler, batch_size=args.batch_size, k=args.k,
                            kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size)
    if args.batch_size < 1 or not args.scales:
        raise InvalidOptionError("--batch-size must be at least 1 and --scales needs at least one value")
    clip_config = args.clip_config or DEFAULT_CONFIG
    if args.clip == "random":
        log.warning("judge CLIP is randomly initialised: the numbers are meaningless except as a smoke test")
        torch.manual_seed(0)
        clip = create_clip(clip_config).eval()
    else:
        if not Path(args.clip).is_file():
            raise MissingFileError(f"judge CLIP weights not found: {args.clip} (train with python -m ldm.training.clip)")
        clip = load_clip(args.clip, clip_config)
    device = resolve_device(args.device)
    clip = clip.to(device)
    inception = None
    if args.inception_weights:
        inception = InceptionFeatures(args.inception_weights, device=device)
    else:
        log.info("no --inception-weights given: Inception-v3 FID/KID are not computed (weights are never downloaded)")
    model = load_model_from_args(args)
    results = evaluate_model(model, clip, args.data, settings, inception=inception, size=args.size)
    table = format_table(results)
    print(table)
    if args.out:
        save_results(results, args.out)
        log.info("wrote %s", args.out)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table + "\n")
    return 0
