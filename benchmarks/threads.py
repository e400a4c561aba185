"""The README's main command on a CPU that other work keeps partly busy: torch's own thread count (one thread per
core) against the CLI's default (the idle cores, ldm.core.devices.sampling_threads) and against one thread.

    python benchmarks/threads.py [--rounds 3]

The other work is N processes that spin (`while True: pass`), started before the runs of each row and stopped
after; run it on an otherwise quiet machine. Each row runs the three settings interleaved, each a fresh process.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

MAIN = ["-m", "ldm.interfaces.cli.main", "txt2img", "red heart", "--no-progress"]


def timed(extra: list[str], cwd: str) -> tuple[float, str]:
    """(wall seconds, the threads the CLI chose as its log says, or "") of one fresh main command."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *MAIN, "--outdir", cwd, *extra], capture_output=True, text=True, cwd=cwd, env=env
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"main command failed ({proc.returncode}):\n{proc.stderr}")
    chosen = re.search(r"cpu threads: (\d+) of", proc.stderr)
    return wall, chosen.group(1) if chosen else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = {
        f"torch's default ({cores} threads)": ["--threads", str(cores)],
        "ldm's default": [],
        "one thread": ["--threads", "1"],
    }
    print(f"| busy cores | {' | '.join(f'{name} (s)' for name in settings)} | threads ldm chose |")
    print("|---|" + "---|" * (len(settings) + 1))
    with tempfile.TemporaryDirectory() as out:
        for busy in range(cores + 1):
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                time.sleep(2)
                walls: dict[str, list[float]] = {name: [] for name in settings}
                chosen: set[str] = set()
                for i in range(args.rounds):
                    for name, extra in settings.items():
                        wall, threads = timed(extra, out)
                        walls[name].append(wall)
                        if not extra:
                            chosen.add(threads or str(cores))
                        print(f"busy {busy}, round {i + 1}: {name} {wall:.2f} s", file=sys.stderr)
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
            medians = " | ".join(f"{statistics.median(w):.2f}" for w in walls.values())
            print(f"| {busy} of {cores} | {medians} | {', '.join(sorted(chosen))} |", flush=True)


if __name__ == "__main__":
    main()
