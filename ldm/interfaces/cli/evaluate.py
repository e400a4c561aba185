"""ldm eval: generate at several guidance scales and score the images (FID/KID/precision/recall, prompt accuracy, CLIP score; Inception FID/KID/IS with local weights)."""  # noqa: E501

from __future__ import annotations

import argparse

import torch

from ldm.core.defaults import shipped_path
from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.interfaces.cli.common import add_model_args, log, resolve_device, set_sampling_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a text-to-image model against real captioned images")
    p.add_argument(
        "--data", default="data/emoji", help="dataset root with train/, heldout/ and heldout_combinations.txt"
    )
    p.add_argument(
        "--clip",
        default=str(shipped_path("checkpoints/emoji/judge.safetensors")),
        help="weights of the judge CLIP (open_clip state dict, trained apart from the model's text encoder); "
        "'random' = untrained (for smoke tests only)",
    )
    p.add_argument(
        "--clip-config",
        default=None,
        help="open_clip JSON config of the judge CLIP (default: the .json beside --clip, else configs/emoji/emoji-clip.json)",  # noqa: E501
    )
    p.add_argument(
        "--prompt-list",
        default=None,
        help="also score a fixed prompt list x --prompt-seeds seeds (e.g. configs/emoji/first-prompts.txt)",
    )
    p.add_argument("--prompt-seeds", type=int, default=6)
    p.add_argument("--prompt-scale", type=float, default=5.0, help="guidance for the prompt list and the style rows")
    p.add_argument(
        "--styles",
        default=None,
        help="comma-separated style words: the prompt list once more with each ('<prompt>, <style> style')",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="local torchvision inception_v3 state dict for Inception FID/KID and the Inception Score (never downloaded; skipped when absent)",  # noqa: E501
    )
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
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=100,
        help="rows per KID subset, capped at the group size (default 100: below the group sizes, so the std is informative)",  # noqa: E501
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--table", default=None, help="also write the markdown table here")
    p.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="NAME=RESULTS.json",
        help="generate nothing: put earlier --out results of several models side by side in one table",
    )
    p.add_argument(
        "--nll",
        action="store_true",
        help="generate nothing: report the variational bound on the held-out images in bits/dim "
        "(of the VAE latents for a latent model; of the points themselves, in data space, for --toy-model)",
    )
    p.add_argument("--nll-timesteps", type=int, default=50, help="timesteps the bound's sum over t is estimated from")
    p.add_argument(
        "--nll-variance",
        default="fixed_large",
        choices=("fixed_large", "fixed_small", "learned"),
        help="the reverse process's variance: fixed (beta_t or the posterior's beta~_t), or the U-Net's "
        "own for a model trained with learned_variance",
    )
    p.add_argument("--nll-images", type=int, default=64, help="use the first N held-out images")
    p.add_argument(
        "--toy-model",
        default=None,
        help="with --nll: a 2-D toy model file (ldm.toys.files.save_toy) instead of an image model; "
        "the bound is then of the points themselves, in data space",
    )
    p.add_argument(
        "--toy-data",
        default=None,
        help="with --toy-model: the held-out points, a toy dataset name (spiral, moons, circles, gaussians) "
        "or a .npy/.csv file of [N, 2] points",
    )
    p.add_argument(
        "--toy-data-seed",
        type=int,
        default=1,
        help="seed of a named toy dataset's held-out draw (default 1; the toys train on seed 0)",
    )
    p.add_argument("--nll-points", type=int, default=1000, help="points drawn from a named toy dataset")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldm.evaluation.metrics import InceptionFeatures
    from ldm.evaluation.report import EvalSettings, evaluate_model, format_table, load_real, save_results
    from ldm.interfaces.cli.common import load_model_from_args
    from ldm.models.clip import DEFAULT_CONFIG, create_clip, load_clip

    if args.compare:
        return compare(args.compare, args.table)
    set_sampling_threads(args.threads)  # before the judge and the model: the evaluation runs on the CPU too
    if args.nll:
        return nll(args)
    if args.toy_model or args.toy_data:
        raise InvalidOptionError("--toy-model and --toy-data go with --nll")
    settings = EvalSettings(
        scales=tuple(args.scales),
        n_train_prompts=args.n_train_prompts,
        max_heldout=args.max_heldout,
        seed=args.seed,
        steps=args.steps,
        sampler=args.sampler,
        batch_size=args.batch_size,
        k=args.k,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
    )
    if args.batch_size < 1 or not args.scales:
        raise InvalidOptionError("--batch-size must be at least 1 and --scales needs at least one value")
    beside = Path(args.clip).with_suffix(".json")
    clip_config = args.clip_config or (beside if args.clip != "random" and beside.is_file() else DEFAULT_CONFIG)
    if args.clip == "random":
        log.warning("judge CLIP is randomly initialised: the numbers are meaningless except as a smoke test")
        torch.manual_seed(0)
        clip = create_clip(clip_config).eval()
    else:
        if not Path(args.clip).is_file():
            raise MissingFileError(
                f"judge CLIP weights not found: {args.clip} (train one with ldm train --config configs/emoji/judge.yaml)"  # noqa: E501
            )
        clip = load_clip(args.clip, clip_config)
    device = resolve_device(args.device)
    clip = clip.to(device)
    inception = None
    if args.inception_weights:
        inception = InceptionFeatures(args.inception_weights, device=device)
    else:
        log.info("no --inception-weights given: Inception-v3 FID/KID are not computed (weights are never downloaded)")
    model = load_model_from_args(args)
    size = args.size or model.default_image_size
    real = load_real(args.data, size)
    results = evaluate_model(model, clip, args.data, settings, inception=inception, size=size, real=real)
    table = format_table(results)
    if args.prompt_list:
        from ldm.evaluation.prompts import (
            evaluate_prompt_list,
            evaluate_styles,
            format_prompt_table,
            format_style_table,
            read_prompt_list,
        )
        from ldm.evaluation.report import Judge

        judge = Judge(clip, real)
        listed = read_prompt_list(args.prompt_list)
        results["prompt_list"] = evaluate_prompt_list(
            model, judge, listed, settings, args.prompt_scale, args.prompt_seeds, size
        )
        table += "\n\n" + format_prompt_table(results["prompt_list"])
        if args.styles:
            styles = [s.strip() for s in args.styles.split(",") if s.strip()]
            results["styles"] = evaluate_styles(
                model, judge, [p for _, p in listed], styles, settings, args.prompt_scale, size
            )
            table += "\n\n" + format_style_table(results["styles"])
    print(table)
    if args.out:
        save_results(results, args.out)
        log.info("wrote %s", args.out)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table + "\n")
    return 0


