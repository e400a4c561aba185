"""diffusers folders: ours -> folder runs the same in diffusers/transformers (U-Net, VAE, text encoder, tokenizer,
scheduler), ours -> folder -> ours keeps every tensor that is used, a folder written by diffusers itself loads and
agrees with diffusers, the CLI converts both ways and generates from a folder, and bad folders get one line."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import tiny_config, tiny_model, tiny_sd1_config, tiny_sd1_model, write_tiny_model_files

from ldm.core.errors import LdmError
from ldm.formats.diffusers import DiffusersFolderError, folder_config
from ldm.formats.diffusers_export import write_folder, write_tokenizer
from ldm.formats.load import load_model

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
RUNNER = Path(__file__).with_name("cli_runner.py")
RTOL, ATOL = 1e-5, 5e-5  # float32: the implementations differ in the order of their sums (attention, norms);
# with two threads on AVX2 kernels single elements of O(1) outputs were seen 1.2e-5 apart
# No "!": Hugging Face's tokenizer with SD 2's pad token "!" splits it out of prompts as the pad token (id 0), where
# open_clip, which SD 2 was trained with and we follow, reads "!</w>" (256); test_sd2_pad_token_quirk pins that.
PROMPTS = ["a red apple on a table", "emoji of a cat, smiling; (best) 2 eyes"]


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def ours_models() -> dict[str, tuple[torch.nn.Module, dict]]:
    """The tiny SD 2-style model (open_clip tower, penultimate layer, GELU) as a v-model, and the tiny SD 1.x."""
    return {
        "sd2-v": (tiny_model(parameterization="v"), tiny_config(parameterization="v")),
        "sd1": (tiny_sd1_model(), tiny_sd1_config()),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    root = tmp_path_factory.mktemp("diffusers")
    return {name: (model, write_folder(model, cfg, root / name)) for name, (model, cfg) in ours_models().items()}


def inputs(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    latent = torch.randn(2, 4, 8, 8, generator=generator)
    return latent, torch.tensor([10, 730]), model.encode_text(PROMPTS)


@pytest.mark.parametrize("name", ["sd2-v", "sd1"])
def test_an_exported_folder_runs_the_same_in_diffusers(exported, name):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model, folder = exported[name]
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval()
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    latent, t, context = inputs(model)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, model.text_encoder.tokenize(PROMPTS))
    with torch.no_grad():
        close(text(ids).last_hidden_state, context)
        close(unet(latent, t, encoder_hidden_states=context).sample, model.unet(latent, t, context))
        close(vae.decode(latent / vae.config.scaling_factor).sample, model.decode_latent(latent))
        image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
        close(vae.encode(image).latent_dist.mean * vae.config.scaling_factor, model.encode_image(image))
    assert scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[model.prediction]
    assert torch.allclose(scheduler.alphas_cumprod.double(), model.alphas_cumprod.double(), rtol=1e-6)


def test_sd2_pad_token_quirk(exported):
    from transformers import CLIPTokenizer

    model, folder = exported["sd2-v"]
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    theirs = tokenizer(["hi!"], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    ours = model.text_encoder.tokenize(["hi!"])[0]
    assert ours[:4].tolist() == [49406, 1883, 256, 49407] and theirs[:4].tolist() == [49406, 1883, 0, 49407]
    assert torch.equal(ours[4:], theirs[4:])


@pytest.mark.parametrize("name", ["sd2-v", "sd1"])
def test_ours_to_folder_to_ours_keeps_every_used_tensor(exported, name):
    model, folder = exported[name]
    loaded = load_model(None, folder)
    assert loaded.prediction == model.prediction and loaded.scale_factor == model.scale_factor
    for part in ("unet", "vae"):
        theirs = getattr(loaded, part).state_dict()
        for key, value in getattr(model, part).state_dict().items():
            assert torch.equal(value, theirs[key]), key
    # The text tower keeps the blocks it reads; SD 2's unused last block and open_clip's head are not stored.
    tower, back = model.text_encoder.model.state_dict(), loaded.text_encoder.model.state_dict()
    assert set(back) <= set(tower) and all(torch.equal(tower[k], v) for k, v in back.items())
    dropped = set(tower) - set(back)
    assert dropped == (
        set()
        if name == "sd1"
        else {k for k in tower if k.startswith("transformer.resblocks.1.")} | {"text_projection", "logit_scale"}
    )
    assert torch.equal(loaded.encode_text(PROMPTS), model.encode_text(PROMPTS))
    assert loaded.identity["model_file"] == name and len(loaded.identity["model_sha256"]) == 64


def tiny_diffusers_folder(root: Path, sd2: bool) -> Path:
    """A folder written by diffusers' own StableDiffusionPipeline.save_pretrained, of tiny random parts: SD 1.x-like
    (conv projections, one head count, quick-GELU, padded with the end token) or SD 2-like (linear projections,
    64-channel-style fixed head width, GELU, padded with "!", v-prediction)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(11 if sd2 else 12)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=(1, 2) if sd2 else 1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D") if sd2 else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D") if sd2 else ("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 2,
        use_linear_projection=sd2,
        transformer_layers_per_block=1,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=16,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=128,
            num_attention_heads=2,
            num_hidden_layers=2,
            hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )
    with torch.no_grad():  # diffusers zero-initialises nothing here, but move every weight off its init anyway
        for module in (unet, vae, text):
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    write_tokenizer(root / "tok", "!" if sd2 else "<|endoftext|>", 77)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tok", local_files_only=True),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = root / ("sd2" if sd2 else "sd1")
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("sd2", [False, True], ids=["sd1-like", "sd2-like"])
def test_a_folder_written_by_diffusers_loads_and_agrees(tmp_path, sd2):
    from diffusers import StableDiffusionPipeline

    folder = tiny_diffusers_folder(tmp_path, sd2)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    model = load_model(None, folder)
    assert model.prediction == ("v" if sd2 else "eps")
    assert model.text_encoder.pads_with_end is not sd2
    tokens = model.text_encoder.tokenize(PROMPTS)
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(tokens, ids)
    latent, t, _ = inputs(model)
    with torch.no_grad():
        context = pipe.text_encoder(ids).last_hidden_state
        close(model.encode_text(PROMPTS), context)
        close(model.unet(latent, t, context), pipe.unet(latent, t, encoder_hidden_states=context).sample)
        close(model.decode_latent(latent), pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample)


