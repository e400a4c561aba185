"""A prompt file as a run of its own: which images it makes, what each is called and seeded with, and the manifest
that lets a run over many processes (ldm.training.prompt_predict) be resumed after a lost node.

Image `t` of prompt `k` is `samples/p{k:05d}-s{t:02d}.png`. Its seed is the one a plain `ldm txt2img --from-file`
run gives it (iteration j = t // n_samples is the outer loop there): seed + (j * prompts + k) * n_samples +
t % n_samples. A job is one prompt's n_samples images of one iteration, made in one forward pass (chunked only
by memory, as a plain run is), so the images do not depend on how many processes share the file, nor on which.
Nothing here knows of Lightning or of processes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from ldm.core.errors import LdmError
from ldm.io.images import write_text_output

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class RunFolderError(LdmError, ValueError):
    """A run folder that holds another run, or a manifest that cannot be read."""


class PromptJob(NamedTuple):
    """One forward pass: `count` images of prompt `prompt_index`, samples first_sample.., seeds seed.."""

    prompt_index: int
    first_sample: int
    count: int
    seed: int

    def names(self) -> list[str]:
        return [image_name(self.prompt_index, self.first_sample + i) for i in range(self.count)]


def image_name(prompt_index: int, sample: int) -> str:
    return f"p{prompt_index:05d}-s{sample:02d}.png"


def plan_jobs(prompt_count: int, n_samples: int, n_iter: int, seed: int) -> list[PromptJob]:
    """Every job of the file, in the order a plain run makes them (iterations outermost)."""
    return [
        PromptJob(k, j * n_samples, n_samples, seed + (j * prompt_count + k) * n_samples)
        for j in range(n_iter)
        for k in range(prompt_count)
    ]


def new_manifest(prompts: list[str], jobs: list[PromptJob], settings: dict[str, Any]) -> dict[str, Any]:
    """What the run is: its prompts, the settings every image shares, and each image's name, indices and seed."""
    images = [
        {"name": name, "prompt": job.prompt_index, "sample": job.first_sample + i, "seed": job.seed + i}
        for job in jobs
        for i, name in enumerate(job.names())
    ]
    # Through JSON once, so that a manifest read back compares equal to a new one (tuples, paths, numbers).
    settings = json.loads(json.dumps(settings, default=str, sort_keys=True))
    return {"version": MANIFEST_VERSION, "prompts": prompts, "settings": settings, "images": images, "attempts": []}


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise RunFolderError(f"{path} is not a prompt-file manifest of this version ({MANIFEST_VERSION})")
    return manifest


def check_run_folder(run_dir: Path, manifest: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The folder's manifest, if any, after checking that this run may use the folder: a new run needs a folder
    without a manifest (another run's images are never mixed in), a resumed one the same prompts and settings."""
    old = read_manifest(run_dir)
    if old is None:
        return None
    where = Path(run_dir) / MANIFEST
    if not resume:
        raise RunFolderError(f"{where} exists: --resume fills in that run's missing images, or give another --run-dir")
    if old.get("prompts") != manifest["prompts"]:
        raise RunFolderError(f"--resume: the prompt file differs from the one {where} was made from")
    if old.get("settings") != manifest["settings"]:
        old_settings, new_settings = old.get("settings") or {}, manifest["settings"]
        keys = old_settings.keys() | new_settings.keys()
        differ = sorted(k for k in keys if old_settings.get(k) != new_settings.get(k))
        raise RunFolderError(f"--resume: {', '.join(differ)} differ(s) from the run in {where}; give the same options")
    if old.get("images") != manifest["images"]:
        raise RunFolderError(f"--resume: the images planned differ from those of {where}; give the same options")
    return old


def missing_jobs(samples: Path, jobs: list[PromptJob]) -> list[PromptJob]:
    """The jobs with an image not yet in `samples` (a job cut short by a kill is made again whole: one forward pass
    per job keeps each image what it would have been; only its missing images are written)."""
    present = {p.name for p in Path(samples).glob("p*-s*.png")} if Path(samples).is_dir() else set()
    return [job for job in jobs if not set(job.names()) <= present]


def record_attempt(run_dir: Path, manifest: dict[str, Any], processes: int, to_make: int) -> dict[str, Any]:
    """Write the manifest (atomically) with this attempt added: when, on how many processes, how many jobs."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {
        **manifest,
        "attempts": [*manifest["attempts"], {"started": started, "processes": processes, "jobs": to_make}],
    }
    write_text_output(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest
