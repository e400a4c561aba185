"""Contrastive CLIP training through `ldm train` (the emoji text encoder and judge): loss, run, export."""

import json

import pytest
import torch

from ldm.io.checkpoint import load_state_dict
from ldm.models.text_encoder import FrozenOpenCLIPEmbedder
from ldm.training.clip_module import warmup_cosine
from ldm.training.run import build_module, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learning_rate_warms_up_then_decays_to_zero():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_ldm_train_clip_learns_exports_and_feeds_the_text_encoder(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", size=16, count=36)
    cfg = tiny_train_config("clip", data, tmp_path / "run")
    module, trainer = train(cfg)
    assert trainer.global_step == 30
    metrics = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    losses = [
        float(row.split(",")[header.index("train/loss")])
        for row in metrics[1:]
        if row.split(",")[header.index("train/loss")]
    ]
    assert losses[-1] < losses[0]
    weights, config = tmp_path / "run" / "clip.safetensors", tmp_path / "run" / "clip.json"
    state = load_state_dict(weights)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    arch = json.loads(config.read_text())
    assert arch == cfg["model"]["params"]["arch"]
    # the exported text tower is what the diffusion model's frozen text encoder loads
    encoder = FrozenOpenCLIPEmbedder(arch, weights=str(weights))
    context = encoder(["red square", "blue circle"])
    assert context.shape == (2, 77, 32) and not torch.equal(context[0], context[1])
    # and a resumed run continues its step count instead of starting again
    _, again = train(tiny_train_config("clip", data, tmp_path / "run", ["trainer.max_steps=35"]), resume="last")
    assert again.global_step == 35


def test_clip_run_refuses_parts_of_a_diffusion_model(tmp_path):
    from ldm.training.config_checks import TrainConfigError

    cfg = tiny_train_config("clip", tmp_path, tmp_path / "run", ["init.vae=some.safetensors"])
    with pytest.raises(TrainConfigError, match="init.checkpoint"):
        build_module(cfg)
