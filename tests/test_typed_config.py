"""Typed training config: one set of defaults per run kind, unknown keys named with the closest valid one."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from factories import tiny_config

from ldm.core.config import ConfigError, instantiate
from ldm.training.config import (
    AutoencoderTraining,
    ClipTraining,
    DiffusionTraining,
    load_train_config,
    resolve,
    training_section,
)
from ldm.training.config_checks import TrainConfigError
from ldm.training.tiny import TINY_CONFIGS

OLD_CHECKPOINT = Path(__file__).parent / "data" / "vae-run-e4731bb.ckpt"
# config.yaml as main wrote it at fb24788 (after the hardening merge, before the typed sections): every kind's
# training keys, with the shared defaults, and data.max_unreadable (set to 3 here).
MAIN_WRITTEN = {kind: Path(__file__).parent / "data" / f"tiny-{kind}-config-fb24788.yaml" for kind in ("ldm", "vae")}


def test_each_kind_gets_its_own_optimiser_defaults():
    vae = {"model": {"target": "ldm.models.vae.AutoencoderKL"}, "data": {"root": "x"}}
    t = resolve(vae)["training"]
    assert (t["lr"], t["betas"]) == (4.5e-6, [0.5, 0.9])  # the autoencoder's, not the diffusion model's
    clip = resolve({"model": {"target": "ldm.models.text_encoder.OpenCLIP"}})["training"]
    assert (clip["lr"], clip["weight_decay"], clip["betas"]) == (1e-3, 0.1, [0.9, 0.98])
    ldm = load_train_config(TINY_CONFIGS["ldm"])
    assert ldm["training"]["betas"] == [0.9, 0.999] and isinstance(training_section(ldm), DiffusionTraining)


@pytest.mark.parametrize(
    "module_path, section",
    [
        ("ldm.training.vae_module:AutoencoderModule", AutoencoderTraining),
        ("ldm.training.clip_module:ClipModule", ClipTraining),
        ("ldm.training.ldm_module:LatentDiffusionModule", DiffusionTraining),
    ],
)
def test_module_constructors_share_the_config_defaults(module_path, section):
    import importlib

    module, name = module_path.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    defaults = section()
    for f in fields(section):
        if f.name in params:
            expected = getattr(defaults, f.name)
            got = params[f.name].default
            assert (list(got) if f.name == "betas" else got) == expected, f.name


def test_unknown_keys_name_the_closest_and_the_kind():
    with pytest.raises(TrainConfigError, match="unknown key 'lrr' in training; did you mean 'lr'") as info:
        load_train_config(TINY_CONFIGS["ldm"], ["training.lrr=1"])
    assert "\n" not in str(info.value)
    with pytest.raises(TrainConfigError, match="'ema_decay' in training \\(a setting of diffusion runs"):
        load_train_config(TINY_CONFIGS["vae"], ["training.ema_decay=0.9"])
    with pytest.raises(TrainConfigError, match="did you mean 'batch_size'"):
        load_train_config(TINY_CONFIGS["ldm"], ["data.batchsize=2"])


def test_a_checkpoints_older_all_kinds_training_section_still_resolves():
    old = torch.load(OLD_CHECKPOINT, weights_only=True)["ldm"]["config"]
    assert "ema_decay" in old["training"]  # written when every run carried every kind's keys
    cfg = resolve(old, stored=True)
    assert "ema_decay" not in cfg["training"] and cfg["training"]["lr"] == old["training"]["lr"]
    with pytest.raises(TrainConfigError, match="ema_decay"):
        resolve(old)  # the same keys written by hand in a new YAML are a mistake


@pytest.mark.parametrize("kind, section", [("ldm", DiffusionTraining), ("vae", AutoencoderTraining)])
def test_a_config_main_wrote_before_the_typed_sections_still_resolves(kind, section):
    old = yaml.safe_load(MAIN_WRITTEN[kind].read_text())
    assert {"ema_decay", "rec_loss", "max_unreadable"} <= set(old["training"]) | set(old["data"])
    cfg = resolve(old, stored=True)  # as a resumed run reads it from its checkpoint
    assert isinstance(training_section(cfg), section)
    own = {f.name for f in fields(section)}
    assert set(cfg["training"]) == own
    # the values the run started with, not the kind's new defaults (main wrote an autoencoder's betas as 0.9/0.999)
    kept = own & set(old["training"])
    assert {k: cfg["training"][k] for k in kept} == {k: old["training"][k] for k in kept}
    # training keys added since (label_dropout, ...) come with their defaults
    assert {k: cfg["training"][k] for k in own - kept} == {k: getattr(section(), k) for k in own - kept}
    # its data keys keep their values; keys added since (shards, ...) come with their defaults
    assert {k: cfg["data"][k] for k in old["data"]} == old["data"] and cfg["data"]["max_unreadable"] == 3
    assert cfg["data"]["shards"] is None
    assert cfg["logging"] == old["logging"] and cfg["trainer"] == old["trainer"]


def test_model_config_typos_fail_naming_the_closest_parameter():
    cfg = tiny_config()
    cfg["model"]["params"]["unet_config"]["params"]["model_channel"] = 32
    with pytest.raises(ConfigError, match="unknown parameter 'model_channel'; did you mean 'model_channels'"):
        instantiate(cfg["model"])
    cfg = tiny_config()
    cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["z_channel"] = 4
    with pytest.raises(ConfigError, match="ddconfig: unknown parameter 'z_channel'"):
        instantiate(cfg["model"])
    cfg = tiny_config(timestep=10)
    with pytest.raises(ConfigError, match="did you mean 'timesteps'"):
        instantiate(cfg["model"])
