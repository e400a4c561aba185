"""A 200-prompt file on 1 and 2 CPU processes (ldm txt2img --from-file --devices N --strategy ddp, issue 42):
the whole command's wall time, and the images per second while images are being written (first to last PNG's
modification time, so the start-up of torch, Lightning and gloo is left out), and whether both runs made the same bytes.

    python benchmarks/prompt_file_devices.py [--prompts 200] [--steps 10] [--size 32] [--shipped]

The model is the tests' tiny one (tests/factories.py) unless --shipped (the shipped default model at its own size).
Each process runs one thread (--threads 1); the 1-process run is also timed with 2 threads, the fair comparison on
a 2-core machine. Every run is a fresh command, in a fresh folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], cwd: Path, run_dir: str) -> tuple[float, float, list[bytes]]:
    """(wall seconds, images per second while writing, the PNGs' bytes by name) of one fresh command."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ldm", *argv, "--run-dir", run_dir], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    images = sorted((cwd / run_dir / "samples").glob("p*-s*.png"))
    times = sorted(p.stat().st_mtime for p in images)
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return wall, rate, [p.read_bytes() for p in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="image size in px (tiny model)")
    parser.add_argument("--shipped", action="store_true", help="the shipped default model instead of the tiny one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.shipped:
            model = ["--model", "full"]
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from factories import write_tiny_model_files

            write_tiny_model_files(work)
            model = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--height", str(args.size)]
            model += ["--width", str(args.size)]
        (work / "prompts.txt").write_text("".join(f"a shape number {k}\n" for k in range(args.prompts)))
        base = ["txt2img", "--from-file", "prompts.txt", "--steps", str(args.steps), "--no-progress", *model]
        cpu = ["--accelerator", "cpu", "--strategy", "ddp"]
        runs = {
            "1 process, 1 thread": [*base, *cpu, "--devices", "1", "--threads", "1"],
            "1 process, 2 threads": [*base, *cpu, "--devices", "1", "--threads", "2"],
            "2 processes, 1 thread each": [*base, *cpu, "--devices", "2", "--threads", "1"],
        }
        print(f"{args.prompts} prompts, {args.steps} steps, {'shipped model' if args.shipped else 'tiny model'}")
        print("| run | wall (s) | images/s while writing | same bytes as the first |")
        print("|---|---|---|---|")
        first = None
        for n, (name, argv) in enumerate(runs.items()):
            wall, rate, images = timed(argv, work, f"run{n}")
            first = first if first is not None else images
            print(f"| {name} | {wall:.1f} | {rate:.1f} | {images == first} |", flush=True)


if __name__ == "__main__":
    main()
