"""Device names -> torch devices, checked: what --device and the app's device setting mean; and how many CPU
threads a generation uses (--threads)."""

from __future__ import annotations

import logging
import math
import os

import torch

from ldm.core.errors import InvalidOptionError

log = logging.getLogger("ldm")


def resolve_device(name: str | torch.device) -> torch.device:
    """ "auto" (the default everywhere, ldm.core.defaults.DEVICE) is cuda if available, else cpu, said in the log."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device: %s (auto: %s)", device, "CUDA is available" if device.type == "cuda" else "no CUDA")
        return device
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvalidOptionError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidOptionError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidOptionError(
                f"device {name!r} requested but there are {torch.cuda.device_count()} CUDA devices"
            )
    elif device.type != "cpu":
        raise InvalidOptionError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX). Without them PyTorch emulates bf16
    convolutions, measured ~50x slower than fp32 on an AVX2-only EPYC: bf16 autocast is then a trap."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True  # not Linux: say nothing rather than guess
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def auto_training_precision(accelerator: str, cuda_available: bool, cuda_bf16: bool, cpu_bf16: bool) -> str:
    """What trainer.precision "auto" means: bf16 mixed precision where the hardware runs it natively (a CUDA GPU
    with bf16, or a CPU with AVX-512 BF16 / AMX: 2.2x the fp32 rate training the emoji autoencoder on one
    thread), fp16 mixed on older GPUs, else fp32 (emulated bf16 on an AVX2 CPU is ~50x slower)."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available)
    if on_gpu:
        return "bf16-mixed" if cuda_bf16 else "16-mixed"
    return "bf16-mixed" if cpu_bf16 else "32-true"


def warn_if_bf16_is_emulated(what: str, instead: str) -> None:
    """One warning, for training and sampling alike, where bf16 is asked of a CPU that only emulates it."""
    if not cpu_has_fast_bf16():
        log.warning(
            "%s on a CPU without AVX-512 BF16 or AMX: PyTorch emulates bf16 there, many times slower than fp32; use %s",
            what,
            instead,
        )


def training_precision(precision: str | int, accelerator: str) -> str | int:
    """trainer.precision as Lightning gets it: "auto" resolved (auto_training_precision, said in the log), and a
    warning where bf16 was asked for on a CPU that only emulates it."""
    cuda = torch.cuda.is_available()
    on_cpu = accelerator == "cpu" or not cuda
    if precision == "auto":
        precision = auto_training_precision(
            accelerator, cuda, cuda and torch.cuda.is_bf16_supported(), cpu_has_fast_bf16()
        )
        log.info("trainer.precision auto: %s", precision)
    elif on_cpu and str(precision).startswith("bf16"):
        warn_if_bf16_is_emulated(f"trainer.precision={precision}", "trainer.precision=32-true or auto")
    return precision


# Environment variables with which a user has already chosen the CPU thread count: then it is left alone.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_load(loadavg: str = "/proc/loadavg") -> float | None:
    """How many cores other work keeps busy: the larger of the one-minute load average and the threads runnable
    right now besides this one (the average lags by a minute; the count alone is one noisy instant). None where
    there is nothing to read (not Linux)."""
    try:
        with open(loadavg) as f:
            fields = f.read().split()
        return max(float(fields[0]), float(fields[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None


def sampling_threads(requested: int | None, cores: int, load: float | None, env: dict[str, str]) -> int | None:
    """How many CPU threads a generation uses: --threads if given; None (torch's own choice) if the user set
    OMP_NUM_THREADS / MKL_NUM_THREADS or there is no load figure; else the cores left idle by other work, at least 1.

    Why: OpenMP threads spin at every barrier. With as many threads as cores and one core busy elsewhere, each
    barrier waits for the thread that shares the busy core: the main command took 45-65 s instead of 4.4 s with
    one thread on a 2-core CPU (benchmarks/threads.py). A machine that has just gone quiet still shows load for a
    minute and gets fewer threads: that costs ~10%; the other way round costs 10x.
    """
    if requested is not None:
        if requested < 1:
            raise InvalidOptionError(f"--threads must be at least 1, got {requested}")
        return requested
    if load is None or any(env.get(name) for name in THREAD_ENV_VARS):
        return None
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def set_sampling_threads(requested: int | None = None) -> int:
    """Apply sampling_threads to torch (CPU generation in the CLI and the app) and return the thread count."""
    cores = torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    load = cpu_load()
    threads = sampling_threads(requested, cores, load, dict(os.environ))
    if threads is not None and threads != torch.get_num_threads():
        if requested is None:
            log.info(
                "cpu threads: %d of %d (load average %.1f: other work holds the rest; --threads sets it)",
                threads,
                cores,
                load,
            )
        torch.set_num_threads(threads)
    return torch.get_num_threads()
