"""SDXL sampling (issue 39): the base-to-refiner hand-off against diffusers' denoising_end / denoising_start, the
micro-conditionings as options, A1111's step-fraction switch, and the command line.

Tiny base and refiner with the same random weights as diffusers' StableDiffusionXLPipeline (base, denoising_end=0.8)
and StableDiffusionXLImg2ImgPipeline (refiner, denoising_start=0.8) from the same start latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_sdxl
import torch
from PIL import Image
from test_sdxl import BIG_G, POOLED, PROMPTS, TOLERANCE, randomise, rel_err, tiny_encoders_node, tiny_unet_params

from ldm.core.config import instantiate, load_config
from ldm.core.errors import InvalidOptionError
from ldm.diffusion.schedules import get_sigmas
from ldm.formats.detect import sd_config_path
from ldm.interfaces.cli import main as cli
from ldm.io.checkpoint import save_state_dict
from ldm.io.diffusers_keys import from_diffusers
from ldm.io.sdxl_keys import sdxl_unet_names
from ldm.models.unet import UNetModel
from ldm.tasks.sdxl_refiner import (
    RefinerError,
    SDXLMicro,
    base_steps,
    sdxl_txt2img,
    switch_from_step_fraction,
    with_refiner_switch,
)  # fmt: skip

REFINER_VECTOR = POOLED + 5 * 256
# test_sdxl's tiny models with the same random weights as its diffusers pipeline, as fixtures of this module too
unets, text_towers, tiny_sdxl = test_sdxl.unets, test_sdxl.text_towers, test_sdxl.tiny_sdxl


def sd_ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


@pytest.fixture(scope="module")
def refiners(text_towers):
    """(our tiny refiner LatentDiffusion, its node, diffusers' refiner img2img pipeline) with the same weights."""
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(10)
    theirs = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=BIG_G,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=REFINER_VECTOR,
    )
    randomise(theirs, 11)
    node = load_config(sd_config_path("sd_xl_refiner.yaml"))["model"]
    params = node["params"]
    params["unet_config"]["params"] = {**tiny_unet_params(micro=5), "context_dim": BIG_G}
    params["cond_stage_config"] = tiny_encoders_node(refiner=True)
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    params["image_size"] = 8
    model = instantiate(node).eval()
    unet: UNetModel = model.unet
    unet.load_state_dict(
        from_diffusers(theirs.state_dict(), sdxl_unet_names(list(unet.state_dict()), unet.num_res_blocks)), strict=True
    )
    model.text_encoder.load_state_dict(text_towers[0]["refiner"].state_dict())
    base_pipe = text_towers[1]
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(block_out_channels=(32, 32), latent_channels=4, norm_num_groups=32),  # scale factor 2
        text_encoder=None,
        text_encoder_2=base_pipe.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base_pipe.tokenizer_2,
        unet=theirs,
        scheduler=sd_ddim(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    return model, node, pipe


def test_the_refiner_hand_off_at_0_8_equals_diffusers(tiny_sdxl, text_towers, refiners):
    """Base to 0.8 then refiner: 8 of 10 DDIM steps (t >= 200) on the base, 2 on the refiner, equal to diffusers'
    denoising_end=0.8 / denoising_start=0.8 from the same latents; the refiner changes the result."""
    from diffusers import AutoencoderKL

    base, _ = tiny_sdxl
    refiner, _, refiner_pipe = refiners
    base_pipe = text_towers[1]
    base_pipe.scheduler = sd_ddim()
    base_pipe.vae = AutoencoderKL(block_out_channels=(32, 32), latent_channels=4, norm_num_groups=32)
    base_pipe.vae_scale_factor = 2  # 8 x 8 latents are 16 px, as ours: the sizes of the vector agree
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    common = {"num_inference_steps": 10, "guidance_scale": 5.0, "output_type": "latent"}
    with torch.no_grad():
        handed = base_pipe(PROMPTS, height=16, width=16, latents=noise, denoising_end=0.8, **common).images
        theirs = refiner_pipe(PROMPTS, image=handed, denoising_start=0.8, **common).images
        kwargs = {"steps": 10, "guidance_scale": 5.0, "sampler": "ddim", "latents": noise, "progress": False}
        ours = sdxl_txt2img(base, PROMPTS, "", 16, 16, refiner=refiner, switch=0.8, output="latent", **kwargs)
        base_only = sdxl_txt2img(base, PROMPTS, "", 16, 16, output="latent", **kwargs)
        other_switch = sdxl_txt2img(base, PROMPTS, "", 16, 16, refiner=refiner, switch=0.5, output="latent", **kwargs)
    assert base_steps(base, get_sigmas(base.alphas_cumprod, 10, to_zero=False), 0.8) == 8
    assert rel_err(ours, theirs) <= TOLERANCE
    assert rel_err(base_only, theirs) > 100 * TOLERANCE  # the refiner's steps reach the result
    assert rel_err(other_switch, theirs) > 100 * TOLERANCE


def test_micro_conditionings_are_options_and_reach_the_image(tiny_sdxl, text_towers):
    """Original size, crop and target size given as diffusers' are, with its same latents."""
    base, _ = tiny_sdxl
    base_pipe = text_towers[1]
    base_pipe.scheduler = sd_ddim()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    micro = SDXLMicro(original_size=(512, 384), crop=(16, 8), target_size=(1024, 768))
    with torch.no_grad():
        theirs = base_pipe(
            PROMPTS[:1],
            height=16,
            width=16,
            num_inference_steps=3,
            guidance_scale=5.0,
            latents=noise,
            output_type="latent",
            original_size=(512, 384),
            crops_coords_top_left=(16, 8),
            target_size=(1024, 768),
        ).images
        kwargs = {"steps": 3, "guidance_scale": 5.0, "sampler": "ddim", "latents": noise, "progress": False}
        ours = sdxl_txt2img(base, PROMPTS[:1], "", 16, 16, micro=micro, output="latent", **kwargs)
        default = sdxl_txt2img(base, PROMPTS[:1], "", 16, 16, output="latent", **kwargs)
    assert rel_err(ours, theirs) <= TOLERANCE
    assert rel_err(default, theirs) > 10 * TOLERANCE
    assert micro.record() == {"original_size": (512, 384), "crop": (16, 8), "target_size": (1024, 768)}


def test_a1111_step_fraction_maps_to_the_same_base_steps(tiny_sdxl):
    """A1111 switches at the first step whose completed ratio reaches the fraction: the base runs
    ceil(fraction * steps) steps."""
    base, _ = tiny_sdxl
    for steps, fraction, expected in ((10, 0.8, 8), (10, 0.75, 8), (20, 0.8, 16), (7, 0.5, 4), (30, 0.1, 3)):
        switch = switch_from_step_fraction(fraction, steps)
        sigmas = get_sigmas(base.alphas_cumprod, steps, to_zero=False)
        assert base_steps(base, sigmas, switch) == expected, (steps, fraction, switch)


def test_a1111_metadata_with_a_refiner_reads_and_writes_the_step_fraction(tiny_sdxl):
    """'Refiner switch at: 0.8' of an A1111 text becomes our timestep fraction running its 8 of 10 base steps; our
    settings write A1111's step fraction back."""
    from ldm.io.infotext import InfotextError, format_infotext, settings_from_infotext

    base, _ = tiny_sdxl
    text = "a cat\nSteps: 10, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1024x1024, Refiner: sd_xl_refiner_1.0, "
    settings = with_refiner_switch(settings_from_infotext(text + "Refiner switch at: 0.8"))
    assert settings["refiner_name"] == "sd_xl_refiner_1.0" and settings["refiner_switch_at_steps"] == 0.8
    assert base_steps(base, get_sigmas(base.alphas_cumprod, 10), settings["refiner_switch"]) == 8
    written = format_infotext({"prompt": "a", "steps": 10, "refiner_steps": 2, "refiner_file": "dir/ref.safetensors"})
    assert "Refiner: ref, Refiner switch at: 0.8" in written
    with pytest.raises(InfotextError, match="Refiner switch at"):
        settings_from_infotext(text + "Refiner switch at: 1.5")


def test_bad_switches_and_micro_values_are_refused_in_one_line(tiny_sdxl, refiners):
    base, _ = tiny_sdxl
    for switch in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(RefinerError, match="strictly between 0 and 1"):
            sdxl_txt2img(base, "a", refiner=refiners[0], switch=switch, steps=2, progress=False)
    with pytest.raises(InvalidOptionError, match="original size must be two whole numbers"):
        sdxl_txt2img(base, "a", micro=SDXLMicro(original_size=(-1, 5)), steps=2, progress=False)


@pytest.fixture(scope="module")
def sdxl_files(tiny_sdxl, refiners, tmp_path_factory):
    """A folder with base.safetensors and refiner.safetensors, each loadable alone (its config in its metadata)."""
    folder = tmp_path_factory.mktemp("sdxl-files")
    for model, node, name in ((*tiny_sdxl, "base"), (*refiners[:2], "refiner")):
        meta = {"ldm_config": json.dumps({"model": node})}
        save_state_dict(model.original_state_dict(), folder / f"{name}.safetensors", metadata=meta)
    return folder


def test_ldm_txt2img_with_a_refiner_and_micro_options(sdxl_files, tmp_path, monkeypatch, capsys):
    """`ldm txt2img --ckpt base --refiner refiner --refiner-switch 0.6 --original-size ... --crop ...`: an image whose
    settings record the hand-off and the micro-conditionings; a switch outside (0, 1) is refused in one line."""
    import shutil

    from ldm.io.infotext import settings_from_png

    for name in ("base", "refiner"):
        shutil.copy(sdxl_files / f"{name}.safetensors", tmp_path)
    common = ["txt2img", "a red apple", "--ckpt", "base.safetensors", "--H", "16", "--W", "24", "--steps", "4"]
    common += ["--seed", "5", "--no-progress", "--refiner", "refiner.safetensors"]
    monkeypatch.chdir(
        tmp_path
    )  # the real command, in this process (ldm.interfaces.cli.main.main restores what it changes)
    good = ["--refiner-switch", "0.6", "--original-size", "2048x1536", "--crop", "0,32", "--target-size", "1024x768"]
    assert cli.main(common + good + ["--aesthetic-score", "7", "--outdir", "out"]) == 0
    png = tmp_path / "out" / "samples" / "00000.png"
    assert Image.open(png).size == (24, 16) and np.asarray(Image.open(png)).std() > 0
    settings = settings_from_png(png)
    assert settings["refiner_switch"] == 0.6 and settings["refiner_file"] == "refiner.safetensors"
    assert settings["original_size"] == [1536, 2048] and settings["crop"] == [0, 32]
    assert settings["refiner_aesthetic_score"] == 7.0 and settings["refiner_steps"] == 2
    capsys.readouterr()
    assert cli.main(common + ["--refiner-switch", "1.2"]) == 2
    stderr = capsys.readouterr().err
    assert "error: the refiner switch must be a fraction strictly between 0 and 1" in stderr
    assert "Traceback" not in stderr


def test_img2img_and_inpainting_condition_on_the_images_size(tiny_sdxl, refiners, monkeypatch):
    """img2img (with the base, and with the refiner: refining an image), inpainting by latent blending (any SDXL
    model) and with a 9-channel SDXL inpainting U-Net give the vector of the input's size, not the model's default,
    and keep the input's size."""
    import copy

    import ldm.tasks.img2img
    import ldm.tasks.inpaint
    from ldm.models.sdxl_conditioning import sdxl_conditions

    base, node = tiny_sdxl
    seen = []

    def spy(encoders, prompts, negatives, height, width, micro=None):
        seen.append((height, width))
        return sdxl_conditions(encoders, prompts, negatives, height, width, micro)

    monkeypatch.setattr("ldm.models.sdxl_conditioning.sdxl_conditions", spy)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((4, 4), (8, 8))))
    made = ldm.tasks.img2img.img2img(base, picture, "a cat", strength=0.5, steps=4, sampler="ddim", progress=False)
    blended = ldm.tasks.inpaint.inpaint(base, picture, mask, "a cat", steps=4, mode="blend", progress=False)
    inpainting_node = copy.deepcopy(node)
    inpainting_node["params"]["conditioning_key"] = "hybrid"
    inpainting_node["params"]["unet_config"]["params"]["in_channels"] = 9
    torch.manual_seed(0)
    inpainter = instantiate(inpainting_node).eval()
    painted = ldm.tasks.inpaint.inpaint(inpainter, picture, mask, "a cat", steps=2, mode="model", progress=False)
    refined = ldm.tasks.img2img.img2img(refiners[0], picture, "a cat", strength=0.3, steps=4, progress=False)  # refiner
    assert seen == [(16, 24)] * 4
    assert made[0].size == blended[0].size == painted[0].size == refined[0].size == (24, 16)
    assert painted.settings["inpaint_mode"] == "model" and blended.settings["inpaint_mode"] == "blend"


