"""diffusers folders beyond text-to-image: SD 2 inpainting (StableDiffusionInpaintPipeline, a 9-channel U-Net) and
the x4 upscaler (StableDiffusionUpscalePipeline: 7 channels, the noise level as the U-Net's class label, a
low-res scheduler), and weights stored sharded or as the fp16 variant. Ours -> folder runs the same in diffusers'
own pipeline classes; folders written by diffusers load and agree; folder -> ours -> one file keeps every tensor;
what is still unsupported gets one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from factories import _build, tiny_inpaint_config, tiny_upscaler_config

from ldm.core.errors import LdmError
from ldm.formats.diffusers import DiffusersFolderError, folder_config, folder_identity
from ldm.formats.diffusers_export import write_folder, write_single_file, write_tokenizer
from ldm.formats.load import load_model

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
RTOL, ATOL = 1e-5, 1e-5  # float32: the implementations differ only in the order of their sums
PROMPTS = ["a red apple on a table", "emoji of a cat, smiling"]
PIPELINE = {"inpaint": "StableDiffusionInpaintPipeline", "upscale": "StableDiffusionUpscalePipeline"}


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def upscaler_config() -> dict:
    """The tiny upscaler with the release's attention layout in small: attention at both levels, the first
    without self-attention (the original's disable_self_attentions, diffusers' only_cross_attention)."""
    cfg = tiny_upscaler_config()
    cfg["model"]["params"]["unet_config"]["params"].update(
        attention_resolutions=[1, 2], disable_self_attentions=[True, False]
    )
    return cfg


CONFIGS = {"inpaint": tiny_inpaint_config, "upscale": upscaler_config}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, dict, Path]]:
    root = tmp_path_factory.mktemp("pipelines")
    out = {}
    for name, make in CONFIGS.items():
        cfg = make()
        model = _build(cfg, seed=5)
        out[name] = (model, cfg, write_folder(model, cfg, root / name))
    return out


def unet_inputs(model, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The U-Net's whole input: [latent, mask, masked latent] (9) or [latent, low-res RGB] (7), timesteps,
    context, and the upscaler's noise levels (0 and the highest allowed, 350)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, channels, 8, 8, generator=generator)
    if channels == 9:
        x[:, 4] = (x[:, 4] > 0).float()  # a binary mask, as the pipeline passes it
    labels = torch.tensor([0, 350]) if model.kind.label else None
    return x, torch.tensor([10, 730]), model.encode_text(PROMPTS), labels


@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_exported_folder_runs_the_same_in_diffusers_pipelines(exported, name):
    import diffusers as d

    model, _, folder = exported[name]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINE[name]
    pipe = getattr(d, PIPELINE[name]).from_pretrained(folder, local_files_only=True)
    assert pipe.unet.config.in_channels == {"inpaint": 9, "upscale": 7}[name]
    x, t, context, labels = unet_inputs(model, pipe.unet.config.in_channels)
    with torch.no_grad():
        ours = model.unet(x, t, context, labels)
        close(pipe.unet(x, t, encoder_hidden_states=context, class_labels=labels).sample, ours)
        close(pipe.text_encoder(model.text_encoder.tokenize(PROMPTS)).last_hidden_state, context)
        latent = x[:, :4]
        close(pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample, model.decode_latent(latent))
    assert torch.allclose(pipe.scheduler.alphas_cumprod.double(), model.alphas_cumprod.double(), rtol=1e-6)
    assert pipe.scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[model.prediction]
    if name == "upscale":
        assert pipe.unet.config.num_class_embeds == 1000 and pipe.unet.config.only_cross_attention == [True, False]
        assert pipe.config.max_noise_level == model.low_scale.max_noise_level == 350
        assert model.downscale == 4 and pipe.vae_scale_factor == 4
        # The low-res image is noised the same way: diffusers' low_res_scheduler is our noise augmentation.
        image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
        level = torch.tensor([20, 350])
        ours_noised, _ = model.low_scale(image, level, noise=noise)
        close(pipe.low_res_scheduler.add_noise(image, noise, level), ours_noised)
        # The label matters: another noise level gives another prediction.
        with torch.no_grad():
            assert not torch.allclose(model.unet(x, t, context, labels.flip(0)), ours, atol=1e-3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folder_to_ours_to_single_file_keeps_every_tensor(exported, tmp_path, name):
    model, _, folder = exported[name]
    loaded = load_model(None, folder)
    assert loaded.conditioning_key == model.conditioning_key and loaded.prediction == model.prediction
    for part in ("unet", "vae"):
        theirs = getattr(loaded, part).state_dict()
        assert set(theirs) == set(getattr(model, part).state_dict())
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(model, part).state_dict().items())
    if name == "upscale":
        assert loaded.low_scale.max_noise_level == 350
        assert torch.allclose(loaded.low_scale.alphas_cumprod, model.low_scale.alphas_cumprod, rtol=1e-6)
    single = write_single_file(loaded, folder_config(folder), tmp_path / f"{name}.safetensors")
    again = load_model(None, single)
    assert again.conditioning_key == model.conditioning_key
    x, t, context, labels = unet_inputs(model, model.unet.in_channels)
    with torch.no_grad():
        assert torch.equal(again.unet(x, t, context, labels), model.unet(x, t, context, labels))
    assert torch.equal(again.encode_text(PROMPTS), model.encode_text(PROMPTS))


def diffusers_pipeline(root: Path, name: str):
    """A tiny random inpainting or x4-upscaler pipeline built with diffusers' own classes."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(21)
    upscale = name == "upscale"
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=7 if upscale else 9,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        use_linear_projection=True,
        num_class_embeds=400 if upscale else None,
        only_cross_attention=[True, False] if upscale else False,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64) if upscale else (32, 64),
        down_block_types=("DownEncoderBlock2D",) * (3 if upscale else 2),
        up_block_types=("UpDecoderBlock2D",) * (3 if upscale else 2),
        latent_channels=4,
        sample_size=16,
        scaling_factor=0.08333 if upscale else 0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2, hidden_act="gelu"
        )
    )
    with torch.no_grad():  # move every weight off its initialisation (zero output layers would hide mistakes)
        for module in (unet, vae, text):
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    write_tokenizer(root / "tok", "!", 77)
    tokenizer = CLIPTokenizer.from_pretrained(root / "tok", local_files_only=True)
    if upscale:
        return StableDiffusionUpscalePipeline(
            vae=vae.eval(),
            text_encoder=text.eval(),
            tokenizer=tokenizer,
            unet=unet.eval(),
            low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
            scheduler=DDIMScheduler(
                beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, prediction_type="v_prediction"
            ),
            max_noise_level=300,
        )
    return StableDiffusionInpaintPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def agree(model, pipe) -> None:
    x, t, _, _ = unet_inputs(model, pipe.unet.config.in_channels)
    labels = torch.tensor([0, 300]) if model.kind.label else None
    ids = model.text_encoder.tokenize(PROMPTS)
    with torch.no_grad():
        context = pipe.text_encoder(ids).last_hidden_state
        close(model.encode_text(PROMPTS), context)
        close(
            model.unet(x, t, context, labels),
            pipe.unet(x, t, encoder_hidden_states=context, class_labels=labels).sample,
        )
        close(model.decode_latent(x[:, :4]), pipe.vae.decode(x[:, :4] / pipe.vae.config.scaling_factor).sample)


