"""The validation loss a training run logs, for weights that were never in a run (issue 38: v2's shipped EMA weights).

Builds the config's module (its `init:` weights loaded), then runs the validation step's own loss over the config's
validation rows with the same fixed noise per batch (seed 10,000 + batch index) under bf16 autocast, as Lightning's
validation does, and prints the batch-size-weighted mean. Comparable with `val/loss` in a run's metrics.csv.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/eval_val_loss.py configs/emoji/v3-unet-warm.yaml
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value, as for ldm train")
    args = p.parse_args()
    torch.set_num_threads(1)
    from ldm.training.config import load_train_config
    from ldm.training.run import build_data, build_module

    cfg = load_train_config(args.config, args.overrides)
    data = build_data(cfg)
    data.setup()
    module = build_module(cfg).eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i, batch in enumerate(data.val_dataloader()):
            loss = float(module.loss(batch, torch.Generator().manual_seed(10_000 + i), drop=False))
            total, count = total + loss * len(batch["caption"]), count + len(batch["caption"])
    print(f"{args.config}: validation loss {total / count:.4f} over {count} images")


if __name__ == "__main__":
    main()
