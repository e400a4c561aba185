"""A prompt file over several processes through the real command (issue 42): two CPU processes (Lightning's ddp,
gloo) make the very bytes a plain one-process run makes, and a run killed midway is completed by --resume, which
makes only the missing images and replaces none.

The plain run and the resumed one go through tests/cli_runner.py (forked from one process that has imported
torch); the two-process run is started from there too (Lightning starts the second process as a fresh
`python -m ldm.interfaces.cli.main`); the killed run is a process of its own, killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import write_tiny_model_files

from ldm.tasks.prompt_file import MANIFEST, image_name

RUNNER = Path(__file__).parents[1] / "cli_runner.py"
PROMPTS = 24  # 200 prompts are in benchmarks/prompt_file_devices.py: here the time goes to starting processes
SAMPLES = 2
TOTAL = PROMPTS * SAMPLES
MODEL = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--height", "16", "--width", "16", "--threads", "1"]
FILE = ["txt2img", "--from-file", "prompts.txt", "--n-samples", str(SAMPLES), "--steps", "3", "--seed", "7", *MODEL]
NAMES = [image_name(k, s) for k in range(PROMPTS) for s in range(SAMPLES)]


def run_cli(workspace: Path, *argvs: list[str], watch: Path | None = None) -> list[dict]:
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cases = [
        {"argv": argv, "cwd": str(workspace), "env": env, "timeout": 180, "watch": str(watch) if watch else None}
        for argv in argvs
    ]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


# (argv after the prompt-file run's, what the one-line error must say); they run after the two-process run, whose
# folder they must leave as it is
BAD = [
    (["--run-dir", "two"], "manifest.json exists: --resume fills in"),
    (["--run-dir", "two", "--resume", "--steps", "2"], "--resume: steps differ(s) from the run"),
    (["--run-dir", "two", "--resume", "--n-samples", "1"], "--resume:"),
    (["--devices", "0"], "--devices must be at least 1, got 0"),
    (["--devices", "two"], "--devices 'two': give a count"),
    (["--num-nodes", "0"], "--num-nodes must be at least 1, got 0"),
    (["--strategy", "ddp_spawn"], "argument --strategy: invalid choice"),
]
SINGLE_PROMPT = (["txt2img", "one prompt", *MODEL, "--devices", "2"], "run a prompt file: give --from-file")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """A tiny model, a prompt file, the plain run's images of it (plain/samples/00000.png, ...), and the results of
    the two-process run and of the bad options after it (one runner: each start-up costs seconds)."""
    root = tmp_path_factory.mktemp("prompt-file-devices")
    write_tiny_model_files(root)
    (root / "prompts.txt").write_text("".join(f"a shape number {k}\n\n" for k in range(PROMPTS)))  # blank lines too
    two = [*FILE, "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--run-dir", "two"]
    plain, two, *bad = run_cli(
        root,
        [*FILE, "--no-progress", "--no-grid", "--outdir", "plain"],
        two,
        *[[*FILE, *extra] for extra, _ in BAD],
        SINGLE_PROMPT[0],
        watch=root / "two",
    )
    assert plain["rc"] == 0, plain["stderr"][-3000:]
    return root, two, bad


def plain_image(workspace: Path, name: str) -> bytes:
    """The plain run's image of that name: its numbering is prompt-major, n_samples per prompt."""
    k, s = (int(n) for n in re.fullmatch(r"p(\d+)-s(\d+)\.png", name).groups())
    return (workspace / "plain" / "samples" / f"{k * SAMPLES + s:05d}.png").read_bytes()


def test_two_cpu_processes_make_the_plain_runs_images_bit_for_bit(workspace):
    workspace, two, _ = workspace
    assert two["rc"] == 0, two["stderr"][-3000:]
    said = two["stdout"] + two["stderr"]
    assert f"{TOTAL} of {TOTAL} image(s) to make ({PROMPTS} job(s)) on 2 process(es)" in said
    assert f"{TOTAL}/{TOTAL}" in said  # one bar over the whole file, on rank 0
    samples = workspace / "two" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == sorted(NAMES)
    for name in NAMES:  # the PNG's bytes: pixels and the settings written with them
        assert (samples / name).read_bytes() == plain_image(workspace, name), name
    manifest = json.loads((workspace / "two" / MANIFEST).read_text())
    assert [image["name"] for image in manifest["images"]] == NAMES
    assert manifest["attempts"][0]["processes"] == 2 and manifest["attempts"][0]["jobs"] == PROMPTS


def test_a_killed_run_is_completed_by_resume_with_no_image_made_twice(workspace):
    workspace = workspace[0]
    run_dir = workspace / "killed"
    samples = run_dir / "samples"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ldm.interfaces.cli.main",
            *FILE,
            "--devices",
            "1",
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ],
        cwd=workspace,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not (samples.is_dir() and len(list(samples.glob("p*-s*.png"))) >= 6):
        assert proc.poll() is None, f"exited with {proc.returncode} first: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no images after 180 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # a lost node: no handler runs
    proc.wait()
    proc.stderr.close()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in samples.glob("p*-s*.png")}
    assert 6 <= len(before) < TOTAL, len(before)
    whole_jobs = {k for k in range(PROMPTS) if all(image_name(k, s) in before for s in range(SAMPLES))}

    resumed, again = run_cli(
        workspace,
        [*FILE, "--devices", "1", "--run-dir", str(run_dir), "--resume"],
        [*FILE, "--devices", "1", "--run-dir", str(run_dir), "--resume", "--no-progress"],
        watch=samples,
    )
    assert resumed["rc"] == 0, resumed["stderr"][-3000:]
    said = resumed["stdout"] + resumed["stderr"]
    to_make = (PROMPTS - len(whole_jobs)) * SAMPLES  # a job cut short is made again whole, written where missing
    assert f"{to_make} of {TOTAL} image(s) to make ({PROMPTS - len(whole_jobs)} job(s))" in said
    assert re.search(rf"\b{len(before)}/{TOTAL}\b", said) and f"{TOTAL}/{TOTAL}" in said  # over the whole file
    # Nothing done twice: the resumed run added exactly the missing images and changed none of the others.
    assert sorted(resumed["changed"]) == sorted(set(NAMES) - set(before))
    for name, stat in before.items():
        assert ((samples / name).stat().st_ino, (samples / name).stat().st_mtime_ns) == stat, name
    for name in NAMES:  # nothing missing, and each image the plain run's
        assert (samples / name).read_bytes() == plain_image(workspace, name), name
    # A third run finds nothing to make and writes nothing.
    assert again["rc"] == 0 and again["changed"] == [], again["stderr"][-3000:]
    assert f"0 of {TOTAL} image(s) to make" in again["stdout"] + again["stderr"]
    attempts = json.loads((run_dir / MANIFEST).read_text())["attempts"]
    assert [a["jobs"] for a in attempts] == [PROMPTS, PROMPTS - len(whole_jobs), 0]


def test_bad_device_options_are_one_line_errors_that_change_nothing(workspace):
    _, _, results = workspace
    for (extra, message), result in zip([*BAD, SINGLE_PROMPT], results, strict=True):
        lines = result["stderr"].strip().splitlines()
        assert result["rc"] == 2, (extra, result["stderr"][-2000:])
        assert message in lines[-1], (extra, lines[-1])
        assert "Traceback" not in result["stderr"], extra
        assert result["changed"] == [], extra