def test_a_sharded_inpainting_folder_written_by_diffusers_loads_and_agrees(tmp_path):
    pipe = diffusers_pipeline(tmp_path, "inpaint")
    folder = tmp_path / "inpaint"
    pipe.save_pretrained(folder, max_shard_size="100KB")
    for part, index in (
        ("unet", "diffusion_pytorch_model.safetensors.index.json"),
        ("vae", "diffusion_pytorch_model.safetensors.index.json"),
        ("text_encoder", "model.safetensors.index.json"),
    ):
        shards = set(json.loads((folder / part / index).read_text())["weight_map"].values())
        assert len(shards) > 1 and not (folder / part / index.removesuffix(".index.json")).exists(), part
    model = load_model(None, folder)
    assert model.conditioning_key == "hybrid" and model.unet.in_channels == 9 and model.prediction == "eps"
    agree(model, pipe)


def test_an_upscaler_folder_written_by_diffusers_prefers_full_precision_over_the_fp16_variant(tmp_path):
    pipe = diffusers_pipeline(tmp_path, "upscale")
    folder = tmp_path / "upscale"
    pipe.save_pretrained(folder)
    full = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(folder, variant="fp16", max_shard_size="100KB")  # beside
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    assert (folder / "text_encoder" / "model.fp16.safetensors").is_file() or (
        folder / "text_encoder" / "model.safetensors.index.fp16.json"
    ).is_file()
    model = load_model(None, folder)
    assert model.conditioning_key == "hybrid-adm" and model.prediction == "v" and model.downscale == 4
    assert model.low_scale.max_noise_level == 300 and model.unet.num_classes == 400
    agree(model, pipe)  # to float32 precision: the fp16 copy was not read
    assert torch.equal(model.unet.state_dict()["label_emb.weight"], full["class_embedding.weight"])
    full_identity = folder_identity(folder)
    for part, name in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        (folder / part / f"{name}.safetensors").unlink()
    rounded = load_model(None, folder)  # the fp16 variant alone now
    emb = rounded.unet.state_dict()["label_emb.weight"]
    assert emb.dtype == torch.float32 and torch.equal(emb, full["class_embedding.weight"].half().float())
    assert not torch.equal(emb, full["class_embedding.weight"])
    assert folder_identity(folder) != full_identity


