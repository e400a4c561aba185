"""ldm app: the interactive Streamlit app (ldm/interfaces/app/main.py) on localhost."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from ldm.core.errors import InvalidOptionError, LdmError, MissingFileError
from ldm.interfaces.app.state import ENV_CKPT, ENV_CONFIG, ENV_DEVICE, ENV_UPSCALER_CKPT, ENV_UPSCALER_CONFIG
from ldm.interfaces.cli.common import log

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


class AppUnavailableError(LdmError, OSError):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the interactive app (Streamlit) on localhost")
    p.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (default: 8501)")
    p.add_argument("--config", help="model config YAML; default: the shipped emoji model")
    p.add_argument("--ckpt", help="model weights (.safetensors or .ckpt)")
    p.add_argument("--upscaler-config", help="x4 upscaler config, for the Edit page's upscaling")
    p.add_argument("--upscaler-ckpt", help="x4 upscaler weights")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=run)


# Host names the app answers to. Binding 127.0.0.1 is not enough: a web page whose own name an attacker
# re-points at 127.0.0.1 (DNS rebinding) reaches the server from the user's browser, with its own name in
# the Host header. Streamlit refuses the WebSocket, the channel that runs everything, for other hosts.
ALLOWED_HOSTS = ("127.0.0.1", "localhost")


def app_command(port: int) -> list[str]:
    """The `streamlit run` line: headless, bound to localhost only, answering only to local host names,
    no usage statistics sent anywhere."""
    hosts = [arg for host in ALLOWED_HOSTS for arg in ("--server.allowedHosts", host)]
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(MAIN),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        *hosts,
    ]


def app_env(args: argparse.Namespace) -> dict[str, str]:
    """The model choice travels to the app's process as environment variables (Streamlit owns argv)."""
    env = dict(os.environ)
    for name, value in (
        (ENV_CONFIG, args.config),
        (ENV_CKPT, args.ckpt),
        (ENV_UPSCALER_CONFIG, args.upscaler_config),
        (ENV_UPSCALER_CKPT, args.upscaler_ckpt),
        (ENV_DEVICE, args.device),
    ):
        if value:
            env[name] = str(Path(value).resolve()) if name != ENV_DEVICE else value
        else:
            env.pop(name, None)
    return env


def check_args(args: argparse.Namespace) -> None:
    """Fail here, before the server starts, rather than on every page of the app."""
    if not 0 < args.port < 65536:
        raise InvalidOptionError(f"--port must be in 1..65535, got {args.port}")
    if args.ckpt and not args.config:
        raise InvalidOptionError("--ckpt needs --config (the model's YAML)")
    if bool(args.upscaler_config) != bool(args.upscaler_ckpt):
        raise InvalidOptionError("give both --upscaler-config and --upscaler-ckpt, or neither")
    for value in (args.config, args.ckpt, args.upscaler_config, args.upscaler_ckpt):
        if value and not Path(value).is_file():
            raise MissingFileError(f"file not found: {value}")
    if importlib.util.find_spec("streamlit") is None:
        raise AppUnavailableError("the app needs Streamlit: pip install 'ldm[app]'")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    log.info("ldm app on http://127.0.0.1:%d (Ctrl+C stops it)", args.port)
    proc = subprocess.Popen(app_command(args.port), env=app_env(args))

    # A SIGTERM to `ldm app` (a service manager, a test's cleanup) must not orphan the server:
    # turn it into the same path as Ctrl+C.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return stop(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop(proc: subprocess.Popen, timeout: float = 10) -> int:
    """Ask the server to stop, and force it after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
