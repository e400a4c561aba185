"""ControlNets: the model against diffusers' ControlNetModel, the files in both layouts, the refusal of another
family's, the one composition (every sampler, txt2img / img2img / inpainting) and --control through the command."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from factories import tiny_config, tiny_inpaint_model, tiny_model, tiny_model_from
from PIL import Image
from safetensors.torch import load_file, save_file

from ldm.core.errors import InvalidOptionError
from ldm.formats.controlnet_files import ControlNetFileError, load_controlnet, save_controlnet
from ldm.formats.diffusers_export import unet_config, write_folder
from ldm.io.diffusers_keys import to_diffusers, unet_names
from ldm.models.controlnet import Control, ControlledUNet, ControlNet, fit_image, using_controlnets
from ldm.models.unet import UNetModel
from ldm.sampling.options import SamplingOptions
from ldm.tasks.base import denoise
from ldm.tasks.img2img import img2img
from ldm.tasks.inpaint import inpaint
from ldm.tasks.txt2img import prepare, txt2img, txt2img_learned_variance

TOLERANCE = 1e-4  # relative to the largest value; measured: 0 (the same operations in the same order)
RUNNER = Path(__file__).parents[1] / "cli_runner.py"
UNET = tiny_config()["model"]["params"]["unet_config"]["params"]


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random (zero convolutions included), so a wrong connection shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval()


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def diffusers_pair(tmp_path_factory):
    """Our tiny U-Net (f=8 stand-in model) and diffusers' ControlNetModel for it, random, saved as a folder."""
    unet = randomised(UNetModel(**UNET), 0)
    cfg = unet_config(UNET, 8)
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    theirs = randomised(ControlNetModel(**{k: v for k, v in cfg.items() if k in accepted}), 1)
    folder = tmp_path_factory.mktemp("controlnet") / "diffusers-controlnet"
    theirs.save_pretrained(folder)
    standin = types.SimpleNamespace(unet=unet, latent_channels=4, downscale=8)
    return unet, cfg, theirs, folder, standin


def test_residuals_and_controlled_unet_match_diffusers(diffusers_pair):
    unet, cfg, theirs, folder, standin = diffusers_pair
    ours = load_controlnet(folder, standin)  # the diffusers folder (config.json + safetensors)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0])
    context, hint = torch.randn(2, 5, 32), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        residuals = ours(x, t, hint, context)
        down, mid = theirs(x, t, context, hint, return_dict=False)
        reference = [*down, mid]
        assert len(residuals) == len(reference) == len(unet.input_blocks) + 1
        for a, b in zip(residuals, reference):
            assert rel_err(a, b) <= TOLERANCE
        d_unet = UNet2DConditionModel(**cfg).eval()
        d_unet.load_state_dict(
            to_diffusers(unet.state_dict(), unet_names(list(unet.state_dict()), unet.num_res_blocks))
        )
        controlled = unet(x, t, context, control=residuals)
        expected = d_unet(
            x,
            t,
            context,
            down_block_additional_residuals=tuple(reference[:-1]),
            mid_block_additional_residual=reference[-1],
        ).sample
        assert rel_err(controlled, expected) <= TOLERANCE
        assert (controlled - unet(x, t, context)).abs().max() > 1e-3  # the residuals did change the output


def test_every_layout_loads_the_same_tensors(diffusers_pair, tmp_path):
    _, _, theirs, folder, standin = diffusers_pair
    reference = load_controlnet(folder, standin).state_dict()
    net = load_controlnet(folder, standin)
    files = [
        save_controlnet(net, tmp_path / "original.safetensors"),
        save_controlnet(net, tmp_path / "unprefixed.safetensors", prefix=False),
        save_controlnet(net, tmp_path / "diffusers.safetensors", layout="diffusers"),
    ]
    # diffusers' own names, as its single files have them
    assert set(load_file(files[2])) == set(theirs.state_dict())
    for path in files:
        loaded = load_controlnet(path, standin).state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), path.name


def test_another_familys_controlnet_and_other_files_are_refused_in_one_line(diffusers_pair, tmp_path):
    _, _, _, _, standin = diffusers_pair
    sd1, sd2 = (UNetModel(**{**UNET, "context_dim": width}) for width in (768, 1024))  # the text encoders' widths
    path = save_controlnet(ControlNet(sd1, 4, 8), tmp_path / "control_sd15_canny.safetensors")
    with pytest.raises(ControlNetFileError) as refused:
        load_controlnet(path, types.SimpleNamespace(unet=sd2, latent_channels=4, downscale=8))
    assert str(refused.value) == (
        f"{path} is a ControlNet for SD 1.x (text width 768), this model is SD 2.x (text "
        "width 1024): use a ControlNet made for this model's family"
    )
    plain = tmp_path / "not-a-controlnet.safetensors"
    save_file({"weight": torch.zeros(2)}, str(plain))
    with pytest.raises(ControlNetFileError, match="is not a ControlNet"):
        load_controlnet(plain, standin)


