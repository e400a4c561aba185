"""Ship a model derived from the default one (the inpainter, the upscaler) into checkpoints/emoji, fp16.

    ldm train --config configs/emoji/inpaint.yaml --resume --export-only --out runs/inpaint-snap
    python scripts/ship_derived_model.py inpaint runs/inpaint-snap
    python scripts/ship_derived_model.py student runs/emoji-distill/halve-8     # the 4-step student
    python scripts/ship_derived_model.py upscaler-vae runs/upscaler-vae         # the upscaler's autoencoder, first

A command-line caller of ldm.formats.derived_writer (ship_derived, ship_part), which writes the files that
ldm.formats.derived reads and says what they keep.
"""

from __future__ import annotations

import sys

from ldm.core.defaults import SHIPPED_MODELS
from ldm.formats.derived_writer import ship_derived, ship_part


def ship(task: str, export_dir: str) -> None:
    print(ship_derived(task, export_dir))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in {*SHIPPED_MODELS, "upscaler-vae"} or sys.argv[1] == "txt2img":
        raise SystemExit(
            "usage: python scripts/ship_derived_model.py {inpaint,upscale,student,upscaler-vae} EXPORT_DIR"
        )
    print(ship_part(sys.argv[2]) if sys.argv[1] == "upscaler-vae" else ship_derived(sys.argv[1], sys.argv[2]))
