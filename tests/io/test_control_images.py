"""Control images (ldm.io.control_images) on synthetic shapes: edges where the shapes' borders are, none inside or
outside them, the same every time; and `ldm control-image` through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ldm.core.errors import InvalidOptionError
from ldm.io.control_images import PREPROCESSORS, canny, control_image, control_images

RUNNER = Path(__file__).parents[1] / "cli_runner.py"


def square(size: int = 32, lo: int = 8, hi: int = 24) -> torch.Tensor:
    """A white square on black, [1, 3, size, size] in [0, 1]; its border is between rows/columns lo-1|lo, hi-1|hi."""
    image = torch.zeros(1, 3, size, size)
    image[..., lo:hi, lo:hi] = 1.0
    return image


def test_canny_of_a_square_is_a_thin_closed_outline_on_its_border():
    edges = canny(square())[0, 0]
    rows, cols = torch.nonzero(edges, as_tuple=True)
    assert edges.sum() > 0
    assert rows.min() >= 7 and rows.max() <= 24 and cols.min() >= 7 and cols.max() <= 24  # on the border band
    assert not edges[10:22, 10:22].any()  # nothing inside the square
    assert not edges[:6].any() and not edges[26:].any()  # nothing in the flat background
    for line in range(9, 23):  # every row and column crossing the square meets its outline twice, 1 px wide
        assert edges[line].sum() == 2, edges[line]
        assert edges[:, line].sum() == 2, edges[:, line]


def test_weak_edges_count_only_where_connected_to_strong_ones():
    image = square()
    image[..., 8:24, 8:16] = 0.6  # the left half dimmer: its edges weak (Sobel L1 4 * 153 and at most 6 * 153 < 950),
    # the bright half's strong (4 * 255 = 1020)
    strong_only = canny(image, low=940, high=950)[0, 0]
    with_hysteresis = canny(image, low=100, high=950)[0, 0]
    assert strong_only.sum() < with_hysteresis.sum()
    assert with_hysteresis[:, 7:9].any()  # the dim left border joins through the bright top and bottom ones
    isolated = torch.zeros(1, 3, 32, 32)
    isolated[..., 8:24, 8:24] = 0.6  # the same dim square alone: no strong pixel anywhere, so no edge at all
    assert not canny(isolated, low=100, high=950).any()


@pytest.mark.parametrize("kind", PREPROCESSORS)
def test_every_type_is_white_lines_on_black_on_the_border_only_and_deterministic(kind):
    out = control_images(square(), kind)
    assert out.shape == (1, 3, 32, 32) and set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert not out[0, 0, 13:19, 13:19].any() and not out[0, 0, :2].any()
    assert out[0, 0, 5:27, 5:27].sum() == out[0, 0].sum() > 0
    assert torch.equal(out, control_images(square(), kind))


def test_lineart_and_scribble_are_thicker_than_canny():
    widths = {kind: control_images(square(), kind)[0, 0, 16].sum().item() for kind in PREPROCESSORS}
    assert widths["canny"] < widths["lineart"] < widths["scribble"]


def test_a_pil_image_keeps_its_size_and_transparency_counts_as_white():
    image = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # transparent: white, no edge
    ImageDraw.Draw(image).ellipse((10, 5, 30, 25), fill=(200, 0, 0, 255))
    out = control_image(image)
    assert out.size == (40, 30) and out.mode == "RGB"
    array = np.asarray(out)[..., 0] > 0
    assert array.any() and not array[:3].any() and not array[14:16, 19:21].any()


def test_bad_types_and_thresholds_are_refused():
    with pytest.raises(InvalidOptionError, match="unknown control image type 'depth'"):
        control_images(square(), "depth")
    with pytest.raises(InvalidOptionError, match="0 <= low <= high"):
        control_images(square(), "canny", low=200, high=100)


def test_the_command_writes_the_edges_and_refuses_an_existing_file(tmp_path):
    image = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 23, 23), fill="black")
    image.save(tmp_path / "square.png")
    (tmp_path / "taken.png").write_bytes(b"made by the user")
    cases = [
        ["control-image", "square.png", "--out", "edges.png"],
        ["control-image", "square.png", "--type", "scribble", "--out", "scribble.png"],
        ["control-image", "square.png", "--out", "taken.png"],
    ]
    payload = json.dumps([{"argv": argv, "cwd": str(tmp_path), "timeout": 120} for argv in cases])
    r = subprocess.run([sys.executable, str(RUNNER)], input=payload, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    made, scribble, taken = json.loads(r.stdout)
    assert made["rc"] == 0 and scribble["rc"] == 0, made["stderr"][-2000:]
    edges = np.asarray(Image.open(tmp_path / "edges.png"))[..., 0] > 0
    expected = control_images(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None])
    assert np.array_equal(edges, expected[0, 0].numpy() > 0)
    assert edges.any() and not edges[11:21, 11:21].any()
    assert (np.asarray(Image.open(tmp_path / "scribble.png"))[..., 0] > 0).sum() > edges.sum()
    assert taken["rc"] == 2 and "taken.png already exists" in taken["stderr"]
    assert (tmp_path / "taken.png").read_bytes() == b"made by the user"


def test_canny_is_opencvs_on_the_rgb_image_as_the_annotator_calls_it():
    import cv2

    image = Image.new("RGB", (48, 40), (30, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((6, 4, 30, 30), fill=(220, 40, 40))
    draw.rectangle((24, 18, 44, 36), fill=(40, 200, 60))  # red and green of close luma: an edge in RGB
    array = np.asarray(image)
    ours = np.asarray(control_image(image))[..., 0] > 0
    assert np.array_equal(ours, cv2.Canny(array, 100, 200) > 0)
    assert np.array_equal(np.asarray(control_image(image, low=20, high=60))[..., 0] > 0, cv2.Canny(array, 20, 60) > 0)


def test_tile_is_an_area_downscale_and_pyrups_back_to_the_size():
    import cv2

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    expected = cv2.resize(array, (6, 8), interpolation=cv2.INTER_AREA)  # gradio_tile.py: 1/8, then three pyrUps
    for _ in range(3):
        expected = cv2.pyrUp(expected)
    out = control_image(Image.fromarray(array), "tile")
    assert out.size == (48, 64) and np.array_equal(np.asarray(out), expected)
    assert np.asarray(out).std() < array.std() / 3  # the noise averaged away: a blurred image
    odd = control_image(Image.fromarray(array[:50, :37]), "tile", factor=4)  # any size and factor: back to the size
    assert odd.size == (37, 50)
    with pytest.raises(InvalidOptionError, match="tile factor must be a number of at least 1"):
        control_image(Image.fromarray(array), "tile", factor=0.5)


def test_inpaint_is_the_image_with_the_masked_pixels_at_minus_one():
    from ldm.io.control_images import MASKED, inpaint_control_pixels, is_inpaint_control

    image = Image.new("RGB", (16, 12), (255, 128, 0))
    mask = Image.new("L", (16, 12), 0)
    ImageDraw.Draw(mask).rectangle((4, 2, 9, 7), fill=255)
    out = control_image(image, "inpaint", mask=mask)
    assert out.mode == "RGBA" and out.size == (16, 12)
    alpha = np.asarray(out)[..., 3]
    assert (alpha[2:8, 4:10] == 0).all() and alpha.sum() == 255 * (16 * 12 - 36)
    out.info["ldm"] = json.dumps({"control": "inpaint"})
    assert is_inpaint_control(out) and not is_inpaint_control(image)
    pixels = inpaint_control_pixels(out)
    assert pixels.shape == (1, 3, 12, 16)
    assert (pixels[..., 2:8, 4:10] == MASKED).all() and ((pixels >= 0).sum() == 3 * (16 * 12 - 36))
    assert torch.allclose(pixels[0, :, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    with pytest.raises(InvalidOptionError, match="needs a mask"):
        control_image(image, "inpaint")
    with pytest.raises(InvalidOptionError, match="the mask is 8x8 px, the image 16x12"):
        control_image(image, "inpaint", mask=Image.new("L", (8, 8)))


def test_the_command_writes_tile_and_inpaint_images_and_refuses_a_missing_mask(tmp_path):
    from ldm.io.control_images import MASKED, read_control_image
    from ldm.models.controlnet import Control, ControlNet
    from ldm.models.unet import UNetModel

    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "photo.png")
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 31), fill=255)  # the left half to repaint
    mask.save(tmp_path / "mask.png")
    cases = [
        ["control-image", "photo.png", "--type", "tile", "--out", "tile.png"],
        ["control-image", "photo.png", "--type", "inpaint", "--mask", "mask.png", "--out", "hole.png"],
        ["control-image", "photo.png", "--type", "inpaint", "--out", "nomask.png"],
        ["control-image", "photo.png", "--mask", "mask.png", "--out", "canny.png"],
    ]
    payload = json.dumps([{"argv": argv, "cwd": str(tmp_path), "timeout": 120} for argv in cases])
    r = subprocess.run([sys.executable, str(RUNNER)], input=payload, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    tiled, hole, nomask, canny_with_mask = json.loads(r.stdout)
    assert tiled["rc"] == 0 and hole["rc"] == 0, (tiled["stderr"][-2000:], hole["stderr"][-2000:])
    assert (np.asarray(Image.open(tmp_path / "tile.png")) == (0, 0, 255)).all()  # a flat image stays itself
    for refused in (nomask, canny_with_mask):
        assert refused["rc"] == 2 and "--mask goes with --type inpaint" in refused["stderr"]
        assert "Traceback" not in refused["stderr"]
    # The file reaches the hint encoder with -1 where the mask was, through --control's reading of it.
    unet = UNetModel(
        in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[], num_res_blocks=1,
        channel_mult=[1], num_heads=1, context_dim=8,
    )  # fmt: skip
    control = Control(ControlNet(unet, 4, 8), read_control_image(tmp_path / "hole.png"), resize="stretch")
    hint = control.hint(32, 32, torch.device("cpu"))
    blue = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 32, 16)
    assert (hint[..., :16] == MASKED).all() and torch.equal(hint[0, :, :, 16:], blue)
    seen = []
    hook = control.net.input_hint_block[0].register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    with torch.no_grad():
        control.net(torch.zeros(1, 4, 4, 4), torch.tensor([10.0]), hint, torch.zeros(1, 1, 8))
    hook.remove()
    assert torch.equal(seen[0], hint) and seen[0].min() == MASKED  # -1 unchanged at the hint encoder's input
