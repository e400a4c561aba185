"""SD 1.x end to end: a single SD 1.x-layout file (no YAML) is detected, loaded and generates; --clip-skip and
--vae change the image and say so in its metadata; bad values are refused in one line. The text encoder's
parity with transformers is in test_reference_parity.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_model, tiny_sd1_config, tiny_sd1_model
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.formats.detect import HF_CLIP, detect_file, with_prediction
from ldm.formats.load import load_model
from ldm.io.checkpoint import CheckpointError, load_state_dict, save_state_dict
from ldm.training.export import export_diffusion

RUNNER = Path(__file__).with_name("cli_runner.py")


@pytest.fixture(scope="module")
def sd1_reference():
    return tiny_sd1_model()


def other_vae_weights(model) -> dict[str, torch.Tensor]:
    """The model's VAE weights moved by noise: a VAE file that fits but decodes differently."""
    torch.manual_seed(1)
    return {k: v + 0.02 * torch.randn_like(v) for k, v in model.vae.state_dict().items()}


@pytest.fixture(scope="module")
def sd1_files(tmp_path_factory, sd1_reference) -> Path:
    """A tiny SD 1.x in the original layout as fp16 safetensors, as SD 1.x files are shared, with nothing beside
    it; a VAE file of its shape with other weights; and one that does not fit (the SD 2-style tiny model's)."""
    root = tmp_path_factory.mktemp("sd1")
    save_state_dict(sd1_reference.original_state_dict(), root / "sd1.safetensors", float_dtype=torch.float16)
    save_state_dict(other_vae_weights(sd1_reference), root / "vae.safetensors", float_dtype=torch.float16)
    save_state_dict(tiny_model().vae.state_dict(), root / "other-vae.safetensors")
    return root


@pytest.fixture(scope="module")
def sd1_loaded(sd1_files):
    return load_model(None, sd1_files / "sd1.safetensors")


def test_a_tiny_sd1_file_is_detected_and_built_at_its_own_sizes(sd1_files, sd1_reference, sd1_loaded):
    path = sd1_files / "sd1.safetensors"
    found = detect_file(path)
    assert (found.family, found.config_name, found.prediction) == ("sd1", "v1-inference.yaml", "eps")
    assert found.config == with_prediction(tiny_sd1_config(), "eps")
    assert "text width 48" in found.summary() and "text layers 2" in found.summary()
    model = sd1_loaded
    assert model.text_encoder.clip_skip == 1 and model.text_encoder.checkpoint_layout == "hf_clip"
    for (key, ours), theirs in zip(model.state_dict().items(), sd1_reference.state_dict().values()):
        assert torch.equal(ours, theirs.half().float()), key  # the fp16 file's values, nothing moved


def test_an_sd1_export_keeps_the_hugging_face_text_layout_and_loads_alone(tmp_path, sd1_reference):
    model = sd1_reference
    weights, _ = export_diffusion(model.state_dict(), tiny_sd1_config()["model"], 0.18215, tmp_path)
    Path(weights).with_suffix(".yaml").unlink()  # its metadata carries the config
    keys = set(load_state_dict(weights))
    assert HF_CLIP + "encoder.layers.1.self_attn.q_proj.weight" in keys
    assert not any(k.startswith("cond_stage_model.model.") for k in keys)
    loaded = load_model(None, weights)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key


def test_vae_file_replaces_the_autoencoder_and_a_misfit_leaves_it(sd1_files, sd1_reference, sd1_loaded):
    model = copy.deepcopy(sd1_loaded)
    before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        model.load_vae_weights(sd1_files / "other-vae.safetensors")
    assert "\n" not in str(err.value) and "does not fit the model's autoencoder" in str(err.value)
    assert "missing tensors" in str(err.value) and "shape mismatches" in str(err.value)
    assert all(torch.equal(v, model.vae.state_dict()[k]) for k, v in before.items())
    model.load_vae_weights(sd1_files / "vae.safetensors")
    replacement = other_vae_weights(sd1_reference)
    assert all(torch.equal(v, replacement[k].half().float()) for k, v in model.vae.state_dict().items())
    assert model.identity["vae_file"] == "vae.safetensors" and len(model.identity["vae_sha256"]) == 64


def test_clip_skip_past_the_first_layer_is_refused_in_one_line(sd1_loaded):
    with pytest.raises(InvalidOptionError) as err:
        sd1_loaded.text_encoder.set_clip_skip(3)
    assert str(err.value) == "--clip-skip must be between 1 and 2 (the text encoder's layers), got 3"
    assert sd1_loaded.text_encoder.clip_skip == 1


def test_sd2_reads_the_penultimate_layer_which_is_clip_skip_2():
    encoder = tiny_model().text_encoder
    assert encoder.clip_skip == 2
    with torch.no_grad():
        penultimate = encoder(["a cat"])
        encoder.set_clip_skip(1)
        last = encoder(["a cat"])
    assert not torch.allclose(penultimate, last)


