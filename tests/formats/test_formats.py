"""Single-file checkpoints without a YAML (ldm/formats/detect.py): every family from its tensor manifest, the
prediction rule, our own exports, and a one-line error for a file that matches nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import tiny_config, tiny_model

from ldm.core.config import instantiate, load_config, model_from_config
from ldm.core.errors import InvalidOptionError
from ldm.formats.detect import (
    HF_CLIP,
    OPEN_CLIP,
    UNET,
    VAE,
    UnknownModelError,
    detect,
    detect_file,
    sd_config_path,
    with_prediction,
)
from ldm.formats.load import load_model
from ldm.io.checkpoint import (
    IGNORED_PREFIXES,
    SCHEDULE_BUFFERS,
    CheckpointError,
    from_original_keys,
    load_into,
    load_state_dict,
    save_state_dict,
)
from ldm.training.export import export_diffusion

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).parents[1] / "cli_runner.py"
Shapes = dict[str, tuple[int, ...]]


def manifest(sd_format_dir: str, name: str) -> Shapes:
    keys = json.loads(Path(sd_format_dir, name).read_text())["keys"]
    return {k: tuple(shape) for k, shape in keys.items()}


def hf_clip_text_keys(width: int = 768, layers: int = 12, mlp: int = 3072, vocab: int = 49408, ctx: int = 77) -> Shapes:
    """The tensors of a Hugging Face CLIPTextModel (OpenAI CLIP ViT-L/14's text tower) under SD 1.x's prefix."""
    keys: Shapes = {
        "embeddings.token_embedding.weight": (vocab, width),
        "embeddings.position_embedding.weight": (ctx, width),
        "embeddings.position_ids": (1, ctx),
        "final_layer_norm.weight": (width,),
        "final_layer_norm.bias": (width,),
    }
    for i in range(layers):
        block = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[block + f"self_attn.{proj}.weight"], keys[block + f"self_attn.{proj}.bias"] = (width, width), (width,)
        for norm in ("layer_norm1", "layer_norm2"):
            keys[block + f"{norm}.weight"], keys[block + f"{norm}.bias"] = (width,), (width,)
        keys[block + "mlp.fc1.weight"], keys[block + "mlp.fc1.bias"] = (mlp, width), (mlp,)
        keys[block + "mlp.fc2.weight"], keys[block + "mlp.fc2.bias"] = (width, mlp), (width,)
    return {HF_CLIP + k: v for k, v in keys.items()}


def sd1_manifest(sd_format_dir: str) -> Shapes:
    """SD 1.x's tensors, built from SD 2-base's by the documented differences (no SD 1.x manifest is shipped):
    the text encoder is CLIP ViT-L/14 in the Hugging Face layout, cross-attention keys and values read a
    768-wide context, and the transformers' proj_in/proj_out are 1x1 convolutions instead of linear layers.
    The U-Net, VAE and schedule tensors are otherwise the same."""
    out: Shapes = {}
    for key, shape in manifest(sd_format_dir, "sd-v2-base.json").items():
        if key.startswith(OPEN_CLIP):
            continue
        if key.startswith(UNET) and key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            shape = (shape[0], 768)
        elif key.startswith(UNET) and key.endswith(("proj_in.weight", "proj_out.weight")):
            shape = (*shape, 1, 1)
        out[key] = shape
    return {**out, **hf_clip_text_keys()}


def sd1_inpainting_manifest(sd_format_dir: str) -> Shapes:
    """SD 1.x inpainting: SD 1.x with SD 2 inpainting's 9 input channels."""
    shapes = sd1_manifest(sd_format_dir)
    return {
        **shapes,
        UNET + "input_blocks.0.0.weight": manifest(sd_format_dir, "sd-v2-inpainting.json")[
            UNET + "input_blocks.0.0.weight"
        ],
    }


def shapes_of(sd_format_dir: str, name: str) -> Shapes:
    """A release's tensor shapes: a manifest file, or one of the SD 1.x layouts built from them."""
    built = {"sd-v1": sd1_manifest, "sd-v1-inpainting": sd1_inpainting_manifest}
    return built[name](sd_format_dir) if name in built else manifest(sd_format_dir, name)


def signature_keys(shapes: Shapes) -> Shapes:
    """Only the tensors detection reads (a file of these is small, and detected as the full one would be)."""
    keep = {UNET + "input_blocks.0.0.weight", OPEN_CLIP + "ln_final.weight", HF_CLIP + "final_layer_norm.weight"}
    attn = next(k for k in shapes if k.startswith(UNET) and k.endswith("attn2.to_k.weight"))
    levels = {k.split(".")[3]: k for k in shapes if k.startswith(VAE + "encoder.down.")}
    return {
        k: s
        for k, s in shapes.items()
        if k in keep or k == attn or k in levels.values() or k.startswith(UNET + "label_emb.")
    }


def write_shapes(shapes: Shapes, path: Path, metadata: dict[str, str] | None = None) -> Path:
    save_state_dict({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, path, metadata=metadata)
    return path


V = {"modelspec.prediction_type": "v"}


@pytest.mark.parametrize(
    "name, metadata, prediction, family, expected, config",
    [
        ("sd-v1", {}, None, "sd1", "eps", "v1-inference.yaml"),
        ("sd-v2-base.json", {}, None, "sd2", "eps", "v2-inference.yaml"),
        ("sd-v2-v.json", V, None, "sd2", "v", "v2-inference-v.yaml"),  # same tensors as base: metadata decides
        ("sd-v2-v.json", {}, "v", "sd2", "v", "v2-inference-v.yaml"),  # or the option
        ("sd-v2-v.json", {}, None, "sd2", "eps", "v2-inference.yaml"),  # neither: the documented default
        ("sd-v2-inpainting.json", {}, None, "sd2-inpainting", "eps", "v2-inpainting-inference.yaml"),
        ("sd-v1-inpainting", {}, None, "sd1-inpainting", "eps", "v1-inpainting-inference.yaml"),
        ("sd-x4-upscaler.json", {}, None, "x4-upscaler", "v", "x4-upscaling.yaml"),
        ("sd-v2-depth.json", {}, None, "sd2-depth", "eps", "v2-midas-inference.yaml"),
    ],
)
def test_every_family_is_detected_from_its_manifest(
    sd_format_dir, tmp_path, name, metadata, prediction, family, expected, config
):
    shapes = shapes_of(sd_format_dir, name)
    found = detect(shapes, metadata, prediction)
    assert (found.family, found.prediction, found.config_name) == (family, expected, config)
    # The same from a file holding only the tensors detection reads, through its safetensors header.
    path = write_shapes(signature_keys(shapes), tmp_path / "model.safetensors", metadata)
    on_disk = detect_file(path, prediction)
    assert (on_disk.family, on_disk.prediction, on_disk.config_name) == (family, expected, config)
    assert found.config["model"]["params"]["parameterization"] == expected
    # A release file states the release's sizes: its config is the shipped one, unchanged.
    assert found.resized == () and found.config == with_prediction(load_config(sd_config_path(config)), expected)


@pytest.mark.parametrize(
    "name, metadata",
    [
        ("sd-v1", {}),
        ("sd-v2-v.json", V),
        ("sd-v2-inpainting.json", {}),
        ("sd-v1-inpainting", {}),
        ("sd-x4-upscaler.json", {}),
        ("sd-v2-depth.json", {}),  # its MiDaS estimator (depth_model.*) is skipped
    ],
)
def test_the_detected_config_builds_a_model_the_checkpoint_fills_strictly(sd_format_dir, name, metadata):
    shapes = shapes_of(sd_format_dir, name)
    found = detect(shapes, metadata)
    with torch.device("meta"):
        model = model_from_config(found.config)
    load_into(model, from_original_keys({k: torch.empty(s, device="meta") for k, s in shapes.items()}), assign=True)
    assert model.prediction == found.prediction
    assert (
        model.default_image_size
        == {
            "sd-v1": 512,
            "sd-v2-v.json": 768,
            "sd-v2-inpainting.json": 512,
            "sd-v1-inpainting": 512,
            "sd-x4-upscaler.json": 512,
            "sd-v2-depth.json": 512,
        }[name]
    )
    # What it saves is the file's own layout again (SD 1.x's text tower back in Hugging Face names).
    assert {k: tuple(v.shape) for k, v in model.original_state_dict().items()} == {
        k: s
        for k, s in shapes.items()
        if not k.startswith(IGNORED_PREFIXES) and k not in SCHEDULE_BUFFERS and not k.endswith("position_ids")
    }


def test_v1_inference_yaml_builds_the_sd1_unet_and_vae_layout(sd_format_dir):
    """The config we wrote for SD 1.x gives exactly SD 1.x's U-Net and VAE tensors, and a text tower of
    CLIP ViT-L/14's sizes (the Hugging Face names are checked by the strict load above)."""
    cfg = load_config(sd_config_path("v1-inference.yaml"))["model"]["params"]
    shapes = sd1_manifest(sd_format_dir)
    for node, prefix in ((cfg["unet_config"], UNET), (cfg["first_stage_config"], VAE)):
        with torch.device("meta"):
            net = instantiate(node)
        ours = {prefix + k: tuple(v.shape) for k, v in net.state_dict().items()}
        theirs = {k: s for k, s in shapes.items() if k.startswith(prefix) and not k.startswith(VAE + "loss.")}
        assert ours == theirs
    with torch.device("meta"):
        text = instantiate(cfg["cond_stage_config"])
    assert (text.width, text.num_layers, text.clip_skip, text.pads_with_end) == (768, 12, 1, True)
    assert text.model.transformer.resblocks[0].attn.num_heads == 12


def test_prediction_rule(sd_format_dir):
    sd2 = manifest(sd_format_dir, "sd-v2-base.json")
    assert detect(sd2, {"prediction": "v"}).prediction == "v"  # what `ldm convert --prediction v` writes
    assert detect(sd2, {"modelspec.prediction_type": "epsilon"}).prediction == "eps"
    assert detect(sd2, {"modelspec.architecture": "stable-diffusion-v2-768-v"}).prediction == "v"
    assert detect(sd2, {"modelspec.architecture": "stable-diffusion-v2-512"}).prediction == "eps"
    assert detect(sd2, {"global_step": "875000"}).prediction == "eps"  # never guessed from the step
    assert detect(sd2, V, prediction="eps").prediction == "eps"  # the option beats the metadata
    upscaler = detect(manifest(sd_format_dir, "sd-x4-upscaler.json"), prediction="eps")
    assert upscaler.config_name == "x4-upscaling.yaml"
    assert upscaler.config["model"]["params"]["parameterization"] == "eps"
    with pytest.raises(CheckpointError, match="neither eps"):
        detect(sd2, {"prediction": "sample"})
    with pytest.raises(InvalidOptionError, match="use eps or v"):
        detect(sd2, prediction="x0")


def test_shipped_emoji_model_carries_its_config_and_agrees_with_the_yaml_beside_it(tmp_path):
    path = ROOT / "checkpoints" / "emoji" / "model.safetensors"
    found = detect_file(path)
    assert (found.family, found.source) == ("ldm", "its metadata")  # metadata first: the file loads alone
    assert found.config == load_config(path.with_name("model.yaml"))
    # Without the metadata, the YAML beside the file is the next place looked at.
    bare = tmp_path / "model.safetensors"
    save_state_dict(load_state_dict(path), bare)
    shutil.copy(path.with_name("model.yaml"), tmp_path / "model.yaml")
    assert detect_file(bare).source == "model.yaml beside it"
    assert load_model(None, path).prediction == "eps"
    assert load_model(None, path, prediction="v").prediction == "v"


def test_an_export_carries_its_config_and_loads_alone(tmp_path):
    model = tiny_model(seed=3, parameterization="v")
    weights, _ = export_diffusion(model.state_dict(), tiny_config(parameterization="v")["model"], 1.0, tmp_path)
    alone = tmp_path / "alone" / "tiny.safetensors"
    alone.parent.mkdir()
    shutil.copy(weights, alone)
    found = detect_file(alone)
    assert (found.family, found.source) == ("ldm", "its metadata")
    loaded = load_model(None, alone)
    assert loaded.prediction == "v"
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key


def test_unknown_and_unsupported_files_are_refused_in_one_line(tmp_path, sd_format_dir):
    bare = tmp_path / "bare.safetensors"
    save_state_dict(tiny_model().original_state_dict(), bare)  # our layout, but no config in it or beside it
    with pytest.raises(UnknownModelError) as err:
        load_model(None, bare)
    msg = str(err.value)
    assert "\n" not in msg and "matches no known model family" in msg
    assert "U-Net input channels 4, model channels 32, context dim 32" in msg and "model.diffusion_model. (" in msg


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, sd_format_dir) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("formats-cli")
    export_diffusion(tiny_model().state_dict(), tiny_config()["model"], 1.0, root / "export")
    save_state_dict(
        {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.bias": torch.zeros(3)},
        root / "vae-only.safetensors",
    )
    common = ["--steps", "2", "--no-progress", "--outdir", "out"]
    cases = [
        ["txt2img", "x", "--ckpt", "export/model.safetensors", *common],
        ["txt2img", "x", "--ckpt", "vae-only.safetensors", *common],
        ["txt2img", "x", "--ckpt", "export/model.safetensors", "--prediction", "x0", *common],
    ]
    (root / "export" / "model.yaml").unlink()  # the metadata alone must do
    r = subprocess.run(
        [sys.executable, str(RUNNER)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        input=json.dumps([{"argv": argv, "cwd": str(root), "timeout": 120} for argv in cases]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root, json.loads(r.stdout)


def test_cli_generates_from_a_checkpoint_alone(cli_results):
    root, results = cli_results
    assert results[0]["rc"] == 0, results[0]["stderr"][-3000:]
    assert (root / "out" / "samples" / "00000.png").is_file()
    assert "config from its metadata" in results[0]["stderr"]


@pytest.mark.parametrize(
    "number, message",
    [
        (1, "vae-only.safetensors matches no known model family (tensors decoder. (1), encoder. (1); no U-Net"),
        (2, "argument --prediction: invalid choice: 'x0'"),
    ],
)
def test_cli_refuses_in_one_line(cli_results, number, message):
    result = cli_results[1][number]
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]


def test_sd2_depth_is_told_by_its_five_input_channels_with_or_without_its_midas_tensors(sd_format_dir, tmp_path):
    """512-depth-ema: SD 2's tensors with a 5-channel input conv [latent, depth], and the MiDaS DPT-Hybrid estimator
    (depth_model.model.*), which the strict load above skips; a file stripped of it is the same model."""
    shapes = manifest(sd_format_dir, "sd-v2-depth.json")
    midas = [k for k in shapes if k.startswith("depth_model.")]
    assert len(midas) == 368 and all(k.startswith("depth_model.model.") for k in midas)
    assert shapes[UNET + "input_blocks.0.0.weight"] == (320, 5, 3, 3)
    stripped = {k: s for k, s in shapes.items() if not k.startswith("depth_model.")}
    found = detect(stripped)
    assert (found.family, found.name, found.config_name) == ("sd2-depth", "SD 2 depth", "v2-midas-inference.yaml")
    params = found.config["model"]["params"]
    assert params["conditioning_key"] == "hybrid" and "depth_stage_config" in params  # the reference's YAML
    with torch.device("meta"):
        model = model_from_config(found.config)
    assert (model.conditioning_key, model.kind.concat, model.kind.tasks) == ("depth", True, ("img2img",))
    assert "depth_model." in IGNORED_PREFIXES
