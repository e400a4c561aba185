"""The CPU thread count of a generation (ldm.core.devices.sampling_threads): --threads, the user's OMP_NUM_THREADS, or
the cores that other work leaves idle."""

import os
import subprocess
import sys

import pytest
import yaml
from factories import tiny_config, tiny_model

from ldm.core.devices import cpu_load, sampling_threads
from ldm.io.checkpoint import save_state_dict


@pytest.mark.parametrize("load, expected", [(0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.2, 2), (3.9, 1), (9.0, 1)])
def test_threads_are_the_idle_cores_and_at_least_one(load, expected):
    assert sampling_threads(None, cores=4, load=load, env={}) == expected


def test_threads_never_exceed_the_cores():
    assert sampling_threads(None, cores=2, load=0.0, env={}) == 2


def test_the_users_choice_wins():
    assert sampling_threads(3, cores=2, load=5.0, env={"OMP_NUM_THREADS": "1"}) == 3  # --threads, over everything
    assert sampling_threads(None, cores=2, load=5.0, env={"OMP_NUM_THREADS": "2"}) is None  # torch's (the env's) own
    assert sampling_threads(None, cores=2, load=5.0, env={"MKL_NUM_THREADS": "2"}) is None
    assert sampling_threads(None, cores=2, load=None, env={}) is None  # no load figure: no guess


def test_load_is_read_from_proc_loadavg_or_none(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("1.25 0.80 0.40 2/300 12345\n")
    assert cpu_load(str(f)) == 1.25  # the average, when more than the runnable threads besides this one
    f.write_text("0.10 0.80 0.40 3/300 12345\n")
    assert cpu_load(str(f)) == 2.0  # two others runnable right now: the average has not caught up yet
    assert cpu_load(str(tmp_path / "missing")) is None
    (tmp_path / "bad").write_text("\n")
    assert cpu_load(str(tmp_path / "bad")) is None


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    cfg, ckpt = d / "tiny.yaml", d / "tiny.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), ckpt)
    return str(cfg), str(ckpt)


def _txt2img_threads(model_files, tmp_path, extra, env_threads):
    """Run the CLI in a fresh process and report the torch thread count that sampling ran with."""
    cfg, ckpt = model_files
    code = (
        "import sys, torch, ldm.interfaces.cli.txt2img as c\n"
        "seen = []\n"
        "original = c.txt2img\n"
        "def spy(*a, **k):\n"
        "    seen.append(torch.get_num_threads())\n"
        "    return original(*a, **k)\n"
        "c.txt2img = spy\n"
        "from ldm.interfaces.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('THREADS', seen)\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if env_threads:
        env["OMP_NUM_THREADS"] = env_threads
    argv = [
        "txt2img",
        "cat",
        "--config",
        cfg,
        "--ckpt",
        ckpt,
        "--steps",
        "1",
        "--outdir",
        str(tmp_path),
        "--no-progress",
        "--height",
        "16",
        "--width",
        "16",
        *extra,
    ]
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, env=env)
    return r


def test_cli_threads_option_sets_the_count_and_bad_values_fail_in_one_line(model_files, tmp_path):
    r = _txt2img_threads(model_files, tmp_path, ["--threads", "1"], env_threads="2")
    assert r.returncode == 0, r.stderr
    assert "THREADS [1]" in r.stdout
    r = _txt2img_threads(model_files, tmp_path, ["--threads", "0"], env_threads=None)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "ldm txt2img: error: --threads must be at least 1, got 0"
