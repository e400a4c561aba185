"""txt2img's options for a prompt file over many devices and machines (--devices, --num-nodes, --strategy,
--accelerator, --run-dir, --resume), kept apart from its other options: any of them sends `--from-file` through
Lightning (ldm.training.prompt_predict) into a run folder with a manifest (ldm.tasks.prompt_file)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.core.errors import InvalidOptionError
from ldm.io.images import check_writable
from ldm.tasks.prompt_file import PromptJob, check_run_folder, missing_jobs, new_manifest, plan_jobs, record_attempt

log = logging.getLogger("ldm")

DEVICE_OPTIONS = ("devices", "num_nodes", "strategy", "accelerator", "run_dir", "resume")
# ddp_spawn would pickle the model and the image-making function into each process: not offered.
STRATEGIES = ("auto", "ddp", "ddp_fork")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def add_devices_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "a prompt file over many devices and machines",
        "Any of these runs --from-file through Lightning into a run folder: images samples/pNNNNN-sNN.png "
        "(prompt, sample), each seeded as in a plain run, and manifest.json; the same file gives the same images "
        "whatever the number of processes (docs/cli.md, 'Many devices and machines').",
    )
    g.add_argument(
        "--devices",
        default=None,
        metavar="N|LIST|auto",
        help="devices (processes) per machine: a count, a list of device indices (0,2) or auto (default: 1)",
    )
    g.add_argument("--num-nodes", type=int, default=None, metavar="N", help="machines (default: 1)")
    g.add_argument(
        "--strategy",
        default=None,
        choices=STRATEGIES,
        help="how Lightning starts the processes: ddp starts the command again per device (or reads "
        "torchrun's and SLURM's), ddp_fork forks (not with CUDA) (default: auto)",
    )
    g.add_argument(
        "--accelerator",
        default=None,
        choices=ACCELERATORS,
        help="the device kind (default: --device's kind, auto with --device auto)",
    )
    g.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="the run folder: manifest.json and samples/ (default: --outdir); it holds one run",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="make the images of the run folder's manifest that are missing (after a lost node or a stop), "
        "none twice; the same prompt file and options",
    )


def on_devices(args: argparse.Namespace) -> bool:
    """Whether the run goes through Lightning (any of this group's options given)."""
    return any(getattr(args, name, None) is not None and getattr(args, name) is not False for name in DEVICE_OPTIONS)


def parse_devices(text: str | None) -> int | list[int] | str:
    """--devices as Lightning takes it: 2 -> 2, "0,2" -> [0, 2], auto -> "auto"."""
    if text is None:
        return 1
    if text == "auto":
        return text
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        count = int(text)
    except ValueError:
        raise InvalidOptionError(f"--devices {text!r}: give a count, a list of indices (0,1) or auto") from None
    if count < 1:
        raise InvalidOptionError(f"--devices must be at least 1, got {count}")
    return count


def accelerator_of(device: str) -> str:
    """--device's kind as a Lightning accelerator (auto, cpu, cuda, mps); an index is --devices' business."""
    kind = str(device).split(":")[0]
    return kind if kind in ACCELERATORS else "auto"


@dataclass
class DevicesRun:
    """A prompt-file run's Trainer (built before the model loads: it says which device this process has) and plan."""

    trainer: Any
    run_dir: Path
    samples: Path
    jobs: list[PromptJob]
    progress: Any

    @property
    def device(self) -> str:
        return str(self.trainer.strategy.root_device)


def devices_run(args: argparse.Namespace, prompt_count: int) -> DevicesRun:
    """Check the options and build the Trainer; an unwritable run folder fails before the model loads."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from ldm.training.prompt_predict import FileProgress, ImageFileWriter, prompt_file_trainer

    if not args.from_file:
        raise InvalidOptionError(
            "--devices, --num-nodes, --strategy, --accelerator, --run-dir and --resume run a "
            "prompt file: give --from-file"
        )
    if args.num_nodes is not None and args.num_nodes < 1:
        raise InvalidOptionError(f"--num-nodes must be at least 1, got {args.num_nodes}")
    devices = parse_devices(args.devices)
    if (rank_zero_only.rank or 0) > 0:  # every process runs the command; rank 0 speaks for them
        log.setLevel(logging.WARNING)
    run_dir = Path(args.run_dir or args.outdir)
    samples = run_dir / "samples"
    check_writable(samples)
    jobs = plan_jobs(prompt_count, args.batch_size, args.n_iter, args.seed)
    progress = FileProgress(samples, [name for job in jobs for name in job.names()], enabled=not args.no_progress)
    trainer = prompt_file_trainer(
        args.accelerator or accelerator_of(args.device),
        devices,
        args.num_nodes or 1,
        args.strategy or "auto",
        [ImageFileWriter(samples), progress],
    )
    return DevicesRun(trainer, run_dir, samples, jobs, progress)


def run_prompt_file(
    run: DevicesRun,
    args: argparse.Namespace,
    model: Any,
    prompts: list[str],
    make: Callable[[str, int, int], Iterable[tuple[Any, dict[str, Any]]]],
    settings: dict[str, Any],
) -> int:
    """Make the file's missing images on every process. make(prompt, n, seed) -> (image, its settings) pairs is what a
    plain run calls per prompt; `settings` are those all images share (the manifest's)."""
    from ldm.training.prompt_predict import PromptFileModule, predict_file

    settings = {k: v for k, v in settings.items() if k != "prompt"}  # each image's own, in the images' list
    settings = {**settings, "n_samples": args.batch_size, "n_iter": args.n_iter, "seed": args.seed}
    manifest = new_manifest(prompts, run.jobs, settings)
    old = check_run_folder(run.run_dir, manifest, args.resume)  # every process checks; none writes yet
    total = sum(job.count for job in run.jobs)

    def prepare(world_size: int) -> list[PromptJob]:  # rank 0 only
        todo = missing_jobs(run.samples, run.jobs)
        record_attempt(run.run_dir, old or manifest, world_size, len(todo))
        log.info(
            "%d of %d image(s) to make (%d job(s)) on %d process(es) into %s",
            sum(j.count for j in todo),
            total,
            len(todo),
            world_size,
            run.samples,
        )
        return todo

    def make_job(job: PromptJob) -> list[tuple[str, Any, dict[str, Any]]]:
        made = make(prompts[job.prompt_index], job.count, job.seed)
        return [(name, image, image_settings) for name, (image, image_settings) in zip(job.names(), made)]

    predict_file(run.trainer, PromptFileModule(model, make_job, prepare), run.progress)
    if run.trainer.is_global_zero:
        still = missing_jobs(run.samples, run.jobs)
        if still:
            log.warning("%d job(s) of %s have missing images: --resume makes them", len(still), run.run_dir)
            return 1
        log.info("all %d image(s) of the file are in %s", total, run.samples)
    return 0
