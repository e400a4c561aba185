"""Training the tiny KL autoencoder: reconstruction improves, LPIPS from local files, discriminator schedule, export."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models.vgg import cfgs, make_layers

from ldm.core.config import instantiate, load_config
from ldm.io.checkpoint import CheckpointError, load_into, load_state_dict
from ldm.training.losses import LPIPS, PatchDiscriminator, hinge_d_loss
from ldm.training.run import build_data, build_module, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=24)


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory) -> tuple[Path, Path]:
    """Random weights in the two real file layouts (torchvision VGG16, lpips lin layers)."""
    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    features = make_layers(cfgs["D"])
    vgg = {f"features.{k}": v for k, v in features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(1)  # torchvision files carry a classifier; it is ignored
    torch.save(vgg, d / "vgg16.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    save_file(lins, str(d / "vgg_lin.safetensors"))
    return d / "vgg16.pth", d / "vgg_lin.safetensors"


def rec_error(module, images: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        return (module.vae.decode(module.vae.encode(images).mode()) - images).abs().mean().item()


def test_vae_learns_with_discriminator_and_exports(shapes, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_train_config(
        "vae",
        shapes,
        run_dir,
        [
            "trainer.max_steps=30",
            "training.disc_start=20",
            "data.batch_size=4",
            "logging.sample_every_n_steps=30",
            "logging.checkpoint_every_n_steps=0",
            "trainer.log_every_n_steps=5",
            "trainer.val_check_interval=15",
        ],
    )
    data = build_data(cfg)
    data.setup()
    images = torch.stack([data.train_set[i]["image"] for i in range(16)])
    torch.manual_seed(0)
    before = rec_error(build_module(cfg), images)
    module, trainer = train(cfg)
    after = rec_error(module, images)
    # global_step counts batches although two optimisers step after disc_start
    assert trainer.global_step == 30
    assert after < 0.6 * before, (before, after)

    rows = list(csv.DictReader(open(next((run_dir / "csv").glob("version_*/metrics.csv")))))
    d_steps = [int(r["step"]) for r in rows if r.get("train/d_loss")]
    assert d_steps and min(d_steps) >= 20
    assert any(r.get("train/rec") and int(r["step"]) < 20 for r in rows)
    assert any(r.get("val/rec") for r in rows)
    assert (run_dir / "samples" / "step-000030.png").is_file()

    # vae.safetensors (bare AutoencoderKL keys) + vae.yaml rebuild the trained autoencoder.
    vae = instantiate(load_config(run_dir / "vae.yaml")["model"])
    load_into(vae, load_state_dict(run_dir / "vae.safetensors"))
    assert torch.equal(vae.decoder.conv_out.weight, module.vae.decoder.conv_out.weight)

    # ... and initialise the VAE of a diffusion run.
    ldm_cfg = tiny_train_config("ldm", shapes, tmp_path / "ldm", [f"init.vae={run_dir / 'vae.safetensors'}"])
    ldm_module = build_module(ldm_cfg)
    assert torch.equal(ldm_module.model.vae.encoder.conv_in.weight, module.vae.encoder.conv_in.weight)


def test_vae_without_discriminator_uses_one_optimiser(shapes, tmp_path):
    cfg = tiny_train_config("vae", shapes, tmp_path, ["training.disc_start=null"])
    module = build_module(cfg)
    assert module.disc is None
    assert not isinstance(module.configure_optimizers(), list)


def test_lpips_from_local_files(lpips_files):
    lpips = LPIPS(*lpips_files)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert lpips(x, (x + 0.6 * torch.randn_like(x)).clamp(-1, 1)).mean() > d.mean()  # farther is larger
    y.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())  # a frozen metric


def test_lpips_rejects_wrong_files(lpips_files, tmp_path):
    vgg, lin = lpips_files
    with pytest.raises(CheckpointError, match="lin0.model.1.weight"):
        LPIPS(vgg, vgg)
    save_file({"weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="features"):
        LPIPS(tmp_path / "other.safetensors", lin)


def test_perceptual_loss_switch(shapes, tmp_path, lpips_files, caplog):
    with caplog.at_level(logging.INFO):
        off = build_module(tiny_train_config("vae", shapes, tmp_path))
    assert off.lpips is None and "perceptual loss off" in caplog.text
    on = build_module(
        tiny_train_config(
            "vae", shapes, tmp_path, [f"training.lpips_vgg={lpips_files[0]}", f"training.lpips_lin={lpips_files[1]}"]
        )
    )
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    _, _, logs = on.losses(x, torch.Generator().manual_seed(0))
    assert logs["perceptual"] > 0
    with pytest.raises(ValueError, match="both"):
        build_module(tiny_train_config("vae", shapes, tmp_path, [f"training.lpips_vgg={lpips_files[0]}"]))


def test_patch_discriminator_and_hinge():
    disc = PatchDiscriminator(3, 16, 2)
    logits = disc(torch.randn(2, 3, 16, 16))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)


def test_ddp_with_discriminator_finds_unused_parameters(shapes, tmp_path):
    from ldm.training.run import build_trainer

    overrides = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    with_disc = build_trainer(tiny_train_config("vae", shapes, tmp_path, overrides + ["training.disc_start=0"]))
    without = build_trainer(tiny_train_config("vae", shapes, tmp_path, overrides + ["training.disc_start=null"]))
    assert with_disc.strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert not without.strategy._ddp_kwargs.get("find_unused_parameters")
    # trainer.devices=2 alone (strategy "auto") is DDP too, and failed at the first step without this.
    auto = build_trainer(
        tiny_train_config(
            "vae", shapes, tmp_path, ["trainer.devices=2", "trainer.accelerator=cpu", "training.disc_start=0"]
        )
    )
    assert auto.strategy._ddp_kwargs.get("find_unused_parameters") is True
