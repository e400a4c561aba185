"""The inpainting measures of ldm.evaluation.edits on pictures whose answers are known."""

import numpy as np
from PIL import Image

from ldm.evaluation.edits import (
    border_pairs,
    centre_box_case,
    evaluate_method,
    hole_error,
    outside_change,
    right_band_case,
    seam_step,
)


def flat(colour, size=16):
    return Image.new("RGB", (size, size), colour)


def test_border_pairs_straddle_the_mask_edge():
    case = right_band_case("x", flat((0, 0, 0)), 4)
    inside, outside = border_pairs(case.mask)
    assert len(inside) == 16  # one pair per row across the vertical border
    assert (inside % 16 == 12).all() and (outside % 16 == 11).all()


def test_seam_is_the_colour_step_across_the_border():
    case = centre_box_case("x", flat((100, 100, 100)))
    assert seam_step(case.real, case.mask) == 0
    arr = np.full((16, 16, 3), 100, np.uint8)
    arr[case.mask >= 0.5] = 151  # a fill 51 levels brighter: a seam of 51/255
    assert abs(seam_step(Image.fromarray(arr), case.mask) - 0.2) < 1e-6


def test_evaluate_method_measures_fills():
    cases = [centre_box_case("a", flat((10, 20, 30)))]

    def perfect(case, seed):
        return case.real

    def grey(case, seed):
        arr = np.asarray(case.real).copy()
        arr[case.mask >= 0.5] = 128
        arr[0, 0] = 0  # and one pixel outside the hole changed
        return Image.fromarray(arr)

    good, bad = evaluate_method(perfect, cases), evaluate_method(grey, cases)
    assert good["seam"] == good["real_seam"] == good["hole_error"] == good["outside_change"] == 0
    assert bad["seam"] > 0.3 and bad["hole_error"] > 0.3 and 0 < bad["outside_change"] < 0.01
    assert hole_error(cases[0].real, cases[0].real, cases[0].mask) == 0
    assert outside_change(cases[0].real, cases[0].real, cases[0].mask) == 0
