"""ldm walk: frames between two prompts and/or seeds -> an animated GIF (or MP4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ldm.core import defaults
from ldm.interfaces.cli.common import (
    add_model_args,
    add_sampling_args,
    check_writable,
    chunk_size,
    load_model_from_args,
    log,
    prompt_options_of,
    sampling_options,
)
from ldm.interfaces.cli.sdxl_args import add_sdxl_args, sdxl_options
from ldm.io.images import check_size, save_png
from ldm.tasks.walk import WalkError, save_gif, save_mp4, walk_frames


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("walk", help="interpolate between two prompts and/or seeds into an animated GIF")
    p.add_argument("prompt_a", help="the prompt at the start")
    p.add_argument("prompt_b", nargs="?", default=None, help="the prompt at the end (default: the same as the start)")
    p.add_argument("--frames", type=int, default=defaults.WALK_FRAMES, help="number of frames, both ends included")
    p.add_argument("--seed-a", type=int, default=None, help="noise seed at the start (default: --seed)")
    p.add_argument("--seed-b", type=int, default=None, help="noise seed at the end (default: the start's)")
    p.add_argument("--height", "--H", type=int, default=None, help="image height in px (default: the model's size)")
    p.add_argument("--width", "--W", type=int, default=None, help="image width in px (default: the model's size)")
    p.add_argument("--out", default="walk.gif", help="output file: .gif, or .mp4 (needs imageio-ffmpeg)")
    p.add_argument("--duration", type=int, default=100, help="GIF: milliseconds per frame")
    p.add_argument("--boomerang", action="store_true", help="GIF: play back to the start, for a seamless loop")
    p.add_argument("--frames-dir", default=None, help="also save each frame as a PNG here (0000.png, ...)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file and frames in --frames-dir (without it they are refused)",
    )
    add_sampling_args(p, "walk")
    add_model_args(p)
    add_sdxl_args(p, refiner=False)  # the micro-conditionings; a walk has no refiner hand-off
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise WalkError(f"--out must end in .gif or .mp4, got {out.name!r}")
    options = sampling_options(args)
    options.validate()
    seed_a = args.seed if args.seed_a is None else args.seed_a
    frames_dir = Path(args.frames_dir) if args.frames_dir else None
    for folder in (out.parent, frames_dir):  # found before the walk is made, not after
        if folder is not None:
            check_writable(folder)
    frame_names = [f"{k:04d}.png" for k in range(max(args.frames, 0))]
    taken = [out] + ([frames_dir / name for name in frame_names] if frames_dir is not None else [])
    existing = next((path for path in taken if path.exists()), None)
    if existing is not None and not args.overwrite:
        raise WalkError(f"{existing} already exists (--overwrite replaces it)")
    model = load_model_from_args(args)
    sdxl = sdxl_options(args, model)  # an SDXL model's micro-conditionings, the same for every frame
    height = model.default_image_size if args.height is None else args.height
    width = model.default_image_size if args.width is None else args.width
    check_size(height, width, max(8, model.downscale))
    chunk_size(model, args, height, width, 1)  # frames are made one at a time

    def on_frame(k: int, frame: Image.Image) -> None:
        log.info("frame %d/%d", k + 1, args.frames)
        if frames_dir is not None:  # as each is made, so an interrupted walk keeps its frames
            try:  # exclusive: a frame another run wrote meanwhile is kept, not replaced
                save_png(frame, frames_dir / frame_names[k], exclusive=not args.overwrite)
            except FileExistsError:
                raise WalkError(f"{frames_dir / frame_names[k]} already exists (--overwrite replaces it)") from None

    frames = walk_frames(
        model,
        args.prompt_a,
        args.prompt_b,
        seed_a,
        args.seed_b,
        args.frames,
        args.negative_prompt,
        height,
        width,
        options,
        on_frame=on_frame,
        progress=not args.no_progress,
        prompt_options=prompt_options_of(args),
        precision=args.precision,
        micro=sdxl["micro"] if sdxl is not None else None,
    )
    if out.suffix.lower() == ".mp4":
        save_mp4(frames, out, fps=max(1, round(1000 / args.duration)), overwrite=args.overwrite)
    else:
        save_gif(frames, out, args.duration, boomerang=args.boomerang, overwrite=args.overwrite)
    log.info("wrote %d frames to %s", len(frames), out)
    return 0
