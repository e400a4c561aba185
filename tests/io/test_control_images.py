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