@pytest.mark.parametrize("start, end, weight", [(0.0, 1.0, 1.0), (0.25, 0.75, 0.7)])
def test_guided_txt2img_with_a_controlnet_matches_diffusers_pipeline(diffusers_pair, tmp_path, start, end, weight):
    """A tiny f=8 model exported to a diffusers folder, diffusers' StableDiffusionControlNetPipeline with its
    ControlNet, the same start latents: SD's DDIM, guided, the ControlNet weighted and in a window of the steps."""
    _, _, theirs, folder, _ = diffusers_pair
    cfg = tiny_config(ddim_variant="sd")
    cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"] = [1, 1, 1, 1]  # f=8
    model = tiny_model_from(cfg, 0)
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
    pipe = StableDiffusionControlNetPipeline(**{**base.components, "scheduler": scheduler}, controlnet=theirs)
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
            controlnet_conditioning_scale=weight,
            control_guidance_start=start,
            control_guidance_end=end,
        ).images
        conditioning = prepare(model, ["a red apple"], [""], options, size=(64, 64))
        with using_controlnets(model, [Control(load_controlnet(folder, model), hint, weight, start, end)]):
            ours = denoise(model, conditioning, options, latents, None, progress=False)
        plain = denoise(model, conditioning, options, latents, None, progress=False)
    assert rel_err(ours, expected) <= TOLERANCE  # measured: about 1e-6
    assert (plain - expected).abs().max() > 1e-2


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def hint_image(seed: int = 0, size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.mark.parametrize("sampler", ["ddim", "euler_ancestral", "heun"])
def test_a_zero_initialised_controlnet_leaves_the_image_bit_identical(model, sampler):
    plain = txt2img(model, "a cat", steps=3, sampler=sampler, progress=False)[0]
    with using_controlnets(
        model, [Control(ControlNet(model.unet, model.latent_channels, model.downscale), hint_image())]
    ):
        controlled = txt2img(model, "a cat", steps=3, sampler=sampler, progress=False)[0]
    assert np.array_equal(as_array(plain), as_array(controlled))
    assert getattr(model, "controls", None) is None  # only for the calls inside


def test_weight_and_guidance_window_decide_what_a_controlnet_changes(model):
    net = randomised(ControlNet(model.unet, model.latent_channels, model.downscale), 2)
    plain = as_array(txt2img(model, "a cat", steps=4, progress=False)[0])

    def run(**kwargs) -> np.ndarray:
        with using_controlnets(model, [Control(net, hint_image(), **kwargs)]):
            return as_array(txt2img(model, "a cat", steps=4, progress=False)[0])

    full, late = run(weight=1.0), run(start=0.5, end=1.0)
    assert np.abs(full - plain).max() > 0
    assert np.array_equal(run(weight=0.0), plain)
    assert not np.array_equal(late, full) and not np.array_equal(late, plain)
    # Two ControlNets at once, each with its own image and weight: half and half is neither alone.
    with using_controlnets(model, [Control(net, hint_image(0), 0.5), Control(net, hint_image(1), 0.5)]):
        both = as_array(txt2img(model, "a cat", steps=4, progress=False)[0])
    assert not np.array_equal(both, full) and not np.array_equal(both, plain)


def test_img2img_and_a_nine_channel_inpainting_unet_take_a_controlnet(model):
    net = randomised(ControlNet(model.unet, model.latent_channels, model.downscale), 3)
    photo = hint_image(5)
    plain = as_array(img2img(model, photo, "a cat", 0.7, steps=4, progress=False)[0])
    with using_controlnets(model, [Control(net, hint_image())]):
        controlled = as_array(img2img(model, photo, "a cat", 0.7, steps=4, progress=False)[0])
    assert not np.array_equal(plain, controlled)
    inpainter = tiny_inpaint_model(0)
    inpaint_net = randomised(ControlNet(inpainter.unet, inpainter.latent_channels, inpainter.downscale), 4)
    assert inpainter.unet.in_channels == 9 and inpaint_net.in_channels == 4  # it sees the noisy latent alone
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    plain = as_array(inpaint(inpainter, photo, mask, "a cat", steps=4, progress=False)[0])
    with using_controlnets(inpainter, [Control(inpaint_net, hint_image())]):
        controlled = as_array(inpaint(inpainter, photo, mask, "a cat", steps=4, progress=False)[0])
    assert not np.array_equal(plain, controlled)


def test_an_sdxl_controlnet_with_its_vector_matches_diffusers(tmp_path):
    """SDXL's layout at reduced widths (three levels, depths 1 2 3, the vector embedding "text_time"): diffusers'
    ControlNetModel saved as a folder, loaded for our SDXL U-Net, the same residuals; SD 1.x's is refused."""
    from test_sdxl import CONTEXT, POOLED, tiny_unet_params

    theirs = randomised(
        ControlNetModel(
            in_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            transformer_layers_per_block=(1, 2, 3),
            attention_head_dim=(2, 4, 4),
            cross_attention_dim=CONTEXT,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=POOLED + 6 * 256,
        ),
        6,
    )
    theirs.save_pretrained(tmp_path / "sdxl-controlnet")
    unet = UNetModel(**tiny_unet_params()).eval()
    ours = load_controlnet(
        tmp_path / "sdxl-controlnet", types.SimpleNamespace(unet=unet, latent_channels=4, downscale=8)
    )
    generator = torch.Generator().manual_seed(2)
    x, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 7, CONTEXT, generator=generator)
    pooled, hint = torch.randn(2, POOLED, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    time_ids, t = (
        torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 512, 32, 16, 896, 640]]),
        torch.tensor([999, 421]),
    )
    with torch.no_grad():
        y = torch.cat([pooled, theirs.add_time_proj(time_ids.flatten()).reshape(2, -1)], dim=-1)
        down, mid = theirs(
            x, t, context, hint, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}, return_dict=False
        )
        residuals = ours(x, t, hint, context, y)
    assert len(residuals) == len(down) + 1
    for a, b in zip(residuals, [*down, mid]):
        assert rel_err(a, b) <= TOLERANCE
    sd1 = types.SimpleNamespace(unet=UNetModel(**UNET), latent_channels=4, downscale=8)
    with pytest.raises(ControlNetFileError, match=r"is a ControlNet for .*vector|is a ControlNet for"):
        load_controlnet(tmp_path / "sdxl-controlnet", sd1)


