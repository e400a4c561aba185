"""A corrupt image in a training set is skipped with a warning, the same way on every run and resume, up to a limit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import Subset

from ldm.data.folder import CaptionedImageFolder, UnreadableImageError
from ldm.interfaces.cli.main import main as cli_main
from ldm.training.data import SampleStream
from ldm.training.run import train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config
from ldm.training.unreadable import SkipUnreadable, TooManyUnreadableImagesError, UnreadableImages

FAST = [
    "logging.sample_every_n_steps=0",
    "logging.checkpoint_every_n_steps=0",
    "data.val_fraction=0",
    "logging.csv=false",
    "data.batch_size=2",
    "model.params.ddconfig.ch_mult=[1]",
    "training.disc_start=null",
]
TRUNCATED = "images/0003.png"
GARBAGE = "images/0005.png"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """Eight shapes, one PNG cut off half-way (the header reads, the pixels do not) and one not a PNG at all."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("damaged"), size=16, count=8)
    whole = (root / TRUNCATED).read_bytes()
    (root / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    (root / GARBAGE).write_bytes(b"\x89PNG not really" + bytes(range(64)))
    return root


def test_the_damaged_files_really_cannot_be_read(damaged):
    ds = CaptionedImageFolder(damaged, 16)
    for rel in (TRUNCATED, GARBAGE):
        with pytest.raises(UnreadableImageError, match=Path(rel).name):
            ds[ds.files.index(rel)]


def test_unreadable_items_are_replaced_by_the_next_readable_one_the_same_way_every_time(damaged):
    ds = CaptionedImageFolder(damaged, 16)
    bad = {ds.files.index(TRUNCATED), ds.files.index(GARBAGE)}
    stream = SampleStream(ds, batch_size=2, seed=1, unreadable=UnreadableImages(2))
    items = [stream.item(p) for p in range(3 * len(ds))]
    keys = [item["key"] for item in items]
    assert not {TRUNCATED, GARBAGE} & set(keys)
    assert all(
        item["caption"] == ds.captions[ds.files.index(item["key"])] for item in items
    )  # caption follows the image
    assert {index for _, index in stream.unreadable.skipped} == bad
    resumed = SampleStream(ds, batch_size=2, seed=1, start_batch=5, unreadable=UnreadableImages(2))
    assert [resumed.item(p)["key"] for p in range(10, 3 * len(ds))] == keys[10:]
    assert SkipUnreadable(ds, UnreadableImages(2))[min(bad)]["key"] == ds.files[min(bad) + 1]
    # One count for a training and a validation set, whose indices overlap: index 0 of the second is read.
    shared = UnreadableImages(2)
    first_bad = ds.files.index(TRUNCATED)
    shifted = Subset(ds, [*range(first_bad, len(ds)), *range(first_bad)])  # the damaged file at index 0
    assert shared.fetch(shifted, 0)[1]["key"] == ds.files[first_bad + 1]
    assert shared.fetch(ds, 0)[1]["key"] == ds.files[0]
    strict = SampleStream(ds, batch_size=2, seed=1, unreadable=UnreadableImages(1))
    with pytest.raises(TooManyUnreadableImagesError, match=r"max_unreadable=1 allows \(2\)"):
        for p in range(3 * len(ds)):
            strict.item(p)


def test_training_skips_the_damaged_images_with_a_warning_and_resumes(damaged, tmp_path, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="ldm.training.data"):
        train(tiny_train_config("vae", damaged, run_dir, [*FAST, "trainer.max_steps=6"]))  # 12 items: every image
    warnings = [r.getMessage() for r in caplog.records if "skipping an unreadable image" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert "(1 skipped, at most data.max_unreadable=10)" in warnings[0] and "(2 skipped" in warnings[1]
    assert all(any(Path(rel).name in w for w in warnings) for rel in (TRUNCATED, GARBAGE))  # each named once
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert cli_main(["train", "--resume", str(run_dir), "trainer.max_steps=8"]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.parametrize("workers", [0, 1])
def test_more_unreadable_images_than_allowed_stop_with_one_line(damaged, tmp_path, capsys, workers):
    config = tmp_path / "vae.yaml"
    config.write_text(
        yaml.safe_dump(tiny_train_config("vae", damaged, tmp_path / "run", [*FAST, "trainer.max_steps=6"]))
    )
    code = cli_main(["train", "--config", str(config), "data.max_unreadable=1", f"data.num_workers={workers}"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith("ldm train: error: more images could not be read than data.max_unreadable=1 allows (2)")
    assert "0005.png" in errors[0] or "0003.png" in errors[0]