def test_the_app_text_page_runs_the_refiner_and_micro_options(sdxl_files, monkeypatch):
    """The text-to-image page of an SDXL model shows the SDXL controls; a refiner and a crop given there reach the
    image's settings."""
    from streamlit.testing.v1 import AppTest

    import ldm.interfaces.app
    from ldm.interfaces.app.state import ENV_CKPT, ENV_CONFIG

    monkeypatch.delenv(ENV_CONFIG, raising=False)
    monkeypatch.setenv(ENV_CKPT, str(sdxl_files / "base.safetensors"))
    page = Path(ldm.interfaces.app.__file__).resolve().parent / "views" / "text.py"
    at = AppTest.from_file(str(page), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    at.text_input(key="t2i_refiner").set_value(str(sdxl_files / "refiner.safetensors"))
    at.text_input(key="t2i_crop").set_value("8,16")
    at.number_input(key="t2i_steps").set_value(4)
    at.button(key="t2i_go").click().run()
    assert not at.exception and not [e.value for e in at.error], [e.value for e in at.error]
    _, settings = at.session_state["t2i_result"]
    assert settings["refiner_file"] == "refiner.safetensors" and settings["refiner_switch"] == 0.8
    assert settings["crop"] == (8, 16) and settings["refiner_steps"] == 1


def test_a_walk_between_sdxl_prompts_starts_at_the_first_prompts_image(tiny_sdxl):
    """Walk frames interpolate SDXL's vector with the context: frame 0 is txt2img's image of the first prompt."""
    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.txt2img import txt2img
    from ldm.tasks.walk import walk_frames

    base, _ = tiny_sdxl
    options = SamplingOptions(steps=3, sampler="ddim")
    frames = walk_frames(base, "a cat", "a dog", seed_a=3, frames=2, options=options, progress=False)
    alone = txt2img(base, "a cat", seed=3, options=options, progress=False)
    other = txt2img(base, "a dog", seed=3, options=options, progress=False)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(alone[0]))
    assert np.array_equal(np.asarray(frames[1]), np.asarray(other[0]))