def test_pickled_weights_load_weights_only(exported, tmp_path):
    from safetensors.torch import load_file

    model, _, source = exported["inpaint"]
    folder = tmp_path / "bin"
    shutil.copytree(source, folder)
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(unet_file)
    unet_file.unlink()
    keys = sorted(tensors)  # two .bin shards and their index, as diffusers names them
    shards = {
        "diffusion_pytorch_model-00001-of-00002.bin": keys[::2],
        "diffusion_pytorch_model-00002-of-00002.bin": keys[1::2],
    }
    for shard, names in shards.items():
        torch.save({k: tensors[k] for k in names}, folder / "unet" / shard)
    (folder / "unet" / "diffusion_pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {k: shard for shard, names in shards.items() for k in names}})
    )
    loaded = load_model(None, folder)
    assert all(torch.equal(v, loaded.unet.state_dict()[k]) for k, v in model.unet.state_dict().items())
    # A shard that would run code when unpickled is refused, not run.
    torch.save(
        {"weight": torch.zeros(1), "code": Path("x")}, folder / "unet" / "diffusion_pytorch_model-00002-of-00002.bin"
    )
    with pytest.raises(LdmError) as exc:
        load_model(None, folder)
    assert "weights_only" in one_line(exc)


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert isinstance(exc.value, LdmError) and "\n" not in str(exc.value)
    return str(exc.value)


