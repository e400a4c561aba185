"""Start-up cost of the README's main command against bare `import torch`, both as fresh processes.

    python benchmarks/startup.py [--rounds 5]      # the table: median wall time, ratio, peak RSS
    python benchmarks/startup.py --profile         # where the time goes: imports by package, then phases

Each runs in a temporary folder, so the `ldm` imported is the one on PYTHONPATH (or installed), never the
current folder's. The two commands run interleaved (A, B, A, B, ...) so that a busy machine slows both alike; the ratio
is the figure to read. Peak RSS is each child's own maximum resident set (os.wait4's ru_maxrss).
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
from collections import Counter

MAIN = ["-m", "ldm.cli", "txt2img", "red heart", "--no-progress"]
BARE = ["-c", "import torch"]


def timed(args: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one fresh `python ARGS`, its output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def table(rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"main command": [], "import torch": []}
    with tempfile.TemporaryDirectory() as out:
        for i in range(rounds):
            results["main command"].append(timed([*MAIN, "--outdir", out], out))
            results["import torch"].append(timed(BARE, out))
            print(f"round {i + 1}/{rounds}: main {results['main command'][-1][0]:.2f} s, "
                  f"torch {results['import torch'][-1][0]:.2f} s", file=sys.stderr)
    med = {k: statistics.median(w for w, _ in v) for k, v in results.items()}
    rss = {k: max(m for _, m in v) for k, v in results.items()}
    print(f"| command | median wall (s, {rounds} runs) | peak RSS (MiB) |\n|---|---|---|")
    print(f"| `ldm txt2img \"red heart\"` | {med['main command']:.2f} | {rss['main command']:.0f} |")
    print(f"| `python -c \"import torch\"` | {med['import torch']:.2f} | {rss['import torch']:.0f} |")
    print(f"\nratio main / import torch: {med['main command'] / med['import torch']:.2f}")


def import_times(top: int = 15) -> None:
    """`python -X importtime` of the main command, self time summed by top-level package."""
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-X", "importtime", *MAIN, "--outdir", out],
                              capture_output=True, text=True, check=True, cwd=out)
    by_package: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            by_package[m.group(2).split(".")[0]] += int(m.group(1))
    total = sum(by_package.values())
    print(f"imports: {total / 1e6:.2f} s in all ({len(by_package)} top-level packages); top {top}:")
    for name, us in by_package.most_common(top):
        print(f"  {us / 1e3:7.0f} ms  {name}")


PHASES = """
import time, logging, tempfile
t = {}
s = time.perf_counter()
import torch; t['import torch'] = time.perf_counter() - s; s = time.perf_counter()
import ldm.cli; parser = ldm.cli.build_parser(); t['import ldm (CLI parser)'] = time.perf_counter() - s
from ldm import model as M, checkpoint as C, pipeline as P, images as I
def wrap(mod, name, phase):
    f = getattr(mod, name)
    def w(*a, **k):
        s = time.perf_counter(); r = f(*a, **k); t[phase] = t.get(phase, 0) + time.perf_counter() - s; return r
    setattr(mod, name, w)
wrap(M, 'instantiate', 'model build (imports it needs included)')
wrap(M, 'load_into', 'weight load')
wrap(M, 'load_state_dict', 'weight read (safetensors)')
wrap(M, 'file_sha256', 'checkpoint SHA-256 (image metadata)')
import ldm.text_encoder as T
wrap(T.FrozenTextEncoder, 'forward', 'text encode')
wrap(M.LatentDiffusion, 'decode_latent', 'decode')
wrap(I, 'save_png', 'PNG write')
import ldm.commands.common as CC; wrap(CC, 'save_png', 'PNG write')
import ldm.commands.txt2img as TX
wrap(TX, 'load_model_from_args', 'load_model (all of it)')
wrap(TX, 'txt2img', 'txt2img (encode + sample + decode)')
out = tempfile.mkdtemp()
s = time.perf_counter(); ldm.cli.main(['txt2img', 'red heart', '--no-progress', '--outdir', out])
t['command run (all of it)'] = time.perf_counter() - s
for k, v in t.items(): print(f'  {v * 1e3:7.0f} ms  {k}')
"""


def phases() -> None:
    """Wall time of the main command's phases, in one fresh process (phases nest: 'all of it' rows include
    the rows below them)."""
    print("phases (one run, ms):")
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run([sys.executable, "-c", PHASES], check=True, cwd=cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print where the time goes instead of the table")
    args = parser.parse_args()
    if args.profile:
        import_times()
        phases()
    else:
        table(args.rounds)


if __name__ == "__main__":
    main()
