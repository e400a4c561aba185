"""Compare U-Net sweep runs (scripts/sweep_unet.sh): the figures behind the default model's width.

    python scripts/unet_sweep_table.py runs/sweep-unet/s runs/sweep-unet/m runs/sweep-unet/l

For each run: U-Net parameters (from its model.safetensors export), the last validation loss (fixed noise
per batch, so runs compare like with like), the mean training loss over the last 100 steps, and the
wall-clock seconds per step (the run's `wall_s`, written by the sweep script, over its steps).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.io.checkpoint import load_state_dict  # noqa: E402


def metrics(run: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for f in sorted(run.glob("csv/version_*/metrics.csv")):
        with open(f) as fh:
            rows += list(csv.DictReader(fh))
    return rows


def summarise(run: Path) -> dict:
    rows = metrics(run)
    steps = max(int(r["step"]) for r in rows) + 1
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    train = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    recent = [loss for step, loss in train if step >= steps - 100]
    weights = load_state_dict(run / "model.safetensors")
    params = sum(v.numel() for k, v in weights.items() if "diffusion_model." in k and "model_ema" not in k)
    wall = run / "wall_s"
    return {
        "run": run.name,
        "params": params,
        "steps": steps,
        "val": val[-1] if val else float("nan"),
        "train": sum(recent) / max(len(recent), 1),
        "s_per_step": float(wall.read_text()) / steps if wall.exists() else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| run | U-Net parameters | steps | val loss | train loss (last 100) | s/step (wall, incl. start) |")
    print("|---|---|---|---|---|---|")
    for r in map(summarise, args.runs):
        print(
            f"| {r['run']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {r['val']:.4f} | {r['train']:.4f} | {r['s_per_step']:.2f} |"  # noqa: E501
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
