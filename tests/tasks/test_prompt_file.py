"""A prompt file's plan and manifest (ldm.tasks.prompt_file): each image's name and seed depend only on its prompt and
sample (and the run's options), are those a plain `ldm txt2img --from-file` run gives it, and a run folder is
resumed only by the run it holds."""

from __future__ import annotations

import json

import pytest

from ldm.tasks.prompt_file import (
    MANIFEST,
    RunFolderError,
    check_run_folder,
    missing_jobs,
    new_manifest,
    plan_jobs,
    record_attempt,
)


def plain_run_seeds(prompt_count: int, n_samples: int, n_iter: int, seed: int) -> dict[tuple[int, int], int]:
    """(prompt, sample) -> seed as ldm/interfaces/cli/txt2img.py's loop gives them: seed grows by n_samples per
    prompt, iterations outermost, sample t of a prompt being iteration t // n_samples."""
    seeds = {}
    for j in range(n_iter):
        for k in range(prompt_count):
            for s in range(n_samples):
                seeds[(k, j * n_samples + s)] = seed
                seed += 1
    return seeds


@pytest.mark.parametrize("prompt_count, n_samples, n_iter, seed", [(5, 1, 1, 0), (3, 2, 3, 42), (4, 3, 2, -9)])
def test_each_image_has_the_plain_runs_seed_and_one_name(prompt_count, n_samples, n_iter, seed):
    jobs = plan_jobs(prompt_count, n_samples, n_iter, seed)
    manifest = new_manifest([f"p{k}" for k in range(prompt_count)], jobs, {})
    got = {(image["prompt"], image["sample"]): image["seed"] for image in manifest["images"]}
    assert got == plain_run_seeds(prompt_count, n_samples, n_iter, seed)
    names = [image["name"] for image in manifest["images"]]
    assert len(set(names)) == len(names) == prompt_count * n_samples * n_iter
    assert all(job.count == n_samples for job in jobs)  # one forward pass: one prompt's samples of one iteration


def test_missing_jobs_are_those_with_any_image_absent(tmp_path):
    jobs = plan_jobs(3, 2, 1, 0)
    for name in ["p00000-s00.png", "p00000-s01.png", "p00001-s00.png"]:  # p1 cut short, p2 not begun
        (tmp_path / name).write_bytes(b"")
    assert missing_jobs(tmp_path, jobs) == jobs[1:]
    assert missing_jobs(tmp_path / "none", jobs) == jobs


def test_a_run_folder_is_resumed_only_by_its_own_run(tmp_path):
    jobs = plan_jobs(2, 1, 1, 0)
    manifest = new_manifest(["a", "b"], jobs, {"steps": 4, "size": (16, 16)})
    assert check_run_folder(tmp_path, manifest, resume=False) is None  # a new folder
    record_attempt(tmp_path, manifest, 2, len(jobs))
    with pytest.raises(RunFolderError, match="exists: --resume"):
        check_run_folder(tmp_path, manifest, resume=False)
    old = check_run_folder(tmp_path, manifest, resume=True)  # tuples etc. compare as read back
    assert old["attempts"][0]["processes"] == 2
    with pytest.raises(RunFolderError, match="prompt file differs"):
        check_run_folder(tmp_path, new_manifest(["a", "c"], jobs, {"steps": 4, "size": (16, 16)}), resume=True)
    with pytest.raises(RunFolderError, match="steps differ"):
        check_run_folder(tmp_path, new_manifest(["a", "b"], jobs, {"steps": 5, "size": (16, 16)}), resume=True)
    (tmp_path / MANIFEST).write_text(json.dumps({"version": 99}))
    with pytest.raises(RunFolderError, match="not a prompt-file manifest"):
        check_run_folder(tmp_path, manifest, resume=True)
