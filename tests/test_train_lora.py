"""`ldm train` with a `lora:` section: only the adapter trains and is exported, the base stays as it was,
the exported file reproduces the trained model through --lora, and the section's values are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from factories import write_training_base
from safetensors import safe_open

from ldm.adapters.lora import apply_lora
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import load_state_dict
from ldm.training.config_checks import TrainConfigError
from ldm.training.run import train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

QUIET = [
    "data.val_fraction=0",
    "logging.sample_every_n_steps=0",
    "logging.checkpoint_every_n_steps=0",
    "logging.csv=false",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=24)


@pytest.fixture(scope="module")
def base_file(shapes, tmp_path_factory) -> Path:
    """A base checkpoint of the tiny config's model (random weights: the LoRA learns on top of anything)."""
    cfg = tiny_train_config("ldm", shapes, tmp_path_factory.mktemp("unused"))
    return write_training_base(cfg, tmp_path_factory.mktemp("base"))


def lora_config(shapes, run_dir, base_file, *extra):
    return tiny_train_config(
        "ldm",
        shapes,
        run_dir,
        QUIET
        + [
            f"init.checkpoint={base_file}",
            "trainer.max_steps=8",
            "lora.rank=2",
            "lora.alpha=4",
            "training.lr=1e-2",
            *extra,
        ],
    )


def test_lora_run_trains_only_the_adapter_and_exports_it_alone(shapes, base_file, tmp_path):
    run_dir = tmp_path / "run"
    cfg = lora_config(shapes, run_dir, base_file, "lora.targets=[attn, ff]")
    module, trainer = train(cfg)
    assert trainer.global_step == 8 and module.ema is None
    # The base weights are the file's, bit for bit; the adapters moved.
    base = load_model(checkpoint=None, config={"model": cfg["model"]}, device="cpu")
    base.load_weights(base_file)
    trained = {k: v for k, v in module.model.state_dict().items() if ".adapters." not in k}
    for key, value in base.state_dict().items():
        assert torch.equal(trained[key], value), key
    ups = [p for n, p in module.model.named_parameters() if n.endswith("up.weight")]
    assert ups and all(p.abs().max() > 0 for p in ups)  # up starts at zero: non-zero means it learnt

    # The export: the adapter alone, with its config, and the base model's config beside it.
    weights = run_dir / "lora.safetensors"
    assert not (run_dir / "model.safetensors").exists() and (run_dir / "lora.yaml").is_file()
    state = load_state_dict(weights)
    assert state and all(k.endswith(("lora_down.weight", "lora_up.weight", ".alpha")) for k in state)
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["rank"]) == 2 and json.loads(meta["targets"]) == ["attn", "ff"]
    assert meta["base_model_sha256"] and meta["step"] == "8"

    # Base + the exported LoRA is the trained model, to float32 precision.
    apply_lora(base, weights, 1.0)
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([10, 700]), base.encode_text(["red", "blue"])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(base.unet(x, t, c), module.model.unet(x, t, c), rtol=1e-5, atol=1e-5)
    # And --lora takes the file on the command line.
    out = tmp_path / "gen"
    assert (
        cli_main(
            [
                "txt2img",
                "red square",
                "--config",
                str(run_dir / "lora.yaml"),
                "--ckpt",
                str(base_file),
                "--lora",
                f"{weights}:0.8",
                "--steps",
                "2",
                "--outdir",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "samples" / "00000.png").is_file()


def test_lora_run_resumes_to_the_same_adapter(shapes, base_file, tmp_path):
    a = lora_config(shapes, tmp_path / "a", base_file, "trainer.max_steps=4")
    module_a, _ = train(a)
    b = lora_config(shapes, tmp_path / "b", base_file, "trainer.max_steps=2", "logging.checkpoint_every_n_steps=2")
    train(b)
    assert cli_main(["train", "--resume", str(tmp_path / "b"), "trainer.max_steps=4"]) == 0
    ea, eb = load_state_dict(tmp_path / "a" / "lora.safetensors"), load_state_dict(tmp_path / "b" / "lora.safetensors")
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["lora.targets=[attn, wings]"], "lora.targets must be a list of"),
        (["lora.dropout=1.0"], "lora.dropout"),
        (["lora.rank=-1"], "lora.rank must be an integer >= 0"),
        (["lora.targets=[text]", "training.text_cache=100"], "training.text_cache=0"),
        (["lora.rnak=2"], "unknown key 'rnak' in lora"),
    ],
)
def test_bad_lora_sections_are_one_line_errors(shapes, tmp_path, extra, message):
    with pytest.raises(TrainConfigError, match=message):
        tiny_train_config("ldm", shapes, tmp_path / "run", ["lora.rank=2", *extra])


def test_lora_is_for_diffusion_runs_only(shapes, tmp_path):
    with pytest.raises(TrainConfigError, match="lora.rank applies to diffusion runs"):
        tiny_train_config("vae", shapes, tmp_path / "run", ["lora.rank=4"])


def test_inpainting_lora_widens_its_base_and_ships_as_a_derived_model(shapes, base_file, tmp_path):
    """The shipped inpainter's recipe in small: a text-to-image base widened to 9 input channels (the new ones
    start at zero), a LoRA plus the whole first convolution trained, and a file that loads over its base."""
    run_dir = tmp_path / "run"
    cfg = lora_config(
        shapes,
        run_dir,
        base_file,
        "model.params.conditioning_key=hybrid",
        "model.params.unet_config.params.in_channels=9",
        "init.widen_input=true",
        "lora.targets=[attn, conv]",
        "lora.train_whole=[unet.input_blocks.0.0]",
    )
    module, trainer = train(cfg)
    assert trainer.global_step == 8
    weights = run_dir / "lora.safetensors"
    state = load_state_dict(weights)
    whole = sorted(k for k in state if not k.endswith(("lora_down.weight", "lora_up.weight", ".alpha")))
    assert whole == ["unet.input_blocks.0.0.bias", "unet.input_blocks.0.0.weight"]
    assert state["unet.input_blocks.0.0.weight"].shape[1] == 9
    assert state["unet.input_blocks.0.0.weight"][:, 4:].abs().max() > 0  # the new channels learnt from zero

    # Loaded through a config that names its base, it is the trained model.
    config = yaml.safe_load((run_dir / "lora.yaml").read_text())
    config["base"] = base_file.name
    derived_yaml = base_file.parent / "inpaint.yaml"
    derived_yaml.write_text(yaml.safe_dump(config))
    loaded = load_model(derived_yaml, weights, device="cpu")
    assert loaded.kind.task == "inpaint" and loaded.identity["base_file"] == base_file.name
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(2, 9, 4, 4, generator=g), torch.tensor([10, 700]), loaded.encode_text(["red", "blue"])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, t, c), module.model.unet(x, t, c), rtol=1e-4, atol=1e-5)


def test_widen_input_needs_a_checkpoint(shapes, tmp_path):
    cfg = tiny_train_config("ldm", shapes, tmp_path / "run", QUIET + ["init.widen_input=true", "trainer.max_steps=1"])
    with pytest.raises(TrainConfigError, match="widen_input needs init.checkpoint"):
        train(cfg)