def their_img2img(text_towers, **config):
    """diffusers' StableDiffusionXLImg2ImgPipeline over the tiny base (its towers and U-Net), 16 px per 8 latents."""
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

    base_pipe = text_towers[1]
    return StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(block_out_channels=(32, 32), latent_channels=4, norm_num_groups=32),  # scale factor 2
        text_encoder=base_pipe.text_encoder,
        text_encoder_2=base_pipe.text_encoder_2,
        tokenizer=base_pipe.tokenizer,
        tokenizer_2=base_pipe.tokenizer_2,
        unet=base_pipe.unet,
        scheduler=sd_ddim(),
        requires_aesthetics_score=False,
        add_watermarker=False,
        **config,
    )


def decoded_latents(model, monkeypatch) -> list[torch.Tensor]:
    """What `model` decodes from now on (the latents a task ends with), recorded."""
    seen, decode = [], model.decode_latent
    monkeypatch.setattr(model, "decode_latent", lambda z: seen.append(z.clone()) or decode(z))
    return seen


def test_img2img_hand_off_equals_diffusers_img2img_pipelines(tiny_sdxl, text_towers, refiners, monkeypatch):
    """img2img at strength 0.6 of 10 DDIM steps with a refiner at 0.8: the base runs the strength's steps down to
    t >= 200 (4), the refiner the last 2, equal to diffusers' base img2img pipeline with denoising_end=0.8 and its
    refiner img2img pipeline with denoising_start=0.8 from the same image latents and noise; the refiner decodes."""
    from ldm.tasks.img2img import img2img_latents

    base, _ = tiny_sdxl
    refiner, _, refiner_pipe = refiners
    refiner_pipe.scheduler = sd_ddim()
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    seed, common = 11, {"num_inference_steps": 10, "guidance_scale": 5.0, "output_type": "latent"}
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(PROMPTS))]  # ours: image i, seed + i
    with torch.no_grad():
        handed = their_img2img(text_towers)(
            PROMPTS, image=x0, strength=0.6, denoising_end=0.8, generator=generators, **common
        ).images
        theirs = refiner_pipe(PROMPTS, image=handed, denoising_start=0.8, **common).images
    refined, based = decoded_latents(refiner, monkeypatch), decoded_latents(base, monkeypatch)
    kwargs = {"strength": 0.6, "seed": seed, "steps": 10, "guidance_scale": 5.0, "sampler": "ddim", "progress": False}
    made = img2img_latents(base, x0, PROMPTS, refiner=refiner, switch=0.8, **kwargs)
    alone = img2img_latents(base, x0, PROMPTS, **kwargs)
    assert rel_err(refined[0], theirs) <= TOLERANCE
    assert rel_err(based[0], theirs) > 100 * TOLERANCE  # the refiner's steps reach the result
    assert made.settings["refiner_switch"] == 0.8 and made.settings["refiner_steps"] == 2
    assert "refiner_switch" not in alone.settings and made[0].size == (16, 16)


