"""Inpainting (dedicated model and blending) and outpainting with tiny models; SD 2 inpainting layout."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_config, tiny_inpaint_config, tiny_inpaint_model, tiny_model, tiny_upscaler_model
from PIL import Image

from ldm.core.config import model_from_config
from ldm.core.masks import EmptyMaskError, MaskSizeError
from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import from_original_keys, load_into, save_state_dict
from ldm.io.images import pil_to_tensor
from ldm.sampling.options import SamplingOptions
from ldm.sampling.samplers import SAMPLERS
from ldm.tasks.base import Conditioning, WrongModelError, prompt_conditions, sample_seeded
from ldm.tasks.editing import StrengthError
from ldm.tasks.inpaint import (
    BlendDenoiser,
    InpaintModeError,
    extend_canvas,
    inpaint,
    outpaint,
    parse_extend,
    resolve_mode,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "stable-diffusion"


@pytest.fixture(scope="module")
def models():
    return {"blend": tiny_model(), "model": tiny_inpaint_model()}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    files = {}
    for kind, cfg, model in (
        ("blend", tiny_config(), tiny_model()),
        ("model", tiny_inpaint_config(), tiny_inpaint_model()),
    ):
        files[kind] = (d / f"{kind}.yaml", d / f"{kind}.safetensors")
        files[kind][0].write_text(yaml.safe_dump(cfg))
        save_state_dict(model.original_state_dict(), files[kind][1])
    return {k: (str(a), str(b)) for k, (a, b) in files.items()}


def photo(w=32, h=32, seed=0):
    y, x = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    arr = np.stack([x * 7, y * 11, (x + y) * 4], -1) + rng.integers(0, 30, (h, w, 3))
    return Image.fromarray((arr % 256).astype(np.uint8))


def square_mask(w=32, h=32):
    m = np.zeros((h, w), np.float32)
    m[8:24, 10:26] = 1
    return m


def diff(a, b):
    return np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).sum(-1)


@pytest.mark.parametrize("mode", ["blend", "model"])
def test_unmasked_area_kept_and_masked_area_changed(models, mode):
    img, mask = photo(), square_mask()
    out = inpaint(models[mode], img, mask, "a dog", steps=4, seed=1, progress=False)[0]
    assert resolve_mode(models[mode]) == mode
    d = diff(out, img)
    assert d[mask == 0].max() == 0  # kept pixels come back bit for bit after the paste-back
    assert d[mask == 1].mean() > 20  # the hole is repainted
    other = inpaint(models[mode], img, mask, "a dog", steps=4, seed=2, progress=False)[0]
    assert diff(other, out)[mask == 1].mean() > 0  # and depends on the seed


def test_feathered_edge_blends_inside_the_hole(models):
    img, mask = photo(), square_mask()
    hard = inpaint(models["blend"], img, mask, "a dog", steps=3, feather_radius=0, progress=False)[0]
    soft = inpaint(models["blend"], img, mask, "a dog", steps=3, feather_radius=3, progress=False)[0]
    d = diff(soft, hard)
    assert d[16, 16] == 0  # deep inside both are the generated pixels
    assert d[mask == 0].max() == 0 and d[8, 10:26].mean() > 0  # edge rows of the hole differ: blended
    assert diff(soft, img)[8, 17] < diff(hard, img)[8, 17]  # ... toward the original


def test_dedicated_model_sees_the_sd2_inpainting_layout(models):
    model = models["model"]
    img, mask = photo(), square_mask()
    seen = []
    hook = model.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        inpaint(model, img, mask, "x", steps=1, guidance_scale=1.0, progress=False)
    finally:
        hook.remove()
    x = seen[0]
    assert x.shape == (1, 9, 16, 16)
    pixels = pil_to_tensor(img)
    m = torch.from_numpy(mask)[None, None]
    expected_mask = torch.nn.functional.interpolate(m, size=(16, 16))
    assert torch.equal(x[:, 4:5], expected_mask)
    assert torch.allclose(x[:, 5:], model.encode_image(pixels * (m < 0.5)), atol=1e-5)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_blend_denoiser_holds_known_latents_on_the_noising_path(models, sampler):
    model = models["blend"]
    x0 = torch.randn(1, 4, 8, 8)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4] = 1
    noise = torch.randn(1, 4, 8, 8)
    seen = {}

    def inner(x, sigma, **kw):
        seen["x"] = x
        return torch.zeros_like(x)

    out = BlendDenoiser(inner, x0, noise, keep)(torch.randn(2, 4, 8, 8), torch.tensor([2.0, 2.0]))
    assert torch.allclose(seen["x"][:, :, :, :4], (x0 + 2.0 * noise)[..., :4].expand(2, -1, -1, -1))
    assert torch.equal(out[..., :4], x0[..., :4].expand(2, -1, -1, -1)) and (out[..., 4:] == 0).all()
    # Through a whole sampling run the known latents end exactly at the original ones.
    cond, uncond = prompt_conditions(model, ["a dog"], [""])
    latents = sample_seeded(
        model,
        Conditioning(cond, uncond, wrap=lambda den, n: BlendDenoiser(den, x0, n, keep)),
        SamplingOptions(steps=4, sampler=sampler),
        seed=0,
        shape=x0.shape,
        x0=x0,
        strength=1.0,
        progress=False,
    )
    assert torch.allclose(latents[..., :4], x0[..., :4], atol=1e-5)
    assert (latents[..., 4:] - x0[..., 4:]).abs().mean() > 0.1


@pytest.mark.parametrize("mode", ["blend", "model"])
def test_partial_strength_keeps_more_of_the_hole(models, mode):
    img, mask = photo(), square_mask()
    run = lambda s: inpaint(models[mode], img, mask, "x", strength=s, steps=6, progress=False)[0]  # noqa: E731
    base = run(0.0)  # the VAE round trip inside the hole
    d = [diff(run(s), base)[mask == 1].mean() for s in (0.3, 1.0)]
    assert 0 < d[0] < d[1]


def test_outpainting_grows_the_canvas_with_the_original_in_place(models):
    img = photo(32, 24)
    for mode in ("blend", "model"):
        out = outpaint(models[mode], img, "a wide view", left=16, right=8, top=8, steps=3, progress=False)[0]
        assert out.size == (56, 32)
        assert diff(out.crop((16, 8, 48, 32)), img).max() == 0
        assert diff(out.crop((0, 0, 16, 32)), Image.new("RGB", (16, 32))).mean() > 0


def test_extend_canvas_rounds_up_on_an_extended_side():
    canvas, mask, added = extend_canvas(photo(30, 20), left=5, top=0, multiple=8)
    assert canvas.size == (40, 24) and added == {"left": 10, "right": 0, "top": 0, "bottom": 4}
    assert diff(canvas.crop((10, 0, 40, 20)), photo(30, 20)).max() == 0
    assert mask[:, :10].all() and mask[20:].all() and not mask[:20, 10:].any()
    assert parse_extend("left=64, right=8") == {"left": 64, "right": 8, "top": 0, "bottom": 0}
    with pytest.raises(ValueError, match="bad --extend entry 'up=3'"):
        parse_extend("up=3")
    with pytest.raises(ValueError, match="nothing to extend"):
        parse_extend("left=0")


def test_bad_inputs(models, tmp_path):
    model = models["blend"]
    with pytest.raises(MaskSizeError, match="mask is 32x16 but the image is 32x32"):
        inpaint(model, photo(), np.ones((16, 32), np.float32), "x")
    with pytest.raises(EmptyMaskError, match="empty"):
        inpaint(model, photo(), np.zeros((32, 32), np.float32), "x")
    with pytest.raises(StrengthError):
        inpaint(model, photo(), square_mask(), "x", strength=1.2)
    with pytest.raises(InpaintModeError, match="needs an inpainting model"):
        inpaint(model, photo(), square_mask(), "x", mode="model")
    with pytest.raises(WrongModelError):
        inpaint(tiny_upscaler_model(), photo(), square_mask(), "x")
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot read image"):
        inpaint(model, photo(), bad, "x")


@pytest.mark.parametrize("kind", ["blend", "model"])
def test_cli_inpaint_writes_png_with_mode(model_files, tmp_path, kind):
    cfg, ckpt = model_files[kind]
    src, mask_path = tmp_path / "in.png", tmp_path / "mask.png"
    photo().save(src)
    rgba = np.zeros((32, 32, 4), np.uint8)  # an RGBA mask: the alpha channel is the mask
    rgba[..., 3] = square_mask() * 255
    Image.fromarray(rgba, "RGBA").save(mask_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "inpaint",
                str(src),
                str(mask_path),
                "a dog",
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--steps",
                "3",
                "--outdir",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    img = Image.open(out / "samples" / "00000.png")
    s = json.loads(img.text["ldm"])
    assert (s["task"], s["inpaint_mode"], s["mask"]) == ("inpaint", kind, str(mask_path))
    d = diff(img, photo())
    assert d[square_mask() == 0].max() == 0 and d[square_mask() == 1].mean() > 20


def test_cli_outpaint_and_mask_errors(model_files, tmp_path, capsys):
    cfg, ckpt = model_files["blend"]
    src = tmp_path / "in.png"
    photo(32, 24).save(src)
    assert (
        main(
            [
                "outpaint",
                str(src),
                "a view",
                "--extend",
                "right=16,bottom=8",
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--steps",
                "2",
                "--outdir",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 0
    )
    img = Image.open(tmp_path / "o" / "samples" / "00000.png")
    assert img.size == (48, 32) and json.loads(img.text["ldm"])["extend"] == "right=16,bottom=8"
    black = tmp_path / "black.png"
    Image.new("L", (32, 24)).save(black)
    small = tmp_path / "small.png"
    Image.new("L", (16, 16), 255).save(small)
    assert main(["inpaint", str(src), str(black), "x", "--config", cfg, "--ckpt", ckpt]) != 0
    assert main(["inpaint", str(src), str(small), "x", "--config", cfg, "--ckpt", ckpt]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "mask is empty" in err[0] and "mask is 16x16 but the image is 32x24" in err[1]


def test_full_size_inpainting_checkpoint_loads_strictly_on_meta(sd_format_dir):
    with torch.device("meta"):
        model = model_from_config(CONFIGS / "v2-inpainting-inference.yaml")
    keys = json.load(open(os.path.join(sd_format_dir, "sd-v2-inpainting.json")))["keys"]
    state = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    load_into(model, from_original_keys(state), assign=True)
    assert model.conditioning_key == "hybrid" and model.unet.input_blocks[0][0].weight.shape[1] == 9
    assert resolve_mode(model) == "model"