def nll(args: argparse.Namespace) -> int:
    """`ldm eval --nll`: bits/dim of the held-out images' latents (ldm.evaluation.likelihood)."""
    import json
    from pathlib import Path

    from ldm.evaluation.likelihood import latent_nll
    from ldm.evaluation.report import load_real
    from ldm.interfaces.cli.common import load_model_from_args

    if args.nll_timesteps < 1 or args.nll_images < 1 or args.batch_size < 1:
        raise InvalidOptionError("--nll-timesteps, --nll-images and --batch-size must be at least 1")
    if args.toy_model or args.toy_data:
        return toy_nll_command(args)
    if not (Path(args.data) / "heldout").is_dir():
        raise MissingFileError(f"no held-out images: {Path(args.data) / 'heldout'} is not a folder")
    model = load_model_from_args(args)
    real = load_real(args.data, args.size or model.default_image_size)
    rows = [i for i, split in enumerate(real.splits) if split == "heldout"][: args.nll_images]
    result = latent_nll(
        model,
        real.images[rows],
        [real.captions[i] for i in rows],
        args.nll_timesteps,
        args.nll_variance,
        args.batch_size,
        args.seed,
    )
    print(result.line())
    print("(the bound of the VAE latents: the autoencoder's own -log p(image | latent) is not included)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.__dict__, indent=1) + "\n")
    return 0


def toy_nll_command(args: argparse.Namespace) -> int:
    """`ldm eval --nll --toy-model FILE --toy-data NAME|FILE`: bits/dim of held-out points, in data space."""
    import json
    from pathlib import Path

    from ldm.evaluation.likelihood import load_points, toy_nll
    from ldm.toys.files import load_toy

    if not args.toy_model or not args.toy_data:
        raise InvalidOptionError("--nll on a toy model needs both --toy-model FILE and --toy-data NAME|FILE")
    if args.nll_points < 1:
        raise InvalidOptionError("--nll-points must be at least 1")
    toy = load_toy(args.toy_model)
    points = load_points(args.toy_data, args.nll_points, args.toy_data_seed)
    result = toy_nll(toy, points, args.nll_timesteps, args.nll_variance, args.seed)
    print(result.line())
    print("(the bound of the points themselves, in data space: a continuous Gaussian decoder at t = 0, so a density)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.__dict__, indent=1) + "\n")
    return 0


def compare(specs: list[str], table_path: str | None) -> int:
    """`ldm eval --compare v1=a.json v2=b.json`: one table of several models' saved results."""
    import json
    from pathlib import Path

    from ldm.evaluation.report import format_comparison

    results = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InvalidOptionError(f"--compare takes NAME=RESULTS.json, got {spec!r}")
        if not Path(path).is_file():
            raise MissingFileError(f"--compare: results file not found: {path}")
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        missing = {"rows", "settings", "classes", "chance_top1", "chance_top5"} - set(
            data if isinstance(data, dict) else {}
        )
        if missing:
            raise InvalidOptionError(
                f"--compare: {path} is not the --out file of ldm eval (no {', '.join(sorted(missing))})"
            )
        results[name] = data
    table = format_comparison(results)
    print(table)
    if table_path:
        Path(table_path).parent.mkdir(parents=True, exist_ok=True)
        Path(table_path).write_text(table + "\n")
    return 0