def test_a_crop_given_to_img2img_reaches_the_unets_vector_as_diffusers(tiny_sdxl, text_towers, monkeypatch):
    """micro=SDXLMicro(crop=..., original_size=...) of img2img is diffusers' crops_coords_top_left / original_size of
    its img2img pipeline: the same vector, the same latents; the default crop gives another vector."""
    from ldm.tasks.img2img import img2img_latents

    base, _ = tiny_sdxl
    vectors, forward = [], base.unet.forward
    monkeypatch.setattr(base.unet, "forward", lambda *a, **k: vectors.append(k["y"]) or forward(*a, **k))
    based = decoded_latents(base, monkeypatch)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = their_img2img(text_towers)(
            PROMPTS[:1], image=x0, strength=0.5, num_inference_steps=4, guidance_scale=5.0, output_type="latent",
            generator=torch.Generator().manual_seed(3), crops_coords_top_left=(16, 8), original_size=(512, 384),
        ).images  # fmt: skip
    kwargs = {"strength": 0.5, "seed": 3, "steps": 4, "guidance_scale": 5.0, "sampler": "ddim", "progress": False}
    made = img2img_latents(base, x0, PROMPTS[:1], micro=SDXLMicro(crop=(16, 8), original_size=(512, 384)), **kwargs)
    cropped = vectors[-1]
    img2img_latents(base, x0, PROMPTS[:1], **kwargs)
    assert rel_err(based[0], theirs) <= TOLERANCE
    assert not torch.equal(cropped, vectors[-1])  # the crop's numbers are in the vector
    assert torch.equal(cropped[:, :POOLED], vectors[-1][:, :POOLED])  # and the pooled text is not changed
    assert made.settings["crop"] == (16, 8) and made.settings["original_size"] == (512, 384)


