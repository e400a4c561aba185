"""Inpainting only the masked area against the whole image, on the shipped inpainter (64 px native).

    python benchmarks/inpaint_area.py [--size 512] [--hole 40] [--steps 8] [--skip-full-size]

A procedural photo-like image (ldm.evaluation.edits.photo_like) with a square hole in its middle,
inpainted three ways with the same prompt and seed: only the masked area (the crop at the model's size, pasted
back), the whole image at the model's size (resized down, inpainted, resized back and pasted through the same
inward feather: A1111's "Whole picture" at the model's resolution), and the whole image at its own size (what
`--inpaint-area whole` runs: the model far beyond the size it was trained at). It prints the detail inside the
hole (variance of the Laplacian, grey levels), the largest change outside the hole and the time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--hole", type=int, default=40)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompt", default="red heart")
    p.add_argument("--skip-full-size", action="store_true", help="leave out the whole image at its own size (slow)")
    args = p.parse_args()

    from ldm.evaluation.edits import laplacian_variance, photo_like
    from ldm.formats.load import load_model
    from ldm.io.images import pil_to_tensor, tensor_to_pil
    from ldm.tasks.inpaint import inpaint
    from ldm.tasks.inpaint_area import paste_back

    model = load_model(task="inpaint")
    native, size = model.default_image_size, args.size
    image, mask = photo_like(size), np.zeros((size, size), np.float32)
    top = (size - args.hole) // 2
    mask[top : top + args.hole, top : top + args.hole] = 1
    common = {"seed": 0, "steps": args.steps, "progress": False}

    def whole_at_native() -> Image.Image:
        small_mask = np.asarray(Image.fromarray(mask).resize((native, native), Image.Resampling.BILINEAR))
        small = image.resize((native, native), Image.Resampling.LANCZOS)
        made = inpaint(model, small, small_mask, args.prompt, **common)[0]
        return tensor_to_pil(paste_back(pil_to_tensor(image), [made], mask, (0, 0, size, size), 8))[0]

    methods = {
        "only masked (--inpaint-area masked, padding 32)": lambda: inpaint(
            model, image, mask, args.prompt, inpaint_area="masked", **common
        )[0],
        f"whole image at the model's size ({native} px), resized back": whole_at_native,
    }
    if not args.skip_full_size:
        methods[f"whole image at its size ({size} px, --inpaint-area whole)"] = lambda: inpaint(
            model, image, mask, args.prompt, **common
        )[0]
    print(f"{size} px photo-like image, {args.hole} px hole, shipped inpainter, {args.steps} steps, '{args.prompt}'")
    print()
    print("| method | Laplacian variance in the hole | max change outside | s |")
    print("|---|---|---|---|")
    print(f"| the input itself | {laplacian_variance(image, mask):.1f} | - | - |")
    for name, run in methods.items():
        t0 = time.time()
        out = run()
        seconds = time.time() - t0
        outside = np.abs(np.asarray(out, np.int16) - np.asarray(image, np.int16))[mask < 0.5].max()
        print(f"| {name} | {laplacian_variance(out, mask):.1f} | {outside} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