@pytest.fixture(scope="module")
def cli_results(sd1_files) -> list[dict]:
    common = ["--ckpt", "sd1.safetensors", "--H", "64", "--W", "64", "--steps", "2", "--seed", "5", "--no-progress"]
    cases = [
        ["txt2img", "a red apple", *common, "--outdir", "plain"],
        ["txt2img", "a red apple", *common, "--outdir", "skip2", "--clip-skip", "2"],
        ["txt2img", "a red apple", *common, "--outdir", "vae", "--vae", "vae.safetensors"],
        # Refused before the model loads (a bad --clip-skip for the model, or a VAE that does not fit, is
        # refused after loading, with the errors tested above, which the CLI prints as one line like these).
        ["txt2img", "a red apple", *common, "--outdir", "x", "--clip-skip", "0"],
        ["txt2img", "a red apple", *common, "--outdir", "x", "--vae", "missing.safetensors"],
    ]
    r = subprocess.run(
        [sys.executable, str(RUNNER)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        input=json.dumps([{"argv": argv, "cwd": str(sd1_files), "timeout": 120} for argv in cases]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def image(root: Path, outdir: str) -> Image.Image:
    return Image.open(root / outdir / "samples" / "00000.png")


def test_cli_generates_from_an_sd1_file_alone(sd1_files, cli_results):
    result = cli_results[0]
    assert result["rc"] == 0, result["stderr"][-3000:]
    assert "SD 1.x by its tensor shapes, config v1-inference.yaml" in result["stderr"]
    png = image(sd1_files, "plain")
    assert png.size == (64, 64) and np.asarray(png).std() > 0
    assert "Clip skip" not in png.text["parameters"] and "VAE" not in png.text["parameters"]


@pytest.mark.parametrize("number, outdir, recorded", [(1, "skip2", "Clip skip: 2"), (2, "vae", "VAE: vae.safetensors")])
def test_clip_skip_and_vae_change_the_image_and_are_recorded(sd1_files, cli_results, number, outdir, recorded):
    assert cli_results[number]["rc"] == 0, cli_results[number]["stderr"][-3000:]
    png = image(sd1_files, outdir)
    assert not np.array_equal(np.asarray(png), np.asarray(image(sd1_files, "plain")))
    assert recorded in png.text["parameters"]


@pytest.mark.parametrize(
    "number, message",
    [
        (3, "--clip-skip must be at least 1 (1 is the last layer), got 0"),
        (4, "VAE file not found: missing.safetensors"),
    ],
)
def test_cli_refuses_bad_clip_skip_and_vae_in_one_line(cli_results, number, message):
    result = cli_results[number]
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]


def test_a_text_tower_tensor_without_its_place_is_named_by_the_strict_load():
    """A block missing q_proj, or a tensor with no open_clip name, keeps its original name through the
    translation, so the one-line error says which tensor of the file is wrong instead of losing it."""
    from ldm.io.checkpoint import from_original_keys, load_into
    from ldm.io.hf_clip import hf_from_open_clip
    from ldm.models.text_encoder import FrozenCLIPEmbedder

    encoder = FrozenCLIPEmbedder(width=48, layers=1)
    state = {
        HF_CLIP + k: v
        for k, v in hf_from_open_clip({k[len("model.") :]: v for k, v in encoder.state_dict().items()}).items()
    }
    del state[HF_CLIP + "encoder.layers.0.self_attn.q_proj.weight"]
    state[HF_CLIP + "encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(1)
    ours = {k[len("text_encoder.") :]: v for k, v in from_original_keys(state).items()}
    with pytest.raises(CheckpointError) as err:
        load_into(encoder, ours)
    message = str(err.value)
    assert "\n" not in message and "1 missing tensors: model.transformer.resblocks.0.attn.in_proj_weight" in message
    assert "transformer.text_model.encoder.layers.0.self_attn.k_proj.weight" in message  # kept, named
    assert "transformer.text_model.encoder.layers.0.self_attn.rotary.weight" in message


def test_a_tiny_sd1_inpainting_file_is_detected_loaded_and_inpaints(tmp_path):
    """SD 1.x inpainting (sd-v1-5-inpainting's layout: SD 1.x with a 9-channel U-Net) at tiny sizes: its
    family and shipped config come from the tensor shapes alone, and it drives the 9-channel inpainting path."""
    from factories import _build

    from ldm.tasks.inpaint import inpaint

    cfg = tiny_sd1_config()
    params = cfg["model"]["params"]
    params["conditioning_key"] = "hybrid"
    params["unet_config"]["params"]["in_channels"] = 9
    model = _build(cfg, seed=5)
    path = tmp_path / "sd-v1-5-inpainting.safetensors"
    save_state_dict(model.original_state_dict(), path)
    found = detect_file(path)
    assert (found.family, found.config_name, found.prediction) == (
        "sd1-inpainting",
        "v1-inpainting-inference.yaml",
        "eps",
    )
    loaded = load_model(None, path)
    assert loaded.unet.input_blocks[0][0].in_channels == 9 and loaded.text_encoder.pads_with_end
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    rng = np.random.default_rng(0)
    image = Image.fromarray(np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8))
    mask = np.zeros((64, 64), np.float32)
    mask[:, 32:] = 1.0
    out = np.asarray(inpaint(loaded, image, mask, "a cat", steps=3, progress=False).images[0]).astype(np.float32)
    before = np.asarray(image).astype(np.float32)
    assert out.shape == (64, 64, 3)
    assert np.abs(out[:, 40:] - before[:, 40:]).mean() > 5  # the masked half is repainted