def test_ldm_img2img_inpaint_and_outpaint_take_the_refiner_and_micro_options(sdxl_files, tmp_path, monkeypatch):
    """`ldm img2img / inpaint / outpaint --ckpt base --refiner refiner --crop ... --original-size ...`: images whose
    settings record the hand-off and the micro-conditionings; inpainting keeps the pixels outside the mask."""
    import shutil

    from ldm.io.infotext import settings_from_png

    for name in ("base", "refiner"):
        shutil.copy(sdxl_files / f"{name}.safetensors", tmp_path)
    monkeypatch.chdir(tmp_path)
    photo = np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(photo).save("photo.png")
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((4, 4), (8, 8)))).save("mask.png")
    model = ["--ckpt", "base.safetensors", "--steps", "4", "--seed", "5", "--no-progress", "--no-grid"]
    refined = ["--refiner", "refiner.safetensors", "--refiner-switch", "0.6"]
    made = ["img2img", "photo.png", "a red apple", *model, *refined, "--crop", "0,8", "--original-size", "48x32"]
    assert cli.main([*made, "--outdir", "i2i"]) == 0
    settings = settings_from_png("i2i/samples/00000.png")
    # 4 steps at t = 751, 501, 251, 1; strength 0.75 starts at 501; the cutoff 400: the base runs 1, the refiner 2
    assert settings["refiner_switch"] == 0.6 and settings["refiner_steps"] == 2
    assert settings["crop"] == [0, 8] and settings["original_size"] == [32, 48] and settings["task"] == "img2img"
    painted = ["inpaint", "photo.png", "mask.png", "a red apple", *model, *refined, "--aesthetic-score", "7"]
    assert cli.main([*painted, "--outdir", "inp"]) == 0
    settings = settings_from_png("inp/samples/00000.png")
    assert settings["refiner_aesthetic_score"] == 7.0 and settings["refiner_steps"] == 2
    kept = np.asarray(Image.open("inp/samples/00000.png"))
    assert np.array_equal(kept[:4], photo[:4]) and not np.array_equal(kept[4:12, 8:16], photo[4:12, 8:16])
    grown = ["outpaint", "photo.png", "a red apple", *model, "--extend", "right=8", "--target-size", "64x32"]
    assert cli.main([*grown, "--outdir", "out"]) == 0
    settings = settings_from_png("out/samples/00000.png")
    assert settings["target_size"] == [32, 64] and settings["task"] == "outpaint" and "refiner_switch" not in settings


