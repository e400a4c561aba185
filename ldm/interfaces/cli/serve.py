"""ldm serve: an HTTP server holding one model, with A1111's API and a job API (ldm.interfaces.server)."""

from __future__ import annotations

import argparse

from ldm.core import defaults


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: A1111's API (/sdapi/v1) and a job API (/ldm/v1/jobs)",
        description="Serve one model over HTTP, on 127.0.0.1 unless --host says otherwise. A1111's API clients work "
        "unchanged; the job API submits, polls, fetches and cancels. One worker runs the jobs in order. Needs the "
        'serve extra: pip install "ldm[serve]".',
    )
    p.add_argument(
        "--host",
        default=defaults.SERVE_HOST,
        help="address to listen on; anything but loopback needs --api-auth or --insecure",
    )
    p.add_argument("--port", type=int, default=defaults.SERVE_PORT, help="port (A1111's own by default)")
    p.add_argument("--api-auth", metavar="USER:PASSWORD", default=None, help="require HTTP basic auth on every route")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without --api-auth: anyone who reaches the port can use it",
    )
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        metavar="NAME",
        default=None,
        help="Host header names answered (default: on loopback 127.0.0.1, localhost and ::1; else any)",
    )
    p.add_argument(
        "--cors-allow-origins",
        nargs="+",
        metavar="ORIGIN",
        default=None,
        help="web origins allowed to call the API from a browser (default: none, no CORS headers)",
    )
    p.add_argument(
        "--ckpt",
        action="append",
        default=None,
        metavar="FILE",
        help="a model to serve (repeat for several: the first is loaded, /sdapi/v1/options switches among "
        "them); default: the shipped models, the default one loaded",
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="YAML",
        help='the config of --ckpt: one for all, or one per --ckpt in order, "" for detected (default: detected)',
    )
    p.add_argument(
        "--controlnet",
        action="append",
        default=None,
        metavar="FILE",
        help="a ControlNet that requests may use (A1111's ControlNet units name it by file name); repeat for several",
    )
    p.add_argument("--device", default=defaults.DEVICE, help="auto (cuda if available, else cpu), cpu, cuda, ...")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: the cores other work leaves idle, unless OMP_NUM_THREADS is set)",
    )
    limits = p.add_argument_group("limits (each request is refused with a 4xx beyond them)")
    limits.add_argument(
        "--max-body-bytes", type=int, default=defaults.SERVE_MAX_BODY_BYTES, help="largest request body"
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=defaults.SERVE_MAX_PIXELS,
        help="largest image, asked for or sent, in width x height pixels",
    )
    limits.add_argument("--max-steps", type=int, default=defaults.SERVE_MAX_STEPS, help="most sampling steps")
    limits.add_argument(
        "--max-images",
        type=int,
        default=defaults.SERVE_MAX_IMAGES,
        help="most images per request (batch_size x n_iter)",
    )
    limits.add_argument(
        "--max-job-seconds",
        type=float,
        default=defaults.SERVE_MAX_JOB_SECONDS,
        help="a job running longer is stopped at its next step",
    )
    limits.add_argument(
        "--queue-size",
        type=int,
        default=defaults.SERVE_QUEUE_SIZE,
        help="jobs waiting at most; more are answered 503 with Retry-After",
    )
    limits.add_argument(
        "--keep-results",
        type=int,
        default=defaults.SERVE_KEEP_RESULTS,
        help="finished jobs kept for the job API's results",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ldm.core.errors import InvalidOptionError

    for name in ("port", "max_body_bytes", "max_pixels", "max_steps", "max_images", "queue_size", "keep_results"):
        if getattr(args, name) < 1:
            raise InvalidOptionError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.max_job_seconds > 0:
        raise InvalidOptionError(f"--max-job-seconds must be positive, got {args.max_job_seconds}")
    from ldm.interfaces.server.run import check_exposure, serve

    check_exposure(args.host, args.api_auth, args.insecure)  # refused before any slow import
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InvalidOptionError(
            f'ldm serve needs the serve extra ({exc.name} is missing): pip install "ldm[serve]"'
        ) from None

    return serve(args)
