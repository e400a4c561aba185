"""SDXL diffusers folders (issue 39): a folder saved by diffusers' own save_pretrained (plain, and sharded fp16-variant
files) loads into ours and makes diffusers' image from the same latents; single file -> folder -> single file gives
identical tensors; the refiner's and the 9-channel inpainting model's folders; bad folders in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_sdxl
import torch
from safetensors.torch import load_file
from test_sdxl import PROMPTS, TOLERANCE, rel_err, tiny_encoders_node, tiny_unet_params

from ldm.core.config import instantiate, load_config
from ldm.formats.detect import sd_config_path
from ldm.formats.load import load_model
from ldm.interfaces.cli import main as cli
from ldm.io.checkpoint import CheckpointError, save_state_dict
from ldm.io.diffusers_files import DiffusersFolderError
from ldm.tasks.sdxl_refiner import sdxl_txt2img

# test_sdxl's tiny models with the same random weights as its diffusers pipeline, as fixtures of this module too
unets, text_towers = test_sdxl.unets, test_sdxl.text_towers


@pytest.fixture(scope="module")
def saved(text_towers, tmp_path_factory):
    """diffusers' tiny SDXL pipeline (DDIM with SD's settings) and the folders its save_pretrained writes: plain,
    and fp16-variant files in shards."""
    from diffusers import DDIMScheduler

    pipe = text_towers[1]
    pipe.scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="leading",
    )  # fmt: skip
    root = tmp_path_factory.mktemp("sdxl-folders")
    pipe.save_pretrained(root / "plain")
    pipe.save_pretrained(root / "sharded", variant="fp16", max_shard_size="2MB")
    return pipe, root


def test_a_folder_saved_by_diffusers_makes_diffusers_image(saved):
    pipe, root = saved
    assert list((root / "sharded" / "text_encoder_2").glob("model.fp16-0000*-of-*.safetensors"))
    ours = load_model(None, root / "plain")
    sharded = load_model(None, root / "sharded")
    assert ours.conditioning_key == "crossattn" and ours.text_encoder.zero_empty_negative
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), sharded.state_dict().values()))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=8, width=8, num_inference_steps=4, guidance_scale=5.0, latents=noise,
                      output_type="np").images  # fmt: skip
        made = sdxl_txt2img(ours, PROMPTS, "", 8, 8, steps=4, guidance_scale=5.0, sampler="ddim", latents=noise,
                            progress=False)  # fmt: skip
        their_latents = pipe(PROMPTS, height=8, width=8, num_inference_steps=4, guidance_scale=5.0, latents=noise,
                             output_type="latent").images  # fmt: skip
        latents = sdxl_txt2img(ours, PROMPTS, "", 8, 8, steps=4, guidance_scale=5.0, sampler="ddim", latents=noise,
                               progress=False, output="latent")  # fmt: skip
    assert rel_err(latents, their_latents) <= TOLERANCE
    mine = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in made])
    assert np.abs(mine - theirs).max() <= 0.51 / 255 + 1e-6  # ours is theirs rounded to 8 bits
    assert theirs.std() > 0.01


def tiny_node(refiner: bool = False, inpainting: bool = False) -> dict:
    node = load_config(sd_config_path("sd_xl_refiner.yaml" if refiner else "sd_xl_base.yaml"))["model"]
    params = node["params"]
    unet = tiny_unet_params(micro=5 if refiner else 6)
    if refiner:
        unet["context_dim"] = 48
    if inpainting:
        unet["in_channels"], params["conditioning_key"] = 9, "hybrid"
    params["unet_config"]["params"] = unet
    params["cond_stage_config"] = tiny_encoders_node(refiner)
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    params["image_size"] = 8
    return node


@pytest.mark.parametrize(
    "kind, pipeline",
    [
        ("base", "StableDiffusionXLPipeline"),
        ("refiner", "StableDiffusionXLImg2ImgPipeline"),
        ("inpainting", "StableDiffusionXLInpaintPipeline"),
    ],
)
def test_single_file_to_folder_to_single_file_is_identical(tmp_path, kind, pipeline):
    """`ldm convert FILE FOLDER --to diffusers` then `ldm convert FOLDER FILE`: every tensor back, identical; the
    folder is its pipeline's, which diffusers' own loader reads."""
    from diffusers import UNet2DConditionModel

    node = tiny_node(refiner=kind == "refiner", inpainting=kind == "inpainting")
    torch.manual_seed(4)
    model = instantiate(node)
    original = model.original_state_dict()
    save_state_dict(original, tmp_path / "in.safetensors", metadata={"ldm_config": json.dumps({"model": node})})
    assert cli.main(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "folder"), "--to", "diffusers"]) == 0
    index = json.loads((tmp_path / "folder" / "model_index.json").read_text())
    assert index["_class_name"] == pipeline and (tmp_path / "folder" / "text_encoder").is_dir() == (kind != "refiner")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "folder" / "unet", local_files_only=True)
    assert unet.config.addition_embed_type == "text_time" and unet.config.in_channels == (
        9 if kind == "inpainting" else 4
    )
    assert cli.main(["convert", str(tmp_path / "folder"), str(tmp_path / "back.safetensors")]) == 0
    back = load_file(tmp_path / "back.safetensors")
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_bad_sdxl_folders_are_refused_in_one_line(saved, tmp_path):
    import shutil

    _, root = saved
    folder = tmp_path / "bad"
    shutil.copytree(root / "plain", folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**cfg, "projection_class_embeddings_input_dim": 999}))
    with pytest.raises(DiffusersFolderError, match="vector is 999 wide") as error:
        load_model(None, folder)
    assert "\n" not in str(error.value)
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(folder / "text_encoder_2" / "model.safetensors")
    tensors["text_model.final_layer_norm.weight"] = torch.ones(7)
    save_state_dict(tensors, folder / "text_encoder_2" / "model.safetensors", {"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: text_encoder.embedders.1.model.ln_final.weight"
    ) as error:
        load_model(None, folder)
    assert "\n" not in str(error.value)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(DiffusersFolderError, match="text_encoder_2/config.json is missing"):
        load_model(None, folder)
