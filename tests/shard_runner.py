"""Trains the tiny LDM on shards and records, per rank, the sample keys of every batch it trained on.

    python tests/shard_runner.py OUT_DIR [--resume] override ...

Run as a script (not imported by pytest) so that Lightning's DDP launcher can start the other ranks by
running the same command again; each rank appends its keys to OUT_DIR/keys-rank{R}.txt.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning.pytorch as pl

from ldm.training.config import load_train_config
from ldm.training.run import train
from ldm.training.tiny import QUIET, TINY_CONFIGS


class RecordKeys(pl.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.out / f"keys-rank{trainer.global_rank}.txt", "a") as f:
            f.write("\n".join(batch["key"]) + "\n")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # as the CLI logs
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    overrides = [a for a in argv[1:] if a != "--resume"]
    cfg = load_train_config(TINY_CONFIGS["ldm"], QUIET + ["data.root=null", "data.val_fraction=0"] + overrides)
    train(cfg, resume="last" if "--resume" in argv else None, extra_callbacks=[RecordKeys(out)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