def test_what_takes_no_controlnet_is_refused_in_one_line(model):

    net = ControlNet(model.unet, model.latent_channels, model.downscale)
    tile = ControlledUNet(
        model.unet, [(net, torch.rand(1, 3, 16, 16), 1.0, "balanced")]
    )  # a tile's latent: 4x4, not 8x8
    with pytest.raises(InvalidOptionError, match="tiled sampling"):
        tile(torch.randn(1, 4, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 32))
    variance = tiny_model(0, learned_variance=True)
    control = Control(ControlNet(variance.unet, 4, variance.downscale), hint_image())
    with using_controlnets(variance, [control]), pytest.raises(InvalidOptionError, match="the learned variance"):
        txt2img_learned_variance(variance, "a cat", steps=2, progress=False)
    with pytest.raises(InvalidOptionError, match="0 <= start <= end <= 1"):
        Control(net, hint_image(), start=0.6, end=0.4)


def test_control_images_of_another_shape_are_stretched_cropped_or_filled():
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 8, 16))  # a blue left quarter
    stretched, cropped, filled = (np.asarray(fit_image(image, 16, 16, mode)) for mode in ("stretch", "crop", "fill"))
    assert stretched.shape == cropped.shape == filled.shape == (16, 16, 3)
    assert stretched[8, 0, 2] == 255 and cropped[8, 0, 0] == 255  # the crop cuts the blue quarter away
    assert (filled[:4] == 0).all() and (filled[-4:] == 0).all() and filled[8, 0, 2] == 255  # black bands, all kept
    with pytest.raises(InvalidOptionError, match="unknown control image resize mode"):
        fit_image(image, 16, 16, "squash")


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_control_modes_weigh_the_residuals_and_the_sides_of_guidance_as_a1111(model, scale):
    """prompt: the residuals weighed 0.825 ** (12 - i); control: so weighed, on the conditional side alone, so that
    without guidance (scale 1: the conditional side only) it is the prompt mode exactly, and with guidance not."""
    net = randomised(ControlNet(model.unet, model.latent_channels, model.downscale), 8)

    def run(mode: str) -> np.ndarray:
        with using_controlnets(model, [Control(net, hint_image(), mode=mode)]):
            return as_array(txt2img(model, "a cat", steps=3, guidance_scale=scale, progress=False)[0])

    balanced, prompt, control = run("balanced"), run("prompt"), run("control")
    assert not np.array_equal(balanced, prompt)
    assert np.array_equal(prompt, control) == (scale == 1.0)
    with pytest.raises(InvalidOptionError, match="unknown control mode"):
        Control(net, hint_image(), mode="louder")
