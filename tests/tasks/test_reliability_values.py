"""Values that would make a picture out of NaN: refused on the command line or on load, and, where they get past
that, caught when sampling ends, before anything is decoded or written. The Python API refuses bad arguments with
LdmError subclasses as the CLI does, and original SD configs read as the original code reads them.

The command-line cases run through the real `ldm` command (tests/cli_runner.py, as tests/interfaces/test_bad_inputs.py
does):
exit 2, one error line, no traceback, and no image written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from factories import TINY_TEXT, tiny_config, tiny_model, tiny_original_config, tiny_upscaler_model
from PIL import Image

from ldm.adapters.lora import add_lora, save_lora
from ldm.core.config import ConfigError, instantiate
from ldm.core.errors import LdmError
from ldm.formats.load import load_model
from ldm.io.checkpoint import CheckpointError, load_state_dict, save_state_dict
from ldm.models.text_encoder import LAYERS
from ldm.sampling.options import NonFiniteLatentsError
from ldm.tasks.base import NoiseShapeError
from ldm.tasks.img2img import img2img
from ldm.tasks.inpaint import inpaint
from ldm.tasks.prompts import PromptError
from ldm.tasks.txt2img import txt2img
from ldm.tasks.upscale import upscale
from ldm.tasks.walk import walk_frames

RUNNER = Path(__file__).parents[1] / "cli_runner.py"
MODEL = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--steps", "2", "--no-progress", "--outdir", "out"]
SHIPPED = ["--steps", "2", "--no-progress", "--outdir", "out"]  # the shipped model: default student, or --model full
EMBEDDING = ["txt2img", "x", *MODEL, "--embedding"]
NON_FINITE = "sampling produced non-finite latents at step 1 of 2"

# (argv, what the one error line must say)
CASES = [
    (["txt2img", "x", *SHIPPED, "--scale", "1e308"], "guidance scale must be at most 1000, got 1e+308"),
    (["txt2img", "x", *SHIPPED, "--model", "full", "--scale", "1e308"], "guidance scale must be at most 1000"),
    (["txt2img", "x", *MODEL, "--lora", "alpha-1e30.safetensors"], "alpha 1e+30 over rank 2 is a scale beyond 1000"),
    (["txt2img", "x", *MODEL, "--lora", "lora.safetensors:1e308"], "the weight must be between -100 and 100"),
    ([*EMBEDDING, "nan.safetensors"], "nan.safetensors: the embedding holds NaN"),
    ([*EMBEDDING, "zero-width.safetensors"], "zero-width.safetensors: the embedding is empty"),
    ([*EMBEDDING, "no-vectors.safetensors"], "no-vectors.safetensors: the embedding is empty"),
    ([*EMBEDDING, "huge.safetensors"], "huge.safetensors: the embedding holds values up to 1e+30"),
    # Within every bound and finite, but its update overflows the U-Net: caught when sampling ends, not decoded.
    (["txt2img", "x", *MODEL, "--lora", "overflowing.safetensors"], NON_FINITE),
]


def lora_file(base, path: Path, alpha: float = 2.0, value: float = 0.1) -> Path:
    """A LoRA file on the U-Net's attention, rank 2, every up and down weight `value`."""
    model = tiny_model()
    model.load_state_dict(base.state_dict())
    add_lora(model, ("attn",), rank=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.fill_(value)
    save_lora(model, path)
    if alpha != 2.0:  # add_lora refuses a wild alpha itself, so it is written into the file afterwards
        state = load_state_dict(path)
        save_state_dict({k: torch.tensor(alpha) if k.endswith(".alpha") else v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability-values")
    base = tiny_model()
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(base.original_state_dict(), root / "tiny.safetensors")
    lora_file(base, root / "lora.safetensors")
    lora_file(base, root / "alpha-1e30.safetensors", alpha=1e30)
    lora_file(base, root / "overflowing.safetensors", value=1e15)
    width = TINY_TEXT["text_cfg"]["width"]
    save_state_dict({"emb_params": torch.full((2, width), float("nan"))}, root / "nan.safetensors")
    save_state_dict({"emb_params": torch.zeros(2, 0)}, root / "zero-width.safetensors")
    save_state_dict({"emb_params": torch.zeros(0, width)}, root / "no-vectors.safetensors")
    save_state_dict({"emb_params": torch.full((1, width), 1e30)}, root / "huge.safetensors")
    return root


@pytest.fixture(scope="module")
def results(workspace) -> list[dict]:
    cases = [{"argv": argv, "cwd": str(workspace), "watch": str(workspace), "timeout": 120} for argv, _ in CASES]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("number", range(len(CASES)), ids=[" ".join(argv[-2:])[:60] for argv, _ in CASES])
def test_a_value_that_would_make_a_black_image_is_one_line_and_no_image(results, number):
    message = CASES[number][1]
    result = results[number]
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["rc"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]
    assert result["changed"] == []  # no image, no grid: nothing was written


def test_the_lora_files_are_what_the_cases_say(workspace):
    # Guards the cases above: the plain LoRA and the huge-alpha one differ only in alpha, and the overflowing one
    # is finite, with a scale of 1, so only sampling can tell it apart.
    plain, wild = load_state_dict(workspace / "lora.safetensors"), load_state_dict(workspace / "alpha-1e30.safetensors")
    alphas = [k for k in plain if k.endswith(".alpha")]
    assert alphas and all(float(plain[k]) == 2.0 and float(wild[k]) == pytest.approx(1e30, rel=1e-6) for k in alphas)
    assert all(torch.equal(plain[k], wild[k]) for k in plain if k not in alphas)
    big = load_state_dict(workspace / "overflowing.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in big.values())
    assert all(float(big[k]) == 2.0 for k in alphas)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# (txt2img's arguments, the LdmError subclass, what its message must say)
API_CASES = [
    (dict(prompts=None), PromptError, "prompt must be a str or a list of str, got NoneType"),
    (dict(prompts=["a cat", 3]), PromptError, "prompt must be a str or a list of str, got a list holding int"),
    (dict(negative_prompt=None), PromptError, "negative prompt must be a str or a list of str, got NoneType"),
    (dict(generator=7), LdmError, "generator must be a torch.Generator or a list of them, got int"),
    (dict(prompts=["a", "b"], generator=[torch.Generator(), "seed"]), LdmError, "got a list holding Generator, str"),
    (dict(latents=torch.empty(1, 4, 2, 2, device="meta")), NoiseShapeError, "latents are on the meta device"),
    (dict(latents=torch.full((1, 4, 2, 2), float("nan"))), NoiseShapeError, "latents hold NaN or infinite values"),
    (dict(latents=torch.zeros(1, 4, 3, 3)), NoiseShapeError, r"latents of shape \[1, 4, 3, 3\] for a batch of shape"),
    (dict(latents=[[0.0]]), NoiseShapeError, "latents must be a torch.Tensor, got list"),
    (dict(guidance_scale=1e308), LdmError, "guidance scale must be at most 1000, got 1e\\+308"),
]


@pytest.mark.parametrize(
    "arguments, error, message",
    API_CASES,
    ids=[
        "prompt None",
        "a prompt list holding an int",
        "negative prompt None",
        "generator int",
        "a generator list holding a str",
        "meta latents",
        "NaN latents",
        "latents of another shape",
        "latents a list",
        "scale 1e308",
    ],
)
def test_bad_api_arguments_are_ldm_errors_that_say_what_is_wrong(model, arguments, error, message):
    arguments = {"prompts": "a cat", **arguments}
    with pytest.raises(error, match=message):
        txt2img(model, height=16, width=16, steps=2, progress=False, **arguments)


def test_every_task_refuses_a_prompt_that_is_not_text(model):
    photo = Image.new("RGB", (16, 16), "red")
    mask = Image.new("L", (16, 16), 255)
    with pytest.raises(PromptError, match="prompt must be a str"):
        img2img(model, photo, None, steps=2, progress=False)
    with pytest.raises(PromptError, match="prompt must be a str"):
        inpaint(model, photo, mask, None, steps=2, progress=False)
    with pytest.raises(PromptError, match="prompt must be a str"):
        walk_frames(model, None, seed_b=1, frames=2, height=16, width=16, progress=False)
    with pytest.raises(PromptError, match="prompt must be a str"):
        upscale(tiny_upscaler_model(), Image.new("RGB", (8, 8), "red"), None, steps=2, progress=False)


def test_non_finite_latents_stop_sampling_and_name_the_step():
    broken = tiny_model()
    with torch.no_grad():
        broken.unet.out[-1].weight.fill_(1e38)  # a finite weight whose products overflow float32
    with pytest.raises(NonFiniteLatentsError, match="non-finite latents at step 1 of 2: the guidance scale, a LoRA"):
        txt2img(broken, "a cat", height=16, width=16, steps=2, progress=False)


def test_a_checkpoint_that_is_not_a_regular_file_is_said_so_without_opening_it(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it to read would block until a writer came: the test would hang
    for config in (None, tiny_config()):
        with pytest.raises(CheckpointError, match=r"model.safetensors is not a regular file \(a FIFO\)"):
            load_model(config, fifo, device="cpu")
    with pytest.raises(CheckpointError, match=r"/dev/zero is not a regular file \(a device file\)"):
        load_model(None, "/dev/zero", device="cpu")
    with pytest.raises(CheckpointError, match="/dev/zero is not a regular file"):
        load_model(tiny_config(), "/dev/zero", device="cpu")
    (tmp_path / "weights.safetensors").write_bytes(b"not read: the config fails first")
    with pytest.raises(ConfigError, match=r"config .*model.safetensors is not a regular file \(a FIFO\)"):
        load_model(fifo, tmp_path / "weights.safetensors", device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint not found"):  # a missing file is still "not found"
        load_model(tiny_config(), tmp_path / "missing.safetensors", device="cpu")


def original_text_node(**params) -> dict:
    """The tiny text encoder as an original SD 2 YAML names it (the reference repository's target)."""
    return {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder", "params": {"arch": TINY_TEXT, **params}}


def test_original_open_clip_parameters_are_accepted_with_the_original_defaults(tmp_path):
    # The original class takes version and device (open_clip's download and its device): read and ignored here.
    encoder = instantiate(original_text_node(version="laion2b_s32b_b79k", device="cuda", max_length=77, freeze=True))
    assert encoder.layer_idx == LAYERS["last"]  # the original default where the YAML leaves `layer` out
    assert instantiate(original_text_node(layer="penultimate")).layer_idx == LAYERS["penultimate"]
    ours = {"target": "ldm.models.text_encoder.FrozenOpenCLIPEmbedder", "params": {"arch": TINY_TEXT}}
    assert instantiate(ours).layer_idx == LAYERS["penultimate"]  # our own target keeps our default
    with pytest.raises(ConfigError, match="unknown parameter 'versio'"):  # other parameters are still checked
        instantiate(original_text_node(versio="x"))
    # A whole original YAML stating version and device builds, with the original layer.
    cfg = tiny_original_config()
    cfg["model"]["params"]["cond_stage_config"] = original_text_node(version="laion2b_s32b_b79k", device="cpu")
    (tmp_path / "original.yaml").write_text(yaml.safe_dump(cfg))
    model = load_model(tmp_path / "original.yaml", device="cpu")
    assert model.text_encoder.layer_idx == LAYERS["last"]


def test_the_shipped_sd2_configs_still_read_the_penultimate_layer():
    from ldm.core.config import load_config, translate_original
    from ldm.core.defaults import shipped_path

    for name in ("v2-inference.yaml", "v2-inference-v.yaml", "v2-inpainting-inference.yaml", "x4-upscaling.yaml"):
        node = load_config(shipped_path(f"configs/stable-diffusion/{name}"))["model"]["params"]["cond_stage_config"]
        assert translate_original(node["target"], dict(node["params"]))["layer"] == "penultimate", name
