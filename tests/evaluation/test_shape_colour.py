"""The pixel rule for colour + shape prompts, on shapes drawn here at other sizes and places than the references."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ldm.evaluation.shape_colour import ShapeColourJudge, foreground_mask, silhouettes

COLOURS = {"red": (220, 40, 40), "yellow": (250, 210, 40), "blue": (40, 110, 220), "purple": (150, 90, 200)}
SHAPES = ("heart", "circle", "square")


def draw(shape: str, rgb: tuple[int, int, int], box: tuple[int, int, int, int], size: int = 64) -> torch.Tensor:
    """[3, H, W] in [-1, 1]: one filled shape on white inside `box` (left, top, right, bottom)."""
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = box
    if shape == "square":
        pen.rectangle(box, fill=rgb)
    elif shape == "circle":
        pen.ellipse(box, fill=rgb)
    else:  # two lobes and a point: a heart
        w, h = right - left, bottom - top
        pen.ellipse((left, top, left + w * 0.55, top + h * 0.55), fill=rgb)
        pen.ellipse((right - w * 0.55, top, right, top + h * 0.55), fill=rgb)
        point = (left + w / 2, bottom)
        pen.polygon([(left + w * 0.02, top + h * 0.35), (right - w * 0.02, top + h * 0.35), point], rgb)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)


def labelled(boxes):
    images, colours, shapes = [], [], []
    for shape in SHAPES:
        for colour, rgb in COLOURS.items():
            for box in boxes:
                images.append(draw(shape, rgb, box))
                colours.append(colour)
                shapes.append(shape)
    return torch.stack(images), colours, shapes


@pytest.fixture(scope="module")
def judge():
    references, colours, shapes = labelled([(6, 6, 58, 58), (14, 10, 50, 46)])
    return ShapeColourJudge(references, colours, shapes)


def test_shapes_drawn_elsewhere_and_smaller_are_read_right(judge):
    images, colours, shapes = labelled([(30, 28, 56, 54), (2, 20, 40, 58)])
    readings = judge.read(images)
    assert [r.colour for r in readings] == colours
    assert [r.shape for r in readings] == shapes
    assert all(0.05 < r.foreground < 0.5 for r in readings)


def test_leaving_a_reference_out_reads_it_from_the_others(judge):
    references, colours, shapes = labelled([(6, 6, 58, 58), (14, 10, 50, 46)])
    readings = judge.leave_one_out(references)
    assert [(r.colour, r.shape) for r in readings] == list(zip(colours, shapes))


def test_a_blank_picture_has_no_foreground_and_an_empty_silhouette():
    blank = torch.ones(2, 3, 16, 16)
    assert not foreground_mask(blank).any()
    assert silhouettes(foreground_mask(blank), grid=8).sum() == 0


def test_mismatched_labels_are_refused():
    with pytest.raises(ValueError, match="one colour and one shape label"):
        ShapeColourJudge(torch.zeros(2, 3, 8, 8), ["red"], ["heart", "circle"])
