"""SD 2 depth-to-image (issue 39 item 6, ldm/tasks/depth.py): the depth input by hand-derived values, img2img with a
depth map on a tiny 5-channel model, parity with diffusers' StableDiffusionDepth2ImgPipeline given the same weights,
latents and depth map, a tiny original-layout file whose MiDaS tensors are skipped, and the one-line refusals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_depth_config, tiny_model, tiny_model_from, write_tiny_model_files
from PIL import Image

from ldm.formats.detect import detect_file
from ldm.formats.load import load_model
from ldm.io.checkpoint import save_state_dict
from ldm.io.infotext import settings_from_png
from ldm.sampling.options import SamplingOptions
from ldm.tasks.base import WrongModelError, resolve_options, sample_seeded
from ldm.tasks.depth import DepthMapError, depth_condition, with_depth
from ldm.tasks.img2img import img2img, prepare
from ldm.tasks.inpaint import inpaint
from ldm.tasks.txt2img import txt2img

PROMPTS = ["a red apple on a table", "emoji of a cat, smiling"]
RUNNER = Path(__file__).parents[1] / "cli_runner.py"


@pytest.fixture(scope="module")
def depth_model():
    """The tiny depth model as built from v2-midas-inference.yaml's names (its DDIM variant "sd", as diffusers')."""
    return tiny_model_from(tiny_depth_config(original=True), seed=1)


def picture() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))


def ramp(width: int, height: int) -> np.ndarray:
    return np.tile(np.arange(width, dtype=np.float32), (height, 1))


def test_the_depth_input_is_the_map_at_latent_size_scaled_to_minus_one_one(tmp_path):
    # At the latent's own size bicubic resizing is the identity: min 0 and max 40 become -1 and 1.
    same = depth_condition(np.array([[0, 10], [20, 40]], dtype=np.float32), (2, 2))
    assert torch.equal(same, torch.tensor([[[[-1.0, -0.5], [0.0, 1.0]]]]))
    # Halving a ramp 0..7: bicubic (a = -0.75) samples at 0.5, 2.5, 4.5, 6.5; inside, the kernel keeps a ramp
    # (2.5, 4.5); at the edges the clamped neighbours give 0.40625 and 6.59375. Scaled by those: -1, -32/99, 32/99, 1.
    halved = depth_condition(ramp(8, 8), (4, 4))
    expected = torch.tensor([-1.0, -32 / 99, 32 / 99, 1.0]).expand(4, 4)
    torch.testing.assert_close(halved[0, 0], expected, rtol=0, atol=1e-6)
    # An affine change of the map (MiDaS's scale is relative) changes nothing; a PNG of it reads the same.
    torch.testing.assert_close(depth_condition(3 * ramp(8, 8) + 5, (4, 4)), halved, rtol=0, atol=1e-6)
    Image.fromarray((ramp(8, 8) * 30).astype(np.uint8)).save(tmp_path / "depth.png")
    torch.testing.assert_close(depth_condition(tmp_path / "depth.png", (4, 4)), halved, rtol=0, atol=1e-6)
    with pytest.raises(DepthMapError, match="one value everywhere"):
        depth_condition(np.full((8, 8), 7.0, dtype=np.float32), (4, 4))
    with pytest.raises(DepthMapError, match="one value everywhere"):  # resized, its rounding is no depth either
        depth_condition(np.full((16, 16), 255.0, dtype=np.float32), (3, 4))


def test_img2img_with_a_depth_map_follows_the_map_and_repeats(depth_model):
    kwargs = {"strength": 0.7, "steps": 4, "progress": False}
    first = img2img(depth_model, picture(), "a cat", depth_map=ramp(40, 40), **kwargs)
    again = img2img(depth_model, picture(), "a cat", depth_map=ramp(40, 40), **kwargs)
    other = img2img(depth_model, picture(), "a cat", depth_map=ramp(40, 40).T.copy(), **kwargs)
    a, b, c = (np.asarray(made[0], dtype=np.float32) for made in (first, again, other))
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0  # the depth reaches the U-Net
    assert first.settings["task"] == "img2img" and first.settings["strength"] == 0.7


def test_refusals_are_one_line(depth_model):
    with pytest.raises(DepthMapError) as err:
        img2img(depth_model, picture(), "a cat", steps=2, progress=False)
    assert str(err.value).startswith("this depth model needs --depth-map") and "\n" not in str(err.value)
    with pytest.raises(DepthMapError, match="--depth-map needs a depth model"):
        img2img(tiny_model(), picture(), "a cat", steps=2, progress=False, depth_map=ramp(8, 8))
    with pytest.raises(WrongModelError, match="txt2img needs a text-to-image model, not a 'depth' model"):
        txt2img(depth_model, "a cat", steps=2, progress=False)
    with pytest.raises(WrongModelError, match="inpainting needs"):
        inpaint(depth_model, picture(), np.ones((32, 32), np.float32), "a cat", steps=2, progress=False)


def test_an_original_layout_file_loads_with_its_midas_tensors_skipped(depth_model, tmp_path, caplog):
    """The YAML as the reference writes it (LatentDepth2ImageDiffusion, conditioning_key hybrid, its MiDaS node)
    and a file with depth_model.* tensors beside the model's: the estimator is skipped with one note."""
    import yaml

    state = {**depth_model.original_state_dict(), "depth_model.model.scratch.output_conv.0.weight": torch.ones(2, 2)}
    save_state_dict(state, tmp_path / "depth.safetensors")
    # Told by its tensors alone (no YAML beside it): the tiny U-Net and text tower, a VAE of SD's four levels.
    vae = {f"first_stage_model.encoder.down.{i}.block.0.conv1.weight": torch.zeros(1) for i in range(4)}
    unvae = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    save_state_dict({**unvae, **vae}, tmp_path / "alone.safetensors")
    found = detect_file(tmp_path / "alone.safetensors")
    assert (found.family, found.config_name, found.prediction) == ("sd2-depth", "v2-midas-inference.yaml", "eps")
    assert {"model channels 32", "context dim 32"} <= set(found.resized)
    (tmp_path / "depth.yaml").write_text(yaml.safe_dump(tiny_depth_config(original=True)))
    with caplog.at_level(logging.INFO):
        loaded = load_model(tmp_path / "depth.yaml", tmp_path / "depth.safetensors")
    notes = [r.getMessage() for r in caplog.records if "depth_model" in r.getMessage()]
    assert notes == ["skipped the file's MiDaS depth estimator (1 depth_model.* tensors): depth maps are given"]
    assert (loaded.conditioning_key, loaded.unet.in_channels) == ("depth", 5)
    for (key, ours), theirs in zip(depth_model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(ours, theirs), key


def test_the_same_as_diffusers_depth2img_pipeline(depth_model):
    """Our img2img steps (prepare, with_depth, sample_seeded: what img2img_latents runs) against diffusers'
    StableDiffusionDepth2ImgPipeline with the same U-Net weights in its layout, the same text states, clean latents,
    per-image seeded noise and depth map: 6 of 10 DDIM steps (strength 0.6), guidance 5."""
    diffusers = pytest.importorskip("diffusers")

    from ldm.formats.diffusers_export import unet_config
    from ldm.io.diffusers_keys import to_diffusers, unet_names

    params = tiny_depth_config()["model"]["params"]
    unet = diffusers.UNet2DConditionModel(**unet_config(params["unet_config"]["params"], params["image_size"]))
    ours_unet = depth_model.unet.state_dict()
    unet.load_state_dict(to_diffusers(ours_unet, unet_names(list(ours_unet), depth_model.unet.num_res_blocks)))
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = diffusers.StableDiffusionDepth2ImgPipeline(
        vae=diffusers.AutoencoderKL(block_out_channels=(32,), norm_num_groups=32),  # unused: latents in and out
        text_encoder=None,
        tokenizer=None,
        unet=unet.eval(),
        scheduler=scheduler,
        depth_estimator=None,
        feature_extractor=None,
    )
    pipe.vae_scale_factor = 1  # the image given is the latent, so the depth map goes to its own size
    pipe.set_progress_bar_config(disable=True)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    depth = torch.from_numpy(ramp(20, 20) + ramp(20, 20).T ** 1.5)[None]  # [1, H, W], as diffusers takes it
    seed, n = 9, len(PROMPTS)
    with torch.no_grad():
        context, empty = depth_model.encode_text(PROMPTS), depth_model.encode_text([""] * n)
        theirs = pipe(
            prompt_embeds=context,
            negative_prompt_embeds=empty,
            image=x0.expand(n, -1, -1, -1),
            depth_map=depth.expand(n, -1, -1),
            strength=0.6,
            num_inference_steps=10,
            guidance_scale=5.0,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(n)],
            output_type="latent",
        ).images
        options = resolve_options(SamplingOptions(sampler="ddim", steps=10, guidance_scale=5.0), {}, model=depth_model)
        start = x0.expand(n, -1, -1, -1)

        def ours(depth_map: torch.Tensor) -> torch.Tensor:
            conditioning = with_depth(depth_model, prepare(depth_model, PROMPTS, [""] * n, options), depth_map, start)
            return sample_seeded(depth_model, conditioning, options, seed, start.shape, x0=start, strength=0.6)

        same, flipped = ours(depth), ours(depth.flip(-1))
    torch.testing.assert_close(same, theirs, rtol=1e-4, atol=1e-4)
    assert (flipped - theirs).abs().max() > 1e-2  # the depth map decides the result


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, depth_model) -> tuple[Path, list[dict]]:
    """ldm img2img with the tiny depth model and --depth-map, then txt2img --from-png of its image (the refusals
    without a depth map, or with one for another model, are in tests/interfaces/test_bad_inputs.py)."""
    root = tmp_path_factory.mktemp("depth-cli")
    write_tiny_model_files(root, "depth", tiny_depth_config(original=True), depth_model)
    picture().save(root / "photo.png")
    Image.fromarray((ramp(24, 24) * 10).astype(np.uint8)).save(root / "near-left.png")
    depth = ["--config", "depth.yaml", "--ckpt", "depth.safetensors", "--depth-map", "near-left.png"]
    cases = [
        ["img2img", "photo.png", "a cat", "--steps", "2", "--strength", "0.5", "--no-progress", "--no-grid", *depth],
        ["txt2img", "--from-png", "outputs/samples/00000.png", "--outdir", "again"],
    ]
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


def test_cli_writes_the_depth_map_into_the_image_settings(cli_results):
    root, results = cli_results
    assert results[0]["rc"] == 0, results[0]["stderr"][-3000:]
    settings = settings_from_png(root / "outputs" / "samples" / "00000.png")
    assert (settings["depth_map"], settings["init_image"], settings["strength"]) == ("near-left.png", "photo.png", 0.5)


def test_cli_from_png_refuses_a_depth_image_in_one_line(cli_results):
    result = cli_results[1][1]
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(errors) == 1 and "was made from an image (it has a denoising strength)" in errors[0]


def test_no_diffusers_folder_is_written_for_a_depth_model(depth_model, tmp_path):
    from ldm.formats.sdxl_diffusers import write_any_folder
    from ldm.io.diffusers_files import DiffusersFolderError

    with pytest.raises(DiffusersFolderError, match="a depth-to-image model has no diffusers folder here"):
        write_any_folder(depth_model, tiny_depth_config(original=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()
