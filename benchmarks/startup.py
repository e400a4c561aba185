"""Start-up cost of the README's main command against bare `import torch`, both as fresh processes.

    python benchmarks/startup.py [--rounds 5]      # the table: median wall time, ratio, peak RSS
    python benchmarks/startup.py --profile         # where the time goes: imports by package, then phases
    python benchmarks/startup.py --against ../old  # and a checkout of an earlier commit, interleaved with both

Each runs in a temporary folder, so the `ldm` imported is the one on PYTHONPATH (or installed), never the
current folder's. The two commands run interleaved (A, B, A, B, ...) so that a busy machine slows both alike; the ratio
is the figure to read. Peak RSS is each child's own maximum resident set (os.wait4's ru_maxrss).

Children import from cached bytecode, as an installed `ldm` does: they write and read it under a private
PYTHONPYCACHEPREFIX (a warm-up run of each command fills it first), whatever PYTHONDONTWRITEBYTECODE says here.
Without that, a checkout run with PYTHONDONTWRITEBYTECODE=1 compiles each of ldm's modules from source at every
start (about 0.1 s of the main command), a cost no installed copy pays.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

MAIN = ["-m", "ldm.interfaces.cli.main", "txt2img", "red heart", "--no-progress"]
BARE = ["-c", "import torch"]
ENV: dict[str, str] = dict(os.environ)  # the children's; bytecode_cache() points it at a private cache


def bytecode_cache(folder: str) -> None:
    """Children cache bytecode under `folder`; one run of each command fills it (not timed)."""
    ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    ENV["PYTHONPYCACHEPREFIX"] = folder
    with tempfile.TemporaryDirectory() as out:
        for args in ([*MAIN, "--outdir", out], BARE):
            subprocess.run([sys.executable, *args], check=True, cwd=out, env=ENV, capture_output=True)


def timed(args: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one fresh `python ARGS`, its output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env or ENV
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def against_command(checkout: str) -> tuple[list[str], dict[str, str]]:
    """The main command of another checkout (an earlier commit's `ldm`, whose CLI module may be the old `ldm.cli`)
    and the environment that imports it from there; its bytecode is cached like ours (one untimed run)."""
    env = {**ENV, "PYTHONPATH": os.path.abspath(checkout)}
    module = "ldm.interfaces.cli.main" if os.path.isdir(os.path.join(checkout, "ldm", "interfaces")) else "ldm.cli"
    command = ["-m", module, *MAIN[2:]]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, *command, "--outdir", out], check=True, cwd=out, env=env, capture_output=True)
    return command, env


def table(rounds: int, against: str | None = None) -> None:
    results: dict[str, list[tuple[float, float]]] = {"main command": [], "import torch": []}
    before = against_command(against) if against else None
    if before:
        results["before"] = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(rounds):
            results["main command"].append(timed([*MAIN, "--outdir", out], out))
            results["import torch"].append(timed(BARE, out))
            if before:
                results["before"].append(timed([*before[0], "--outdir", out], out, before[1]))
            print(
                f"round {i + 1}/{rounds}: "
                + ", ".join(f"{name} {runs[-1][0]:.2f} s" for name, runs in results.items()),
                file=sys.stderr,
            )
    med = {k: statistics.median(w for w, _ in v) for k, v in results.items()}
    rss = {k: max(m for _, m in v) for k, v in results.items()}
    print(f"| command | median wall (s, {rounds} runs) | peak RSS (MiB) |\n|---|---|---|")
    print(f'| `ldm txt2img "red heart"` | {med["main command"]:.2f} | {rss["main command"]:.0f} |')
    print(f'| `python -c "import torch"` | {med["import torch"]:.2f} | {rss["import torch"]:.0f} |')
    if before:
        print(f"| the same, from {against} | {med['before']:.2f} | {rss['before']:.0f} |")
    print(f"\nratio main / import torch: {med['main command'] / med['import torch']:.2f}")
    if before:
        print(f"ratio of {against}'s / import torch: {med['before'] / med['import torch']:.2f}")
        print(f"ratio main / {against}'s: {med['main command'] / med['before']:.3f}")


def import_times(top: int = 15) -> None:
    """`python -X importtime` of the main command, self time summed by top-level package."""
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", *MAIN, "--outdir", out],
            capture_output=True,
            text=True,
            check=True,
            cwd=out,
            env=ENV,
        )
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
import time, tempfile
t = {}
def now(): return time.perf_counter(), time.process_time()
def add(phase, s):
    w, c = now(); a, b = t.get(phase, (0, 0)); t[phase] = (a + w - s[0], b + c - s[1])
import ldm.interfaces.cli.main; getattr(ldm.interfaces.cli.main, 'use_huge_pages', lambda: None)()  # what `ldm` does before it imports torch
s = now()
import torch; add('import torch', s); s = now()
import ldm.interfaces.cli.main, ldm.interfaces.cli.txt2img as TX, ldm.interfaces.cli.common as CC, ldm.models.latent_diffusion as M
add('import ldm and the txt2img command (pipeline, model, samplers, PIL, yaml, ...)', s); s = now()
from ldm.models import open_clip_parts as O
from ldm.models import text_encoder as T
add("import open_clip's text transformer (ldm.models.text_encoder: the model build would)", s)
def wrap(mod, name, phase, returns_wait=False):
    f = getattr(mod, name, None)
    if f is None: return  # older code: lets the same script time both
    def w(*a, **k):
        s = now(); r = f(*a, **k); add(phase, s)
        return wrap_wait(r) if returns_wait else r
    setattr(mod, name, w)
def wrap_wait(wait):
    def w():
        s = now(); r = wait(); add('checkpoint SHA-256: waiting for its thread', s); return r
    return w
wrap(ldm.interfaces.cli.main, 'build_parser', 'CLI parser (the txt2img command alone)')
wrap(M, 'instantiate', 'model build (no init)')
wrap(M, 'load_state_dict', 'weight read (safetensors)')
wrap(M, 'load_into', 'strict load')
wrap(M, 'sha256_in_background', 'checkpoint SHA-256: starting its thread', returns_wait=True)
wrap(M, 'file_sha256', 'checkpoint SHA-256 (on the main thread)')
wrap(O, 'tokenizer', 'tokenizer (first use imports open_clip.tokenizer: ftfy, regex, BPE merges)')
wrap(T.FrozenTextEncoder, 'forward', 'text encode (tokenizer included)')
wrap(M.LatentDiffusion, 'decode_latent', 'decode')
wrap(CC, 'save_png', 'PNG write')
wrap(TX, 'load_model_from_args', 'load_model (all of it)')
wrap(TX, 'txt2img', 'txt2img (encode + sample + decode)')
out = tempfile.mkdtemp()
s = now(); ldm.interfaces.cli.main.main(['txt2img', 'red heart', '--no-progress', '--outdir', out])
add('command run (all of it)', s)
import json; print(json.dumps(t))
"""  # noqa: E501


SAMPLE, ENCODE, DECODE = "txt2img (encode + sample + decode)", "text encode (tokenizer included)", "decode"


def phases(rounds: int) -> None:
    """Wall and CPU time (process_time: all of the process's threads) of the main command's phases, each the median
    over `rounds` fresh processes. Phases nest: 'all of it' rows include the rows below them."""
    runs = []
    with tempfile.TemporaryDirectory() as cwd:
        for i in range(rounds):
            out = subprocess.run(
                [sys.executable, "-c", PHASES], check=True, cwd=cwd, env=ENV, capture_output=True, text=True
            ).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(f"phases: run {i + 1}/{rounds}", file=sys.stderr)
    print(f"phases (median of {rounds} runs, ms):\n  {'wall':>7} {'CPU':>7}")
    for phase in runs[0]:
        wall, cpu = (statistics.median(run.get(phase, (0, 0))[j] for run in runs) for j in (0, 1))
        print(f"  {wall * 1e3:7.0f} {cpu * 1e3:7.0f}  {phase}")
    sampling = [
        [run[SAMPLE][j] - run.get(ENCODE, (0, 0))[j] - run.get(DECODE, (0, 0))[j] for j in (0, 1)] for run in runs
    ]
    print(
        f"  {statistics.median(w for w, _ in sampling) * 1e3:7.0f} {statistics.median(c for _, c in sampling) * 1e3:7.0f}"  # noqa: E501
        "  sampling (txt2img minus text encode and decode)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds", type=int, default=5, help="runs of each command (the table) or of the phases (--profile)"
    )
    parser.add_argument("--profile", action="store_true", help="print where the time goes instead of the table")
    parser.add_argument("--against", metavar="CHECKOUT", help="also time another checkout's main command, interleaved")
    args = parser.parse_args()
    cache = tempfile.TemporaryDirectory()
    bytecode_cache(cache.name)
    if args.profile:
        import_times()
        phases(args.rounds)
    else:
        table(args.rounds, args.against)


if __name__ == "__main__":
    main()
