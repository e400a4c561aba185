"""T2I-Adapters: the model against diffusers' T2IAdapter (both kinds), the U-Net's injection against
UNet2DConditionModel's down_intrablock_additional_residuals, a guided sampling against StableDiffusionAdapterPipeline,
the files (folder, lone weights file, refusals in one line), and the zero adapter's bit-identical image."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionAdapterPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers import T2IAdapter as DiffusersT2IAdapter
from factories import tiny_config, tiny_model, tiny_model_from
from PIL import Image
from safetensors.torch import save_file

from ldm.formats.controlnet_files import load_controlnet
from ldm.formats.diffusers_export import unet_config, write_folder
from ldm.formats.t2i_adapter_files import T2IAdapterFileError, save_t2i_adapter
from ldm.io.diffusers_keys import to_diffusers, unet_names
from ldm.models.controlnet import Control, using_controlnets
from ldm.models.t2i_adapter import T2IAdapter, t2i_adapter_for
from ldm.models.unet import UNetModel
from ldm.sampling.options import SamplingOptions
from ldm.tasks.base import denoise
from ldm.tasks.txt2img import prepare, txt2img

TOLERANCE = 1e-4  # relative to the largest value; measured: 0 for the features, under 1e-6 for the samplings
# A U-Net whose every level has cross-attention, as SD 1.x / 2.x's non-last levels: diffusers adds a level's
# features inside CrossAttnDownBlock2D (before its downsampler), as ours does; see ldm.models.t2i_adapter.
UNET = {**tiny_config()["model"]["params"]["unet_config"]["params"], "attention_resolutions": [1, 2]}


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval()


def hint_image(seed: int = 0, size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "kind, channels", [("full_adapter", [32, 64]), ("light_adapter", [32, 64]), ("full_adapter", [32, 64, 64])]
)
def test_features_match_diffusers_and_the_folder_loads_back(kind, channels, tmp_path):
    theirs = randomised(DiffusersT2IAdapter(3, channels, 2, 8, kind), 1)
    ours = T2IAdapter(3, channels, 2, 8, kind)
    ours.load_state_dict(theirs.state_dict())  # the same names: strict load
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference, features = theirs(image), ours(image)
    assert len(features) == len(reference)
    assert all(rel_err(a, b) <= TOLERANCE for a, b in zip(features, reference))
    theirs.save_pretrained(tmp_path / "theirs")
    unet = UNetModel(**{**UNET, "channel_mult": [1, 2, 2][: len(features)]})
    standin = types.SimpleNamespace(unet=unet, latent_channels=4, downscale=8)
    for path in (tmp_path / "theirs", tmp_path / "theirs" / "diffusion_pytorch_model.safetensors"):
        loaded = load_controlnet(path, standin)  # the one --control path tells it from a ControlNet
        assert isinstance(loaded, T2IAdapter) and loaded.config == ours.config
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.state_dict().items())
    save_t2i_adapter(ours, tmp_path / "ours")
    assert DiffusersT2IAdapter.from_pretrained(tmp_path / "ours", local_files_only=True).config["adapter_type"] == kind


def test_the_unet_adds_features_where_diffusers_does():
    unet = randomised(UNetModel(**UNET), 0)
    cfg = unet_config(UNET, 8)
    d_unet = UNet2DConditionModel(**cfg).eval()
    d_unet.load_state_dict(to_diffusers(unet.state_dict(), unet_names(list(unet.state_dict()), unet.num_res_blocks)))
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(2, 5, 32)
    features = [torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)]
    with torch.no_grad():
        ours = unet(x, t, context, adapter=features)
        expected = d_unet(x, t, context, down_intrablock_additional_residuals=[f.clone() for f in features]).sample
        assert rel_err(ours, expected) <= TOLERANCE
        assert (ours - unet(x, t, context)).abs().max() > 1e-3


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_guided_txt2img_with_an_adapter_matches_diffusers_pipeline(tmp_path, scale):
    """A tiny f=8 model as a diffusers folder, StableDiffusionAdapterPipeline with a random adapter, the same start
    latents: SD's DDIM, guided, adapter_conditioning_scale = our weight. (SD 1.x's pipeline has no
    adapter_conditioning_factor; SDXL's acts in steps i < int(n * factor): our end, the ControlNets' window.)"""
    cfg = tiny_config(ddim_variant="sd")
    cfg["model"]["params"]["unet_config"]["params"]["attention_resolutions"] = [1, 2]
    cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"] = [1, 1, 1, 1]  # f=8
    model = tiny_model_from(cfg, 0)
    theirs = randomised(DiffusersT2IAdapter(3, [32, 64], 2, 8, "full_adapter"), 1)
    theirs.save_pretrained(tmp_path / "adapter")
    base = StableDiffusionPipeline.from_pretrained(write_folder(model, cfg, tmp_path / "sd"), local_files_only=True)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    components = {k: v for k, v in base.components.items() if k != "image_encoder"}
    pipe = StableDiffusionAdapterPipeline(**{**components, "scheduler": scheduler}, adapter=theirs)
    pipe.set_progress_bar_config(disable=True)
    hint = hint_image(0, (64, 64))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    options = SamplingOptions(steps=4, guidance_scale=7.5, sampler="ddim", ddim_variant="sd")
    with torch.no_grad():
        expected = pipe(
            "a red apple",
            image=hint,
            height=64,
            width=64,
            num_inference_steps=4,
            guidance_scale=7.5,
            latents=latents,
            output_type="latent",
            adapter_conditioning_scale=scale,
        ).images
        conditioning = prepare(model, ["a red apple"], [""], options, size=(64, 64))
        adapter = load_controlnet(tmp_path / "adapter", model)
        with using_controlnets(model, [Control(adapter, hint, scale)]):
            ours = denoise(model, conditioning, options, latents, None, progress=False)
        with using_controlnets(model, [Control(adapter, hint, scale, end=0.5)]):  # the first 2 of the 4 steps
            half = denoise(model, conditioning, options, latents, None, progress=False)
        plain = denoise(model, conditioning, options, latents, None, progress=False)
    assert rel_err(ours, expected) <= TOLERANCE  # measured: 8.7e-7 and 8.5e-7
    assert (plain - expected).abs().max() > 1e-2
    assert min((half - ours).abs().max(), (half - plain).abs().max()) > 1e-3


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_a_zero_adapter_or_weight_zero_leaves_the_image_bit_identical(model, sampler):
    plain = np.asarray(txt2img(model, "a cat", steps=3, sampler=sampler, progress=False)[0])
    zero = t2i_adapter_for(model.unet, model.downscale)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    random = randomised(t2i_adapter_for(model.unet, model.downscale), 3)
    for control in (Control(zero, hint_image()), Control(random, hint_image(), weight=0.0)):
        with using_controlnets(model, [control]):
            controlled = np.asarray(txt2img(model, "a cat", steps=3, sampler=sampler, progress=False)[0])
        assert np.array_equal(plain, controlled)
    with using_controlnets(model, [Control(random, hint_image(), weight=1.0)]):
        changed = np.asarray(txt2img(model, "a cat", steps=3, sampler=sampler, progress=False)[0])
    assert not np.array_equal(plain, changed)


def test_adapters_that_do_not_fit_are_refused_in_one_line(model, tmp_path):
    wide = save_t2i_adapter(T2IAdapter(3, [48, 64], 1, model.downscale), tmp_path / "wide")
    with pytest.raises(T2IAdapterFileError) as refused:
        load_controlnet(wide, model)
    assert str(refused.value) == f"{wide}: an adapter of feature widths [48, 64] for a U-Net of level widths [32, 64]"
    other_f = save_t2i_adapter(T2IAdapter(3, [32, 64], 1, 8), tmp_path / "f8")
    with pytest.raises(T2IAdapterFileError, match="unshuffles by 8, this model's autoencoder takes images down by f=2"):
        load_controlnet(other_f, model)
    config = json.loads((other_f / "config.json").read_text())
    (other_f / "config.json").write_text(json.dumps({**config, "adapter_type": "full_adapter_xl"}))
    with pytest.raises(T2IAdapterFileError, match="'full_adapter_xl' is not supported"):
        load_controlnet(other_f, model)
    truncated = tmp_path / "truncated.safetensors"
    state = t2i_adapter_for(model.unet, model.downscale).state_dict()
    save_file({k: v for k, v in state.items() if not k.endswith("block2.bias")}, str(truncated))
    with pytest.raises(T2IAdapterFileError, match="does not fit its T2I-Adapter config: 4 missing tensors"):
        load_controlnet(truncated, model)
    assert "\n" not in str(refused.value)
