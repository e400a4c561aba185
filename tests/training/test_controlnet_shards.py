"""A ControlNet's training triples (image, control image, caption) in WebDataset shards: the control image is the
sample's KEY.control.png (controlnet.control_key), read, cropped and flipped with its image, and trained on."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ldm.data.folder import UnreadableImageError
from ldm.data.shards import CONTROL_KEY, decode_sample, expand_shards, raw_samples, write_shards
from ldm.io.control_images import control_image
from ldm.training.config_checks import TrainConfigError
from ldm.training.run import build_data, build_module, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

CONTROL = ["controlnet.train=true", "data.val_fraction=0", "logging.sample_every_n_steps=0", "logging.csv=false"]


@pytest.fixture(scope="module")
def triples(tmp_path_factory) -> tuple[Path, Path, str]:
    """(folder, its control images' folder, shards of both): scribbles, which no preprocess setting would remake."""
    tmp = tmp_path_factory.mktemp("triples")
    folder = make_shapes_dataset(tmp / "folder", size=16, count=12)
    controls = tmp / "controls"
    for path in folder.rglob("*.png"):
        target = controls / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        control_image(Image.open(path), "scribble").save(target)
    return folder, controls, write_shards(folder, tmp / "shards", 5, control_root=controls)


def shard_config(folder: Path, pattern: str, run: Path, *extra: str) -> dict:
    shards = ["data.root=null", f"data.shards={pattern}", "data.remainder=wrap", "data.batch_size=6"]
    return tiny_train_config("ldm", folder, run, [*CONTROL, *shards, f"controlnet.control_key={CONTROL_KEY}", *extra])


def stored_control(controls: Path, key: str) -> torch.Tensor:
    """The control image written for a shard sample's key ("...tar#000000003", maybe "#flip"), [3, H, W] in [0, 1]."""
    index = int(key.split("#")[1])
    image = Image.open(controls / "images" / f"{index:04d}.png").convert("RGB")
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return tensor.flip(-1) if key.endswith("#flip") else tensor


def test_the_control_image_travels_in_the_shard_with_its_image_and_is_trained_on(triples, tmp_path):
    folder, controls, pattern = triples
    first = expand_shards(pattern)[0]
    with tarfile.open(first) as tar:
        assert f"000000000.{CONTROL_KEY}" in tar.getnames()
    cfg = shard_config(folder, pattern, tmp_path / "run", "data.flip=true")
    torch.manual_seed(0)
    module = build_module(cfg)
    data = build_data(cfg)
    batch = next(iter(DataLoader(data.stream(), batch_size=6)))
    hints = module.hints(batch)
    assert hints.shape == batch["image"].shape
    flipped = [key.endswith("#flip") for key in batch["key"]]
    assert any(flipped) and not all(flipped)  # both cases met: a flipped image's control is flipped with it
    for hint, key in zip(hints, batch["key"]):
        assert torch.equal(hint, stored_control(controls, key))
    assert torch.isfinite(module.loss(batch, torch.Generator().manual_seed(0)))
    _, trainer = train(shard_config(folder, pattern, tmp_path / "trained", "trainer.max_steps=2"))
    assert trainer.global_step == 2 and (tmp_path / "trained" / "controlnet.safetensors").is_file()


def test_a_sample_without_its_control_image_is_unreadable_and_settings_that_clash_are_refused(triples, tmp_path):
    folder, _, pattern = triples
    sample = next(raw_samples(expand_shards(pattern)[0]))
    assert decode_sample(sample, 16, control_key=CONTROL_KEY)["control"].shape == (3, 16, 16)
    del sample[CONTROL_KEY]
    with pytest.raises(UnreadableImageError, match=r"no control image \.control\.png \(controlnet\.control_key\)"):
        decode_sample(sample, 16, control_key=CONTROL_KEY)
    with pytest.raises(TrainConfigError, match="controlnet.control_key reads control images from data.shards"):
        tiny_train_config("ldm", folder, tmp_path / "run", [*CONTROL, f"controlnet.control_key={CONTROL_KEY}"])
    with pytest.raises(TrainConfigError, match="controlnet.control_root is a folder beside data.root"):
        shard_config(folder, pattern, tmp_path / "run", f"controlnet.control_root={folder}")