def test_micro_options_and_the_switch_come_back_from_the_png(sdxl_files, tmp_path, monkeypatch, caplog, capsys):
    """`ldm txt2img --from-png` of an image made with --crop, --original-size, --aesthetic-score and a refiner makes
    it again, pixel for pixel, given the refiner; a crop given on the command line wins over the image's; without
    --refiner it says so; a malformed crop in the settings is refused in one line."""
    import shutil

    from ldm.io.images import save_png

    for name in ("base", "refiner"):
        shutil.copy(sdxl_files / f"{name}.safetensors", tmp_path)
    monkeypatch.chdir(tmp_path)
    model = ["--ckpt", "base.safetensors", "--H", "16", "--W", "24", "--no-progress", "--no-grid"]
    refiner = ["--refiner", "refiner.safetensors"]
    micro = ["--crop", "0,8", "--original-size", "48x32", "--aesthetic-score", "7", "--refiner-switch", "0.6"]
    assert cli.main(["txt2img", "a red apple", *model, *refiner, *micro, "--steps", "4", "--outdir", "a"]) == 0
    first = np.asarray(Image.open("a/samples/00000.png"))
    assert cli.main(["txt2img", "--from-png", "a/samples/00000.png", *model, *refiner, "--outdir", "b"]) == 0
    assert np.array_equal(np.asarray(Image.open("b/samples/00000.png")), first)
    crop = ["--crop", "0,0"]
    assert cli.main(["txt2img", "--from-png", "a/samples/00000.png", *model, *refiner, *crop, "--outdir", "c"]) == 0
    assert not np.array_equal(np.asarray(Image.open("c/samples/00000.png")), first)
    caplog.clear()
    assert cli.main(["txt2img", "--from-png", "a/samples/00000.png", *model, "--outdir", "d"]) == 0
    assert "was finished by a refiner (refiner.safetensors); give --refiner FILE" in caplog.text
    save_png(Image.fromarray(first), Path("bad.png"), {"prompt": "a", "seed": 1, "crop": [0, 8, 16]})
    capsys.readouterr()
    assert cli.main(["txt2img", "--from-png", "bad.png", *model, "--outdir", "e"]) == 2
    stderr = capsys.readouterr().err
    assert "bad.png: setting 'crop' must be two whole numbers >= 0, got [0, 8, 16]" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_the_9_channel_inpainter_hands_off_to_a_blending_refiner(tiny_sdxl, refiners, monkeypatch):
    """An SDXL inpainting U-Net (9 channels) runs the steps above the switch, the refiner (4 channels, so it blends
    the known area as diffusers' inpainting pipeline does) the rest with its own micro-conditionings; inpainting only
    the masked area passes them on too; pixels outside the mask are kept."""
    import copy

    from ldm.models.sdxl_conditioning import micro_embedding
    from ldm.tasks.inpaint import inpaint

    _, node = tiny_sdxl
    refiner = refiners[0]
    inpainting_node = copy.deepcopy(node)
    inpainting_node["params"]["conditioning_key"] = "hybrid"
    inpainting_node["params"]["unet_config"]["params"]["in_channels"] = 9
    torch.manual_seed(0)
    inpainter = instantiate(inpainting_node).eval()
    vectors, forward = [], refiner.unet.forward
    monkeypatch.setattr(refiner.unet, "forward", lambda *a, **k: vectors.append(k["y"]) or forward(*a, **k))
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((4, 4), (8, 8))))
    kwargs = {"steps": 4, "sampler": "ddim", "progress": False, "refiner": refiner, "mode": "model"}
    made = inpaint(inpainter, picture, mask, "a cat", refiner_micro=SDXLMicro(aesthetic_score=9.0), **kwargs)
    # 4 steps at t = 751, 501, 251, 1; the cutoff at 0.8 is 200: the inpainter runs 3, the refiner 1 (2 calls: CFG)
    assert made.settings["refiner_steps"] == 1 and made.settings["refiner_aesthetic_score"] == 9.0
    assert made.settings["inpaint_mode"] == "model" and len(vectors) == 1  # one batched call of both sides
    scores = micro_embedding(torch.tensor([[9.0], [2.5]]))  # the refiner's last number: both sides' scores
    for score in scores:
        assert any(torch.allclose(row[-256:].float(), score, atol=1e-6) for row in vectors[0])
    kept = np.asarray(made[0])
    assert np.array_equal(kept[:4], np.asarray(picture)[:4])
    area = inpaint(inpainter, picture, mask, "a cat", inpaint_area="masked", switch=0.5, **kwargs)
    assert area.settings["inpaint_area"] == "masked" and area.settings["refiner_switch"] == 0.5
    assert area.settings["refiner_steps"] == 2  # t = 251, 1 below the cutoff 500


