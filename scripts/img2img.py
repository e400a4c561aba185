#!/usr/bin/env python
"""The reference repository's img2img script interface, run by `ldm img2img`.

    python scripts/img2img.py --init-img in.png --prompt "a painting" --strength 0.6 --config X.yaml --ckpt X.safetensors

Reference flag names (--init-img, --ddim_steps, --n_samples, ...) are translated; any other
`ldm img2img` option passes through unchanged.
"""  # noqa: E501

from __future__ import annotations

import sys

from ldm.interfaces.cli.main import main

RENAMED = {
    "--ddim_steps": "--steps",
    "--n_samples": "--n-samples",
    "--n_iter": "--n-iter",
    "--ddim_eta": "--eta",
    "--skip_grid": "--no-grid",
}


def translate(argv: list[str]) -> list[str]:
    """Reference-style argv -> `ldm img2img` argv (the image and prompt become positionals)."""
    image = prompt = None
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--init-img", "--init_img", "--prompt"):
            value = value if eq else next(it, None)
            if value is None:
                raise SystemExit(f"{name} needs a value")
            if name == "--prompt":
                prompt = value
            else:
                image = value
        else:
            rest.append(RENAMED.get(name, name) + (eq + value if eq else ""))
    if image is None:
        raise SystemExit("give the input image with --init-img")
    return ["img2img", image] + ([prompt] if prompt is not None else []) + rest


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
