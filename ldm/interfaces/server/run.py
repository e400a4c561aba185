"""Start the server: load the model, start the worker, serve HTTP with uvicorn until SIGTERM or Ctrl-C.

On SIGTERM (or SIGINT) the queue closes first (new jobs are refused, waiting ones cancelled), uvicorn stops
listening and waits for the open requests, so the running job finishes and its client gets its images; then the
process exits 0.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.interfaces.cli.main import Terminated
from ldm.interfaces.server.generate import Generator, ModelEntry
from ldm.interfaces.server.jobs import JobQueue
from ldm.interfaces.server.requests import ServerLimits
from ldm.interfaces.server.security import LOCAL_HOSTS, Guard, is_loopback

log = logging.getLogger("ldm.serve")


def check_exposure(host: str, auth: str | None, insecure: bool) -> None:
    """Listening beyond loopback needs a password (or the user's explicit --insecure)."""
    if auth is not None and (":" not in auth or not auth.split(":", 1)[0] or not auth.split(":", 1)[1]):
        raise InvalidOptionError("--api-auth takes USER:PASSWORD, both non-empty")
    if not is_loopback(host) and auth is None and not insecure:
        raise InvalidOptionError(
            f"--host {host} listens beyond this machine: give --api-auth USER:PASSWORD "
            "(or --insecure to serve anyone who can reach it)"
        )


def allowed_hosts(host: str, given: list[str] | None) -> tuple[str, ...] | None:
    """The Host header names answered: --allowed-hosts, else the local names on loopback, else any (None)."""
    if given:
        return tuple(given)
    return LOCAL_HOSTS if is_loopback(host) else None


def model_entries(args: argparse.Namespace) -> list[ModelEntry]:
    from ldm.interfaces.server.generate import shipped_entries

    if not args.ckpt:
        if args.config:
            raise InvalidOptionError("--config needs --ckpt (the model's weights)")
        return shipped_entries()
    configs = args.config or []
    if len(configs) not in (0, 1, len(args.ckpt)):
        raise InvalidOptionError("give one --config for all --ckpt, or one per --ckpt in the same order")
    entries = []
    for i, ckpt in enumerate(args.ckpt):
        if not Path(ckpt).exists():
            raise MissingFileError(f"checkpoint not found: {ckpt}")
        config = (configs[0] if len(configs) == 1 else (configs[i] if configs else None)) or None  # "": detected
        entries.append(ModelEntry(Path(ckpt).stem if Path(ckpt).is_file() else Path(ckpt).name, ckpt, config))
    names = [e.title for e in entries]
    if len(set(names)) != len(names):
        raise InvalidOptionError("two --ckpt files have one name; A1111 clients pick models by file name")
    return entries


def serve(args: argparse.Namespace) -> int:
    check_exposure(args.host, args.api_auth, args.insecure)  # before any slow import or load
    import torch
    import uvicorn

    limits = ServerLimits(args.max_body_bytes, args.max_pixels, args.max_steps, args.max_images, args.max_job_seconds)
    load_args = argparse.Namespace(
        prediction=None, device=args.device, threads=args.threads, compile=False, embedding=[], lora=[],
        clip_skip=None, tiled_vae=None, vae=None, precision="fp32",
    )  # fmt: skip
    for path in args.controlnet or []:
        if not Path(path).exists():
            raise MissingFileError(f"ControlNet file not found: {path}")
    generator = Generator(model_entries(args), load_args, limits, args.controlnet)
    queue = JobQueue(args.queue_size, args.keep_results, args.max_job_seconds)
    threads = torch.get_num_threads()
    queue.start(setup=lambda: torch.set_num_threads(threads))  # the count is per thread; the worker's as the CLI's

    from ldm.interfaces.server.app import create_app

    app: Any = create_app(generator, queue, limits)
    guarded = Guard(app, allowed_hosts(args.host, args.allowed_hosts), args.api_auth, args.max_body_bytes)
    if args.cors_allow_origins:  # preflight requests carry no credentials: CORS answers them before the guard
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(
            guarded, allow_origins=args.cors_allow_origins, allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            log.info("stopping: the running job finishes, new and waiting ones are refused")
            queue.close()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        guarded, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
        access_log=args.verbose, timeout_graceful_shutdown=args.max_job_seconds + 5, server_header=False,
        limit_concurrency=args.queue_size * 4 + 16,
    )  # fmt: skip
    log.info("serving %s on http://%s:%d (A1111 API at /sdapi/v1, jobs at /ldm/v1/jobs)", generator.entry.title,
             args.host, args.port)  # fmt: skip
    try:
        Server(config).run()
    except (KeyboardInterrupt, Terminated):  # uvicorn re-raises the signal it stopped on, once it has stopped
        pass
    queue.close()
    queue.join(timeout=args.max_job_seconds + 5)
    log.info("stopped")
    return 0
