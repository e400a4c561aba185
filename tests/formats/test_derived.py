"""Models shipped as a change to another (ldm.formats.derived): widened inputs, whole tensors and LoRA over a base file."""  # noqa: E501

from __future__ import annotations

import pytest
import torch
import yaml
from factories import tiny_inpaint_config, tiny_model, write_tiny_model_files

from ldm.core.config import instantiate
from ldm.core.errors import MissingFileError
from ldm.formats.derived import widen_unet_input
from ldm.formats.load import load_model
from ldm.io.checkpoint import CheckpointError, load_into, save_state_dict


def widened(base):
    model = instantiate(tiny_inpaint_config()["model"]).eval()
    load_into(model, widen_unet_input(base.state_dict(), model.state_dict()))
    return model


def test_a_widened_unet_computes_what_its_base_did():
    base = tiny_model()
    model = widened(base)
    g = torch.Generator().manual_seed(0)
    x, extra = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    t, c = torch.tensor([5, 900]), base.encode_text(["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(model.unet(torch.cat([x, extra], 1), t, c), base.unet(x, t, c))


def test_widening_refuses_what_is_not_more_input_channels():
    base = tiny_model()
    with pytest.raises(Exception, match="cannot widen"):
        widen_unet_input(base.state_dict(), base.state_dict())


def derived_files(tmp_path, whole: dict, lora: dict | None = None, base: str = "tiny.safetensors"):
    write_tiny_model_files(tmp_path)
    cfg = tiny_inpaint_config()
    cfg["base"] = base
    (tmp_path / "inpaint.yaml").write_text(yaml.safe_dump(cfg))
    save_state_dict({**whole, **(lora or {})}, tmp_path / "inpaint.safetensors")
    return tmp_path / "inpaint.yaml", tmp_path / "inpaint.safetensors"


def test_a_derived_model_is_its_base_with_its_own_tensors_and_lora_merged(tmp_path):
    base = tiny_model()
    model = widened(base)
    g = torch.Generator().manual_seed(1)
    first = {
        k: torch.randn(v.shape, generator=g) * 0.1
        for k, v in model.state_dict().items()
        if k.startswith("unet.input_blocks.0.0.")
    }
    target = "unet.output_blocks.0.0.out_layers.3"  # a res-block convolution of the "conv" group
    conv = model.get_submodule(target)
    down, up = (
        torch.randn(2, conv.in_channels, 3, 3, generator=g) * 0.1,
        torch.randn(conv.out_channels, 2, 1, 1, generator=g) * 0.1,
    )
    lora = {f"{target}.lora_down.weight": down, f"{target}.lora_up.weight": up, f"{target}.alpha": torch.tensor(4.0)}
    config, weights = derived_files(tmp_path, first, lora)
    loaded = load_model(config, weights, device="cpu")

    expected = model.state_dict()
    expected.update(first)
    expected[f"{target}.weight"] = expected[f"{target}.weight"] + 2.0 * (up.flatten(1) @ down.flatten(1)).reshape(
        conv.weight.shape
    )
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    assert loaded.identity["base_file"] == "tiny.safetensors" and loaded.identity["model_file"] == "inpaint.safetensors"


def test_derived_files_fail_in_one_line(tmp_path):
    config, weights = derived_files(tmp_path, {"unet.no_such.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="tensors the model does not have, e.g. unet.no_such.weight"):
        load_model(config, weights, device="cpu")
    config, weights = derived_files(tmp_path, {}, base="missing.safetensors")
    with pytest.raises(MissingFileError, match="missing.safetensors"):
        load_model(config, weights, device="cpu")
    # The base alone cannot fill a widened first convolution: the strict check names it.
    config, weights = derived_files(tmp_path, {})
    with pytest.raises(CheckpointError, match="input_blocks.0.0.weight"):
        load_model(config, weights, device="cpu")


def test_a_part_in_its_own_file_goes_over_the_base(tmp_path):
    """The upscaler's shape: its autoencoder shipped alone (`parts:`), its file holding neither it nor the base's."""
    base = tiny_model()
    model = widened(base)
    g = torch.Generator().manual_seed(2)
    vae = {k: torch.randn(v.shape, generator=g) for k, v in model.vae.state_dict().items()}
    first = {k: v for k, v in model.state_dict().items() if k.startswith("unet.input_blocks.0.0.")}
    config, weights = derived_files(tmp_path, first)
    save_state_dict(vae, tmp_path / "vae.safetensors")
    cfg = yaml.safe_load(config.read_text())
    cfg["parts"] = {"vae": "vae.safetensors"}
    config.write_text(yaml.safe_dump(cfg))
    loaded = load_model(config, weights, device="cpu")
    for key, value in loaded.vae.state_dict().items():
        torch.testing.assert_close(value, vae[key], msg=key)
    torch.testing.assert_close(loaded.unet.state_dict(), model.unet.state_dict())

    save_state_dict({"no_such.weight": torch.zeros(1)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="part vae.*no_such.weight"):
        load_model(config, weights, device="cpu")


def test_a_shipped_export_reads_back_as_the_exported_model(tmp_path):
    """ldm.formats.derived_writer writes what ldm.formats.derived reads: an inpainting run's full export, shipped
    beside its base, holds only the tensors that changed and loads back as the exported model (in fp16)."""
    from ldm.formats.derived_writer import ship_derived

    emoji, export = tmp_path / "emoji", tmp_path / "export"
    emoji.mkdir(), export.mkdir()
    write_tiny_model_files(emoji, "model")
    model = widened(tiny_model())
    target = "unet.output_blocks.0.0.out_layers.3.weight"
    with torch.no_grad():
        model.get_parameter(target).add_(0.5)  # trained: one tensor besides the widened first convolution
    save_state_dict(model.state_dict(), export / "model.safetensors", metadata={"step": "7"})
    (export / "model.yaml").write_text(yaml.safe_dump(tiny_inpaint_config()))

    shipped = ship_derived("inpaint", export, base_file=emoji / "model.safetensors")
    assert shipped.weights == emoji / "inpaint.safetensors" and shipped.step == "7"
    config = yaml.safe_load(shipped.config.read_text())
    assert config["base"] == "model.safetensors" and config["model"] == tiny_inpaint_config()["model"]
    from ldm.io.checkpoint import load_state_dict

    kept = load_state_dict(shipped.weights)
    assert {k for k in kept if not k.startswith("unet.input_blocks.0.0.")} == {target}
    loaded = load_model(shipped.config, shipped.weights, device="cpu")
    for key, value in loaded.state_dict().items():  # the shipped tensors in fp16, the rest the base's own
        expected = model.state_dict()[key]
        torch.testing.assert_close(value, expected.half().float() if key in kept else expected, msg=key)