def test_the_app_edit_page_gives_img2img_the_refiner_and_micro_options(sdxl_files, monkeypatch):
    """The edit page of an SDXL model shows the SDXL controls for img2img and inpainting; a refiner and a crop given
    there reach img2img (the page runs in this process: the call is recorded)."""
    from streamlit.testing.v1 import AppTest

    import ldm.interfaces.app
    import ldm.tasks.img2img
    from ldm.interfaces.app.state import ENV_CKPT, ENV_CONFIG

    calls, real = [], ldm.tasks.img2img.img2img
    monkeypatch.setattr(ldm.tasks.img2img, "img2img", lambda *a, **k: calls.append(k) or real(*a, **k))
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    monkeypatch.setenv(ENV_CKPT, str(sdxl_files / "base.safetensors"))
    page = Path(ldm.interfaces.app.__file__).resolve().parent / "views" / "edit.py"
    at = AppTest.from_file(str(page), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    at.text_input(key="edit_refiner").set_value(str(sdxl_files / "refiner.safetensors"))
    at.text_input(key="edit_crop").set_value("0,8")
    at.number_input(key="edit_steps").set_value(4)
    at.button(key="edit_go").click().run()
    assert not at.exception and not [e.value for e in at.error], [e.value for e in at.error]
    assert at.session_state["edit_result"][0] == "img2img" and len(calls) == 1
    assert calls[0]["micro"].crop == (0, 8) and calls[0]["switch"] == 0.8
    assert calls[0]["refiner"].identity["model_file"] == "refiner.safetensors"
    at.radio(key="edit_mode").set_value("inpaint").run()
    assert not at.exception and at.text_input(key="edit_crop").value == "0,8"


def test_a_walk_takes_the_micro_conditionings(tiny_sdxl, sdxl_files, tmp_path, monkeypatch):
    """walk_frames(micro=...): frame 0 is sdxl_txt2img's image with the same micro-conditionings, not the default's;
    `ldm walk --crop` passes them on, and a walk takes no refiner."""
    import shutil

    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.walk import walk_frames

    base, _ = tiny_sdxl
    options = SamplingOptions(steps=3, sampler="ddim")
    micro = SDXLMicro(crop=(8, 0), original_size=(64, 48))
    frames = walk_frames(base, "a cat", "a dog", seed_a=3, frames=2, options=options, progress=False, micro=micro)
    alone = sdxl_txt2img(base, "a cat", seed=3, options=options, micro=micro, progress=False)
    default = sdxl_txt2img(base, "a cat", seed=3, options=options, progress=False)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(alone[0]))
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(default[0]))
    assert frames.settings["crop"] == (8, 0)
    shutil.copy(sdxl_files / "base.safetensors", tmp_path)
    monkeypatch.chdir(tmp_path)
    seen, real = [], walk_frames
    monkeypatch.setattr("ldm.interfaces.cli.walk.walk_frames", lambda *a, **k: seen.append(k["micro"]) or real(*a, **k))
    walk = ["walk", "a cat", "a dog", "--ckpt", "base.safetensors", "--frames", "2", "--steps", "2", "--no-progress"]
    assert cli.main([*walk, "--crop", "8,0", "--original-size", "48x64", "--out", "walk.gif"]) == 0
    assert seen == [micro] and Path("walk.gif").stat().st_size > 0
    with pytest.raises(SystemExit):  # argparse: an unknown option
        cli.main([*walk, "--refiner", "base.safetensors"])
