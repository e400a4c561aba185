"""x4 upscaling with a tiny upscaler: size, conditioning layout, tiling without seams, errors, CLI, strict load."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_model, tiny_upscaler_config, tiny_upscaler_model
from PIL import Image

from ldm.core.config import model_from_config
from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import from_original_keys, load_into, save_state_dict
from ldm.io.images import pil_to_tensor
from ldm.tasks.base import WrongModelError
from ldm.tasks.editing import ImageTooSmallError
from ldm.tasks.upscale import (
    BackProjectionError,
    NoiseLevelError,
    TileError,
    back_project,
    tile_starts,
    tiled_map,
    upscale,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "stable-diffusion"


@pytest.fixture(scope="module")
def model():
    return tiny_upscaler_model()


def low_res(w=32, h=32):
    y, x = np.mgrid[:h, :w]
    return Image.fromarray((np.stack([x * 6, y * 6, (x + y) * 3], -1) % 256).astype(np.uint8))


def gray(img):
    return np.asarray(img, dtype=float).mean(-1)


def test_returns_four_times_the_size(model):
    out = upscale(model, low_res(13, 10), "a tree", steps=2, progress=False)
    assert out[0].size == (52, 40)


def test_unet_sees_noised_low_res_and_its_level(model):
    seen = []
    hook = model.unet.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((args[0], kwargs["y"])), with_kwargs=True
    )
    try:
        upscale(model, low_res(12, 8), "x", noise_level=30, seed=4, steps=1, guidance_scale=1.0, progress=False)
    finally:
        hook.remove()
    x, y = seen[0]
    assert x.shape == (1, 7, 8, 12) and y.tolist() == [30]
    lr = pil_to_tensor(low_res(12, 8))
    ab = model.low_scale.alphas_cumprod[30]
    eps = torch.randn(lr.shape, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(x[:, 4:], ab.sqrt() * lr + (1 - ab).sqrt() * eps, atol=1e-5)


def test_noise_level_changes_the_result(model):
    a = upscale(model, low_res(12, 8), "x", noise_level=0, steps=3, progress=False)[0]
    b = upscale(model, low_res(12, 8), "x", noise_level=300, steps=3, progress=False)[0]
    assert np.abs(gray(a) - gray(b)).mean() > 1


def test_tiled_map_reassembles_exactly():
    x = torch.randn(2, 3, 37, 29)
    same = tiled_map(lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], 37, 29, tile=16, overlap=6)
    assert torch.allclose(same, x, atol=1e-6)
    up = tiled_map(
        lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1].repeat_interleave(2, -1).repeat_interleave(2, -2),
        37,
        29,
        tile=16,
        overlap=6,
        scale=2,
    )
    assert torch.allclose(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2), atol=1e-6)
    assert tile_starts(40, 16, 8) == [0, 8, 16, 24] and tile_starts(10, 16, 4) == [0]
    with pytest.raises(TileError):
        tiled_map(lambda *a: x, 37, 29, tile=16, overlap=16)


def test_tiled_agrees_with_untiled_and_shows_no_seam(model):
    lr = low_res(24, 24)
    run = lambda **k: gray(upscale(model, lr, "x", steps=2, progress=False, **k)[0])  # noqa: E731
    full = run(tile_size=24)
    tiled = run(tile_size=16, tile_overlap=8)  # two tiles per side, starting at 0 and 8
    hard = run(tile_size=16, tile_overlap=0)  # same tiles, hard switch at the border instead of a blend
    other_seed = gray(upscale(model, lr, "x", steps=2, seed=1, tile_size=24, progress=False)[0])
    # Inside tiles the tiled result follows the untiled one (much closer than another seed is).
    assert np.abs(tiled - full).mean() < 0.25 * np.abs(other_seed - full).mean()

    def border_jump(out):
        """How much the tiled-minus-untiled difference jumps across tile borders vs elsewhere (1 = no seam)."""
        e = out - full
        jumps = np.concatenate([np.abs(np.diff(e, axis=1)).mean(0), np.abs(np.diff(e, axis=0)).mean(1)])
        n = e.shape[1] - 1
        borders = [8 * 4 - 1, 16 * 4 - 1]  # pixel columns/rows where a tile starts or ends (4 px per latent)
        return max(jumps[b] for b in borders + [n + b for b in borders]) / np.median(jumps)

    assert border_jump(tiled) < 2.0
    assert border_jump(hard) > 2.0  # the measure does see a seam when there is one


def test_bad_inputs(model):
    with pytest.raises(NoiseLevelError, match=r"noise level must be in \[0, 350\], got 400"):
        upscale(model, low_res(), noise_level=400)
    with pytest.raises(ImageTooSmallError, match="too small"):
        upscale(model, low_res(6, 20))
    with pytest.raises(TileError):
        upscale(model, low_res(), tile_size=16, tile_overlap=16)
    with pytest.raises(WrongModelError, match="needs the x4 upscaler"):
        upscale(tiny_model(), low_res())


def shrink_error(images: torch.Tensor, low: torch.Tensor) -> float:
    down = torch.nn.functional.interpolate(images, size=low.shape[-2:], mode="bicubic", antialias=True)
    return float((down - low).abs().mean())


def test_back_projection_gives_the_input_back_and_keeps_the_detail():
    g = torch.Generator().manual_seed(0)
    low = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 18, 18, generator=g), 3, 1) * 1.2 - 0.6  # a smooth picture
    guess = (
        torch.nn.functional.interpolate(low, scale_factor=4, mode="nearest") * 0.6
        + 0.3
        + 0.3 * torch.randn(1, 3, 64, 64, generator=g)
    ).clamp(-1, 1)  # off in colour, with fine detail
    projected = back_project(guess, low, 4, 5)
    assert shrink_error(projected, low) < 0.2 * shrink_error(guess, low)
    detail = lambda x: x - torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # the part a x4 shrink cannot see
    inner = (..., slice(4, -4), slice(4, -4))
    assert torch.corrcoef(torch.stack([detail(projected)[inner].flatten(), detail(guess)[inner].flatten()]))[0, 1] > 0.9
    assert torch.equal(back_project(guess, low, 4, 0), guess)


def test_back_projection_is_the_models_own_unless_given(model):
    image = low_res(12, 12)
    plain = upscale(model, image, "", steps=2, progress=False)
    assert plain.settings["back_projection"] == 0  # SD's upscalers: none, as the reference code
    model.upscale_defaults = {"back_projection": 3}
    try:
        own = upscale(model, image, "", steps=2, progress=False)
        off = upscale(model, image, "", steps=2, progress=False, back_projection=0)
    finally:
        model.upscale_defaults = {}
    assert own.settings["back_projection"] == 3 and off.settings["back_projection"] == 0
    low = pil_to_tensor(image)
    errors = [shrink_error(pil_to_tensor(g[0]), low) for g in (own, off)]
    assert errors[0] < 0.5 * errors[1]
    np.testing.assert_array_equal(np.asarray(off[0]), np.asarray(plain[0]))
    with pytest.raises(BackProjectionError, match="whole number of iterations"):
        upscale(model, image, back_projection=-1)


def test_noise_augmentation_takes_given_noise(model):
    lr = torch.rand(2, 3, 4, 4) * 2 - 1
    eps = torch.randn_like(lr)
    out, level = model.low_scale(lr, 100, noise=eps)
    ab = model.low_scale.alphas_cumprod[100]
    assert torch.allclose(out, ab.sqrt() * lr + (1 - ab).sqrt() * eps) and level.tolist() == [100, 100]
    with pytest.raises(ValueError, match="noise shape"):
        model.low_scale(lr, 100, noise=eps[:1])


def test_cli_upscale_writes_png(tmp_path):
    cfg, ckpt = tmp_path / "up.yaml", tmp_path / "up.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_upscaler_config()))
    save_state_dict(tiny_upscaler_model().original_state_dict(), ckpt)
    src = tmp_path / "small.png"
    low_res(12, 10).save(src)
    assert (
        main(
            [
                "upscale",
                str(src),
                "a tree",
                "--noise-level",
                "50",
                "--steps",
                "2",
                "--tile-size",
                "8",
                "--tile-overlap",
                "2",
                "--config",
                str(cfg),
                "--ckpt",
                str(ckpt),
                "--outdir",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 0
    )
    img = Image.open(tmp_path / "o" / "samples" / "00000.png")
    s = json.loads(img.text["ldm"])
    assert img.size == (48, 40)
    assert (s["task"], s["noise_level"], s["tile_size"], s["tile_overlap"], s["tiled"]) == ("upscale", 50, 8, 2, True)
    assert s["back_projection"] == 0
    assert (
        main(
            [
                "upscale",
                str(src),
                "--steps",
                "2",
                "--back-projection",
                "2",
                "--config",
                str(cfg),
                "--ckpt",
                str(ckpt),
                "--outdir",
                str(tmp_path / "p"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(Image.open(tmp_path / "p" / "samples" / "00000.png").text["ldm"])["back_projection"] == 2


def test_full_size_upscaler_checkpoint_loads_strictly_on_meta(sd_format_dir, caplog):
    with torch.device("meta"):
        model = model_from_config(CONFIGS / "x4-upscaling.yaml")
    keys = json.load(open(os.path.join(sd_format_dir, "sd-x4-upscaler.json")))["keys"]
    state = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    assert any(k.startswith("low_scale_model.") for k in state)
    with caplog.at_level("INFO"):
        load_into(model, from_original_keys(state), assign=True)
    assert "low_scale_model" in caplog.text  # its schedule buffers are ignored, and said so
    assert (model.conditioning_key, model.prediction, model.downscale) == ("hybrid-adm", "v", 4)
    assert model.unet.input_blocks[0][0].weight.shape[1] == 7 and model.low_scale.max_noise_level == 350
    assert model.unet.label_emb.weight.shape[0] == 1000
