import os

# No network in tests: diffusers/transformers (the independent references) read local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests are small; two threads keep them fast on the 2-core CI machine without oversubscribing. OMP_NUM_THREADS,
# when set, wins: beside a training run one thread is many times faster than two fighting for one core.
# Set in the environment too, so that the CLI's load-based thread choice (ldm.core.devices.sampling_threads) leaves the
# count alone in-process and in the subprocesses tests start: the same threads, the same floating-point sums.
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, os.cpu_count() or 1))))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The original SD 2.x tensor manifests (names and shapes only), kept with the tests so a clone runs them anywhere.
SD_FORMAT = os.path.join(os.path.dirname(__file__), "sd-format")


@pytest.fixture(scope="session")
def sd_format_dir():
    path = os.environ.get("LDM_SD_FORMAT", SD_FORMAT)
    assert os.path.isdir(path), f"SD format manifests not found at {path} (set LDM_SD_FORMAT)"
    return path


# System packages some tests need. Where one cannot be had, those tests skip and say how to get it
# (`python -m pytest -rs` lists the reasons); where it is there, they run.
@pytest.fixture(scope="session")
def emoji_font():
    """The Noto Color Emoji font (Debian fonts-noto-color-emoji)."""
    from ldm.data.emoji import EmojiFontNotFoundError, find_font

    try:
        return find_font()
    except EmojiFontNotFoundError:
        pytest.skip("needs the Noto Color Emoji font: install Debian's fonts-noto-color-emoji (bash scripts/setup.sh)")


@pytest.fixture(scope="session")
def emoji_list():
    """Unicode's emoji-test.txt (Debian unicode-data)."""
    from ldm.data.emoji import EmojiListNotFoundError, find_emoji_list

    try:
        return find_emoji_list()
    except EmojiListNotFoundError:
        pytest.skip("needs Unicode's emoji-test.txt: install Debian's unicode-data (bash scripts/setup.sh)")


@pytest.fixture(scope="session", autouse=True)
def cli_runner_server(request):
    """One preloaded tests/cli_runner.py server for the session's runners (see its docstring), started only where
    a collected test module uses the runner; the runners find it by LDM_TEST_RUNNER_SOCKET."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    modules = {Path(str(item.fspath)) for item in request.session.items}
    if not any("cli_runner.py" in path.read_text(errors="replace") for path in modules if path.suffix == ".py"):
        yield None
        return
    folder = tempfile.mkdtemp(prefix="ldm-runner-")  # short: a socket's path is at most 107 bytes
    path = os.path.join(folder, "socket")
    os.environ["LDM_TEST_RUNNER_SOCKET"] = path  # before the start: the server's environment is the runners'
    runner = Path(__file__).parent / "cli_runner.py"
    server = subprocess.Popen(
        [sys.executable, str(runner), "--serve", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield path
    finally:
        os.environ.pop("LDM_TEST_RUNNER_SOCKET", None)
        server.kill()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