def test_broken_shards_and_missing_variants_are_refused_in_one_line(exported, tmp_path):
    from safetensors.torch import load_file

    _, _, source = exported["inpaint"]
    folder = tmp_path / "broken"
    shutil.copytree(source, folder)
    vae = folder / "vae"
    (vae / "diffusion_pytorch_model.safetensors").rename(vae / "diffusion_pytorch_model.bf16.safetensors")
    with pytest.raises(DiffusersFolderError) as exc:
        load_model(None, folder)  # bf16 is no variant read here
    assert "vae/diffusion_pytorch_model.safetensors is missing" in one_line(exc)
    (vae / "diffusion_pytorch_model.bf16.safetensors").rename(
        vae / "diffusion_pytorch_model-00001-of-00001.safetensors"
    )
    real = sorted(load_file(vae / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    index = vae / "diffusion_pytorch_model.safetensors.index.json"
    for weight_map, message in (
        ({"a": "diffusion_pytorch_model-00002-of-00002.safetensors"}, "is missing"),
        ({"a": "../unet/diffusion_pytorch_model.safetensors"}, "beside the index"),
        ({"a": "diffusion_pytorch_model-00001-of-00001.bin"}, "beside the index"),
        ({"a": "diffusion_pytorch_model-00001-of-00001.safetensors"}, "names are not in it"),
        (dict.fromkeys(real[1:], "diffusion_pytorch_model-00001-of-00001.safetensors"), "not in its index"),
    ):
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(LdmError) as exc:
            load_model(None, folder)
        assert message in one_line(exc)
    index.write_text("{not json")
    with pytest.raises(LdmError) as exc:
        load_model(None, folder)
    assert "no readable JSON index" in one_line(exc)


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_what_is_still_unsupported_is_refused_in_one_line(exported, tmp_path):
    _, _, up = exported["upscale"]
    cases = [
        ("model_index.json", {"_class_name": "StableDiffusionDepth2ImgPipeline"}, "StableDiffusionDepth2ImgPipeline"),
        ("unet/config.json", {"class_embed_type": "timestep"}, "class_embed_type"),
        ("unet/config.json", {"num_class_embeds": None}, "needs a noise-level embedding"),
        ("unet/config.json", {"in_channels": 9}, "latent + low-res image = 7"),
        ("model_index.json", {"max_noise_level": 1000}, "max_noise_level"),
        ("model_index.json", {"_class_name": "StableDiffusionInpaintPipeline"}, "latent + mask + masked-image"),
    ]
    for i, (file, changes, message) in enumerate(cases):
        folder = tmp_path / str(i)
        shutil.copytree(up, folder)
        edit_json(folder / file, **changes)
        with pytest.raises(DiffusersFolderError) as exc:
            load_model(None, folder)
        assert message in one_line(exc), file
    shutil.rmtree(folder / "low_res_scheduler")
    edit_json(folder / "model_index.json", _class_name="StableDiffusionUpscalePipeline")
    with pytest.raises(DiffusersFolderError) as exc:
        load_model(None, folder)
    assert "low_res_scheduler/scheduler_config.json is missing" in one_line(exc)

    for change, message in (
        ({"disable_middle_self_attn": True}, "disable_middle_self_attn"),
        ({"num_classes": "continuous"}, "num_classes='continuous'"),
        ({"num_classes": 300}, "beyond the U-Net's 300 noise levels"),
    ):
        cfg = copy.deepcopy(upscaler_config())
        cfg["model"]["params"]["unet_config"]["params"].update(change)
        with pytest.raises(DiffusersFolderError) as exc:
            write_folder(_build(cfg, 0), cfg, tmp_path / "out")
        assert message in one_line(exc) and not (tmp_path / "out").exists()
    cfg = tiny_inpaint_config()
    cfg["model"]["params"]["unet_config"]["params"]["in_channels"] = 4
    with pytest.raises(DiffusersFolderError) as exc:
        write_folder(_build(cfg, 0), cfg, tmp_path / "out")
    assert "no StableDiffusionInpaintPipeline layout" in one_line(exc) and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "yaml_name, manifest",
    [("v2-inpainting-inference.yaml", "sd-v2-inpainting.json"), ("x4-upscaling.yaml", "sd-x4-upscaler.json")],
)
def test_release_checkpoints_map_one_to_one_onto_diffusers(sd_format_dir, yaml_name, manifest):
    """The original release checkpoints' U-Net and autoencoder tensors (names and shapes from the manifests) land
    on every tensor of the diffusers networks built from our exported configs (on the meta device: shapes only),
    and the configs read back from those give our networks of the same tensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ldm.core.config import instantiate, load_config
    from ldm.formats.detect import sd_config_path
    from ldm.formats.diffusers import unet_params, vae_params
    from ldm.formats.diffusers_export import unet_config, vae_config
    from ldm.io.checkpoint import state_problems
    from ldm.io.diffusers_keys import to_diffusers, unet_names, vae_names

    params = load_config(sd_config_path(yaml_name))["model"]["params"]
    shapes = json.loads((Path(sd_format_dir) / manifest).read_text())["keys"]
    parts = {"unet": "model.diffusion_model.", "vae": "first_stage_model."}
    original = {
        part: {k[len(p) :]: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(p)}
        for part, p in parts.items()
    }
    unet_cfg = unet_config(params["unet_config"]["params"], params["image_size"])
    vae_cfg = vae_config(params["first_stage_config"]["params"], params["scale_factor"])
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg)
        ours_unet = instantiate({"target": "ldm.models.unet.UNetModel", "params": unet_params(dict(unet.config))})
        ours_vae = instantiate({"target": "ldm.models.vae.AutoencoderKL", "params": vae_params(dict(vae.config))[0]})
    levels = len(params["unet_config"]["params"]["channel_mult"])
    blocks = [params["unet_config"]["params"]["num_res_blocks"]] * levels
    theirs = to_diffusers(original["unet"], unet_names(list(original["unet"]), blocks))
    assert state_problems(unet.state_dict(), theirs) == []
    assert state_problems(ours_unet.state_dict(), original["unet"]) == []
    theirs = to_diffusers(original["vae"], vae_names(list(original["vae"]), len(vae_cfg["block_out_channels"])))
    assert state_problems(vae.state_dict(), theirs) == []
    assert state_problems(ours_vae.state_dict(), original["vae"]) == []
    if yaml_name == "x4-upscaling.yaml":  # the release folder's facts (stabilityai/stable-diffusion-x4-upscaler)
        assert unet.config.in_channels == 7 and unet.config.num_class_embeds == 1000
        assert unet.config.only_cross_attention == [True, True, True, False]
        assert list(unet.config.block_out_channels) == [256, 512, 512, 1024] and vae_cfg["scaling_factor"] == 0.08333
        assert len(vae_cfg["block_out_channels"]) == 3  # f = 4
    else:
        assert unet.config.in_channels == 9 and unet.config.num_class_embeds is None
