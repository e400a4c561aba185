"""Training config handling: overrides with YAML values, defaults, and one-line errors for wrong settings."""

from __future__ import annotations

import pytest

from ldm.training.config import apply_overrides, is_autoencoder, load_train_config, resolve
from ldm.training.config_checks import TrainConfigError
from ldm.training.tiny import TINY_CONFIGS


def test_overrides_are_yaml_typed():
    cfg = load_train_config(
        TINY_CONFIGS["ldm"],
        [
            "trainer.max_steps=7",
            "training.lr=2e-5",
            "training.ema_decay=null",
            "logging.sample_prompts=[a b, c]",
            "data.flip=true",
            "trainer.precision=bf16-mixed",
            "trainer.new_arg=3",
        ],
    )
    assert cfg["trainer"]["max_steps"] == 7
    assert cfg["training"]["lr"] == pytest.approx(2e-5)
    assert cfg["training"]["ema_decay"] is None
    assert cfg["logging"]["sample_prompts"] == ["a b", "c"]
    assert cfg["data"]["flip"] is True and cfg["trainer"]["precision"] == "bf16-mixed"
    assert cfg["trainer"]["new_arg"] == 3  # trainer keys go to Lightning, which checks them
    assert cfg["training"]["weight_decay"] == 0.0  # a default filled in
    assert not is_autoencoder(cfg) and is_autoencoder(load_train_config(TINY_CONFIGS["vae"]))


def test_nested_override_creates_model_params():
    cfg = apply_overrides({"model": {"target": "x"}}, ["model.params.unet_config.params.model_channels=64"])
    assert cfg["model"]["params"]["unet_config"]["params"]["model_channels"] == 64


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lr=1", "unknown section 'optimizer'"),
        ("training.learning_rate=1", "unknown key"),
        ("trainer.gradient_clip_val=1", "training.grad_clip"),
        ("trainer.callbacks=[]", "logging"),
        ("training.cond_dropout=1.5", "cond_dropout"),
        ("training.scale_factor=-1", "scale_factor"),
        ("training.rec_loss=l3", "rec_loss"),
        ("training.text_cache=-1", "text_cache"),
        ("training.text_cache=yes", "text_cache"),
        ("max_steps", "section.key=value"),
        ("trainer.max_steps=[1", "not valid YAML"),
        # Values that used to fail deep inside torch or Lightning, with a traceback.
        ("logging.checkpoint_every_n_steps=-5", r"logging.checkpoint_every_n_steps must be an integer >= 0 \(0: off\)"),
        ("logging.sample_every_n_steps=-1", "logging.sample_every_n_steps"),
        ("training.lr=-1", "training.lr must be a positive learning rate"),
        ("training.lr=.nan", "training.lr"),
        ("training.betas=[0.9]", "training.betas must be two numbers"),
        ("training.grad_clip=0", "training.grad_clip"),
        ("data.batch_size=x", "data.batch_size must be an integer >= 1, got 'x'"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.val_fraction=abc", "data.val_fraction"),
        ("data.val_fraction=1", "data.val_fraction must be in"),
        ("data.max_unreadable=-1", "data.max_unreadable must be an integer >= 0"),
        ("data.max_unreadable=0.5", "data.max_unreadable"),
    ],
)
def test_bad_settings_fail_with_one_line(override, message):
    with pytest.raises(TrainConfigError, match=message) as info:
        load_train_config(TINY_CONFIGS["ldm"], [override])
    assert "\n" not in str(info.value)


def test_unknown_top_level_section_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {target: ldm.models.vae.AutoencoderKL}\ntraining: {lr: 1e-4}\n")
    assert load_train_config(path)["training"]["lr"] == 1e-4  # a float, although YAML 1.1 says string
    path.write_text("model: {target: ldm.models.vae.AutoencoderKL}\noptim: {lr: 1}\n")
    with pytest.raises(TrainConfigError, match="unknown config section"):
        load_train_config(path)
    with pytest.raises(TrainConfigError, match="needs a 'model'"):
        resolve({"training": {}})
    with pytest.raises(TrainConfigError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors(tmp_path, capsys):
    from ldm.interfaces.cli.main import main

    assert main(["train", "--config", str(TINY_CONFIGS["ldm"]), "bogus.key=1"]) == 2
    assert "unknown section 'bogus'" in capsys.readouterr().err
    assert main(["train", "--config", str(TINY_CONFIGS["ldm"]), f"logging.run_dir={tmp_path}", "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(TINY_CONFIGS["ldm"]), f"logging.run_dir={tmp_path / 'run'}", "data.root=null"])
        == 2
    )
    assert "data.root" in capsys.readouterr().err


def test_bf16_speed_is_known_from_the_cpu_flags(tmp_path):
    from ldm.core.devices import cpu_has_fast_bf16

    plain, fast = tmp_path / "plain", tmp_path / "fast"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n")
    fast.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert not cpu_has_fast_bf16(str(plain)) and cpu_has_fast_bf16(str(fast))
    assert cpu_has_fast_bf16(str(tmp_path / "missing"))  # unknown: no warning


@pytest.mark.parametrize(
    "accelerator, cuda, cuda_bf16, cpu_bf16, expected",
    [
        ("cpu", False, False, True, "bf16-mixed"),  # AVX-512 BF16 / AMX
        ("cpu", False, False, False, "32-true"),  # AVX2: emulated bf16 is a trap
        ("cpu", True, True, False, "32-true"),  # a GPU in the box does not change a CPU run
        ("auto", True, True, False, "bf16-mixed"),
        ("gpu", True, False, False, "16-mixed"),  # pre-Ampere GPUs
        ("auto", False, False, False, "32-true"),
    ],
)
def test_auto_precision_follows_the_hardware(accelerator, cuda, cuda_bf16, cpu_bf16, expected):
    from ldm.core.devices import auto_training_precision

    assert auto_training_precision(accelerator, cuda, cuda_bf16, cpu_bf16) == expected


def test_trainer_resolves_auto_precision(tmp_path, monkeypatch):
    import ldm.core.devices
    from ldm.training.run import build_trainer

    cfg = load_train_config(
        TINY_CONFIGS["ldm"],
        [f"logging.run_dir={tmp_path / 'run'}", "trainer.precision=auto", "trainer.accelerator=cpu"],
    )
    for fast, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(ldm.core.devices, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert build_trainer(cfg).precision == expected
