#!/usr/bin/env python
"""Export a training checkpoint for inference: model.safetensors + model.yaml (vae.* for autoencoder runs).

    python scripts/export.py runs/my-run [--out DIR]            # the run's checkpoints/last.ckpt
    python scripts/export.py runs/my-run/checkpoints/step-001000.ckpt --out exports/step-1000
    python scripts/export.py runs/my-run --overwrite           # replace the run's own model.safetensors

Same as `ldm train --export-only --resume CKPT [--out DIR]`; the config stored in the checkpoint is used.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.interfaces.cli.main import main  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a Lightning .ckpt or a run directory")
    p.add_argument("--config", help="training config (default: the one stored in the checkpoint)")
    p.add_argument("--out", help="output directory (default: the run directory)")
    p.add_argument("--overwrite", action="store_true", help="replace exports already there (else refused)")
    args = p.parse_args()
    argv = ["train", "--export-only", "--resume", args.checkpoint]
    argv += ["--config", args.config] if args.config else []
    argv += ["--out", args.out] if args.out else []
    argv += ["--overwrite"] if args.overwrite else []
    sys.exit(main(argv))