def test_the_emoji_default_exports_and_runs_the_same_in_diffusers(tmp_path):
    from diffusers import UNet2DConditionModel

    model = load_model(variant="full")  # the student (the default) has a guidance embedding diffusers lacks
    from ldm.core.defaults import default_config_path
    from ldm.formats.detect import resolve_config

    folder = write_folder(model, resolve_config(default_config_path(), None), tmp_path / "emoji")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).eval()
    latent, t, context = inputs(model)
    with torch.no_grad():
        close(unet(latent, t, encoder_hidden_states=context).sample, model.unet(latent, t, context))
    again = load_model(None, folder)
    assert torch.equal(again.encode_text(PROMPTS), model.encode_text(PROMPTS))
    assert all(torch.equal(v, again.unet.state_dict()[k]) for k, v in model.unet.state_dict().items())


def test_a_shipped_derived_model_converts_from_any_folder_and_the_student_is_refused(tmp_path, monkeypatch, capsys):
    """The inpainter's `base: model.safetensors` is found beside its file, not in the working folder; the student's
    guidance input has no diffusers name, which is said in one line."""
    from ldm.core.defaults import default_checkpoint_path
    from ldm.interfaces.cli.main import main as cli_main

    shipped = default_checkpoint_path().parent
    monkeypatch.chdir(tmp_path)  # no model.safetensors here
    assert cli_main(["convert", str(shipped / "inpaint.safetensors"), "inpaint-diffusers", "--to", "diffusers"]) == 0
    ours, theirs = load_model(variant=None, task="inpaint"), load_model(None, tmp_path / "inpaint-diffusers")
    assert theirs.unet.input_blocks[0][0].weight.shape[1] == 9
    assert all(torch.equal(v, theirs.unet.state_dict()[k]) for k, v in ours.unet.state_dict().items())
    assert cli_main(["convert", str(shipped / "student.safetensors"), "student-diffusers", "--to", "diffusers"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "guidance-distilled student" in err and "convert the model it was distilled from" in err
    assert not (tmp_path / "student-diffusers").exists()


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert isinstance(exc.value, LdmError) and "\n" not in str(exc.value)
    return str(exc.value)


def test_incomplete_or_unknown_folders_are_refused_in_one_line(exported, tmp_path):
    _, source = exported["sd1"]
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(DiffusersFolderError) as exc:
        load_model(None, broken)
    assert "unet/diffusion_pytorch_model.safetensors is missing" in one_line(exc)
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(DiffusersFolderError) as exc:
        folder_config(broken)
    assert "scheduler/scheduler_config.json is missing" in one_line(exc)
    with pytest.raises(DiffusersFolderError) as exc:
        folder_config(tmp_path)  # an empty folder
    assert "model_index.json is missing" in one_line(exc)

    unknown = tmp_path / "xl"
    shutil.copytree(source, unknown)
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(DiffusersFolderError) as exc:
        load_model(None, unknown)
    assert "StableDiffusionXLPipeline" in one_line(exc)
    (unknown / "model_index.json").write_text(json.dumps(index))
    unet_cfg = json.loads((unknown / "unet" / "config.json").read_text())
    (unknown / "unet" / "config.json").write_text(json.dumps({**unet_cfg, "addition_embed_type": "text_time"}))
    with pytest.raises(DiffusersFolderError) as exc:
        load_model(None, unknown)
    assert "addition_embed_type" in one_line(exc)


def test_weights_that_do_not_fit_the_configs_are_refused_in_one_line(exported, tmp_path):
    _, source = exported["sd1"]
    other = tmp_path / "other"
    shutil.copytree(source, other)
    cfg = json.loads((other / "vae" / "config.json").read_text())
    (other / "vae" / "config.json").write_text(json.dumps({**cfg, "layers_per_block": cfg["layers_per_block"] + 1}))
    with pytest.raises(LdmError) as exc:
        load_model(None, other)
    assert "missing tensors" in one_line(exc) and str(other) in str(exc.value)


def test_models_without_a_diffusers_layout_are_refused_before_writing(tmp_path):
    # (inpainting and the x4 upscaler have theirs: tests/formats/test_diffusers_pipelines.py)
    cfg = copy.deepcopy(tiny_config())
    cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] = [16]
    with pytest.raises(DiffusersFolderError) as exc:
        write_folder(tiny_model(), cfg, tmp_path / "vae-attn")
    assert "attention" in one_line(exc) and list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_folder_and_leaves_no_temporary_folder(exported, tmp_path):
    model, _ = exported["sd1"]
    out = write_folder(model, tiny_sd1_config(), tmp_path / "out")
    with pytest.raises(DiffusersFolderError) as exc:
        write_folder(model, tiny_sd1_config(), out)
    assert "already exists" in one_line(exc)
    (out / "stale.txt").write_text("from before")
    write_folder(model, tiny_sd1_config(), out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "unet" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cli_converts_both_ways_and_generates_from_a_folder(tmp_path):
    write_tiny_model_files(tmp_path)
    (tmp_path / "sd1-files").mkdir()
    cases = [
        ["convert", "tiny.safetensors", "folder", "--to", "diffusers"],
        ["convert", "folder", "back.safetensors"],
        [
            "txt2img",
            "a red apple",
            "--ckpt",
            "folder",
            "--H",
            "32",
            "--W",
            "32",
            "--steps",
            "2",
            "--seed",
            "5",
            "--no-progress",
            "--outdir",
            "out",
        ],
        ["convert", "tiny.safetensors", "folder", "--to", "diffusers"],  # exists now
        ["convert", "missing", "elsewhere", "--to", "diffusers"],
        ["txt2img", "a red apple", "--ckpt", "sd1-files", "--steps", "2", "--no-progress", "--outdir", "x"],
    ]
    r = subprocess.run(
        [sys.executable, str(RUNNER)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        input=json.dumps([{"argv": argv, "cwd": str(tmp_path), "timeout": 300} for argv in cases]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    to_folder, to_file, generate, exists, missing, empty = json.loads(r.stdout)
    for result in (to_folder, to_file, generate):
        assert result["rc"] == 0, result["stderr"][-3000:]
    model = tiny_model()
    back = load_model(None, tmp_path / "back.safetensors")
    assert all(torch.equal(v, back.unet.state_dict()[k]) for k, v in model.unet.state_dict().items())
    assert torch.equal(back.encode_text(PROMPTS), model.encode_text(PROMPTS))
    assert (tmp_path / "out" / "samples" / "00000.png").is_file()
    for result, message in ((exists, "already exists"), (missing, "not found"), (empty, "model_index.json is missing")):
        errors = [line for line in result["stderr"].splitlines() if "error:" in line]
        assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"]
        assert len(errors) == 1 and message in errors[0], result["stderr"]


RELEASE_UNETS = {  # the release folders' UNet2DConditionModel configs (the facts that differ between them)
    "sd1.5": {"attention_head_dim": 8, "cross_attention_dim": 768, "use_linear_projection": False},
    "sd2.1": {
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "upcast_attention": True,
    },
}
RELEASE_TEXT = {
    "sd1.5": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "hidden_act": "quick_gelu",
    },
    "sd2.1": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 23,
        "hidden_act": "gelu",
    },
}


@pytest.mark.parametrize("release", list(RELEASE_UNETS))
def test_release_sized_configs_build_networks_whose_tensors_map_one_to_one(release):
    """At release sizes (built on the meta device: shapes only), every diffusers tensor has its place in ours."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.core.config import instantiate
    from ldm.formats.diffusers import text_params, unet_params, vae_params
    from ldm.io.checkpoint import state_problems
    from ldm.io.diffusers_keys import from_diffusers, unet_names, vae_names
    from ldm.io.hf_clip import open_clip_from_hf

    vae_cfg = {
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "sample_size": 512,
    }
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, **RELEASE_UNETS[release])
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**RELEASE_TEXT[release]))
        vae_node, _ = vae_params(vae_cfg)
        ours_unet = instantiate({"target": "ldm.models.unet.UNetModel", "params": unet_params(dict(unet.config))})
        ours_vae = instantiate({"target": "ldm.models.vae.AutoencoderKL", "params": vae_node})
        ours_text = instantiate(
            {
                "target": "ldm.models.text_encoder.FrozenCLIPEmbedder",
                "params": text_params(RELEASE_TEXT[release], "!" if release == "sd2.1" else None),
            }
        )
    theirs = from_diffusers(unet.state_dict(), unet_names(list(ours_unet.state_dict()), ours_unet.num_res_blocks))
    assert state_problems(ours_unet.state_dict(), theirs) == []
    theirs = from_diffusers(vae.state_dict(), vae_names(list(ours_vae.state_dict()), 4))
    assert state_problems(ours_vae.state_dict(), theirs) == []
    tower, left = open_clip_from_hf({k.removeprefix("text_model."): v for k, v in text.state_dict().items()})
    assert left == {} and state_problems(ours_text.model.state_dict(), tower) == []
    assert sum(p.numel() for p in ours_unet.parameters()) == sum(p.numel() for p in unet.parameters())
