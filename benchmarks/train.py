"""Training throughput and peak memory of the tiny configs (or any training config) on this machine.

    python benchmarks/train.py                          # tiny-ldm and tiny-vae, CPU, a few variants
    python benchmarks/train.py --steps 50 --accelerator gpu --precision bf16-mixed
    python benchmarks/train.py --config configs/emoji/ldm.yaml --data data/emoji/train

Prints a markdown table: optimiser steps/s and images/s (after warm-up steps), peak process RSS
(CPU) and peak CUDA memory allocated (GPU). Data is the synthetic shapes set, made in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from ldm.training.config import load_train_config  # noqa: E402
from ldm.training.run import train  # noqa: E402
from ldm.training.shapes import make_shapes_dataset  # noqa: E402
from ldm.training.tiny import QUIET, TINY_CONFIGS  # noqa: E402


class StepTimer(pl.Callback):
    """Wall time of the training steps after `warmup` steps (first steps include compilation, allocation)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps, self.elapsed = warmup, None, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.start, self.first = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if self.start is not None:
            self.elapsed, self.steps = time.perf_counter() - self.start, trainer.global_step - self.first


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def bench(name: str, config: Path, data: Path, run_dir: Path, steps: int, warmup: int, extra: list[str]) -> dict:
    cfg = load_train_config(
        config,
        [
            f"data.root={data}",
            f"logging.run_dir={run_dir}",
            f"trainer.max_steps={warmup + steps}",
            "logging.sample_every_n_steps=0",
            "logging.checkpoint_every_n_steps=0",
            "data.val_fraction=0",
            "logging.csv=false",
            *QUIET,
            *extra,
        ],
    )
    timer = StepTimer(warmup)
    train(cfg, extra_callbacks=[timer])
    sps = timer.steps / timer.elapsed if timer.elapsed else float("nan")
    images = sps * cfg["data"]["batch_size"] * cfg["training"]["accumulate"]
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "run": name,
        "steps/s": sps,
        "images/s": images,
        "peak RSS MiB": peak_rss_mib(),
        "CUDA max alloc MiB": cuda,
        "batch": cfg["data"]["batch_size"],
        "precision": cfg["trainer"]["precision"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a training config (default: the tiny ones, in variants)")
    p.add_argument("--data", help="data root (default: synthetic shapes at the config's size)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default=None, help="e.g. bf16-mixed, 16-mixed (default: the config's)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="more section.key=value overrides")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    common = [f"trainer.accelerator={args.accelerator}", "trainer.devices=1", *args.overrides]
    if args.batch_size:
        common.append(f"data.batch_size={args.batch_size}")
    if args.precision:
        common.append(f"trainer.precision={args.precision}")
    if args.config:
        runs = [(Path(args.config).stem, Path(args.config), [])]
    else:
        runs = [
            ("tiny-ldm", TINY_CONFIGS["ldm"], []),
            ("tiny-ldm +grad ckpt", TINY_CONFIGS["ldm"], ["training.gradient_checkpointing=true"]),
            ("tiny-ldm bf16-mixed", TINY_CONFIGS["ldm"], ["trainer.precision=bf16-mixed"]),
            ("tiny-vae (+disc)", TINY_CONFIGS["vae"], ["training.disc_start=0"]),
            ("tiny-vae (no disc)", TINY_CONFIGS["vae"], ["training.disc_start=null"]),
        ]
    if args.one is not None:  # child process: one run, one JSON line (so peak RSS is this run's own)
        name, config, extra = runs[args.one]
        with tempfile.TemporaryDirectory() as tmp:
            size = load_train_config(config, ["data.root=x"])["data"]["size"]
            data = Path(args.data) if args.data else make_shapes_dataset(Path(tmp) / "shapes", size=size, count=64)
            row = bench(name, config, data, Path(tmp) / "run", args.steps, args.warmup, common + extra)
        print("BENCH " + json.dumps(row))
        return 0
    rows = []
    for i in range(len(runs)):
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(i), *(argv if argv is not None else sys.argv[1:])],
            capture_output=True,
            text=True,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("BENCH ")]
        if child.returncode != 0 or not lines:
            print(child.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"benchmark run {runs[i][0]!r} failed")
        rows.append(json.loads(lines[-1][len("BENCH ") :]))
    device = (
        torch.cuda.get_device_name()
        if args.accelerator == "gpu" and torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\ntraining throughput ({device}; {args.steps} timed steps after {args.warmup} warm-up; one process per run)\n"
    )
    cols = ["run", "batch", "precision", "steps/s", "images/s", "peak RSS MiB", "CUDA max alloc MiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else ("-" if r[c] is None else str(r[c])) for c in cols]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
