"""Inpainting only the masked area (ldm.tasks.inpaint_area, inpaint(inpaint_area="masked")): the crop's geometry,
the model's native size, the pixels outside the mask kept exactly; on the shipped inpainter, a small hole in a large
image comes out with more detail than when the whole image is inpainted at the model's size."""

import numpy as np
import pytest
import torch
from factories import tiny_inpaint_model
from PIL import Image

from ldm.core.errors import LdmError
from ldm.evaluation.edits import laplacian_variance
from ldm.evaluation.edits import photo_like as photo
from ldm.formats.load import load_model
from ldm.io.infotext import format_infotext, settings_from_infotext
from ldm.tasks.inpaint import inpaint, outpaint
from ldm.tasks.inpaint_area import MaskPaddingError, crop_box, paste_back, processing_size


def square_hole(size: int, top: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    mask[top : top + side, top : top + side] = 1
    return mask


def test_the_crop_is_the_padded_box_grown_to_the_aspect_and_kept_inside():
    mask = np.zeros((100, 200), np.float32)
    mask[40:50, 90:130] = 1  # 40 wide, 10 high
    assert crop_box(mask, 0, 1.0) == (90, 25, 130, 65)  # grown to a square about the box
    assert crop_box(mask, 5, 1.0) == (85, 20, 135, 70)
    assert crop_box(mask, 100, 1.0) == (0, 0, 200, 100)  # padding stops at the image; a crop is never shrunk
    edge = np.zeros((100, 200), np.float32)
    edge[0:10, 0:10] = 1
    assert crop_box(edge, 0, 2.0) == (0, 0, 20, 10)  # shifted into the image, not cut
    assert processing_size((0, 0, 100, 100), 64, 8) == (64, 64)
    assert processing_size((0, 0, 200, 100), 64, 8) == (48, 88)  # the native area in the crop's shape
    for bad in (-1, 2.5, True):
        with pytest.raises(MaskPaddingError, match="mask padding"):
            crop_box(mask, bad, 1.0)


def test_pasting_back_keeps_every_pixel_outside_the_mask_exactly():
    original = torch.rand(1, 3, 40, 50) * 2 - 1
    mask = np.zeros((40, 50), np.float32)
    mask[10:20, 15:30] = 1
    out = paste_back(original, [Image.new("RGB", (8, 8), (255, 0, 0))], mask, (10, 5, 35, 30), radius=3)
    assert torch.equal(out[0][:, mask < 0.5], original[0][:, mask < 0.5])
    assert out[0, 0, 15, 22] == 1.0  # the middle of the hole is the result's, the ramp lies inside the hole


def test_only_masked_runs_the_crop_at_the_model_size_and_keeps_the_rest():
    model = tiny_inpaint_model()
    image, mask = photo(64), square_hole(64, 24, 10)
    seen = []
    made = inpaint(
        model, image, mask, ["a cat", "a dog"], seed=1, steps=2, inpaint_area="masked", mask_padding=6,
        callback=lambda d: seen.append(tuple(d["x"].shape)), progress=False,
    )  # fmt: skip
    native = model.default_image_size // model.downscale
    assert seen[0] == (2, 4, native, native)  # the model saw its own size, not the 64 px image
    for result in made:
        assert result.size == (64, 64)
        assert np.array_equal(np.asarray(result)[mask < 0.5], np.asarray(image)[mask < 0.5])
        assert not np.array_equal(np.asarray(result)[mask >= 0.5], np.asarray(image)[mask >= 0.5])
    assert made.settings["inpaint_area"] == "masked" and made.settings["mask_padding"] == 6
    with pytest.raises(LdmError, match="unknown inpaint area 'only'"):
        inpaint(model, image, mask, "a cat", steps=1, inpaint_area="only", progress=False)
    # outpainting takes it too: the crop is the canvas's new band and its padding
    wide = outpaint(model, image, "a cat", right=16, steps=1, inpaint_area="masked", progress=False)[0]
    assert wide.size == (80, 64) and np.array_equal(np.asarray(wide)[:, :64], np.asarray(image))


def test_the_a1111_fields_are_written_and_read():
    text = format_infotext({"prompt": "x", "steps": 2, "seed": 1, "inpaint_area": "masked", "mask_padding": 32})
    assert "Inpaint area: Only masked, Masked area padding: 32" in text
    read = settings_from_infotext(text)
    assert read["inpaint_area"] == "masked" and read["mask_padding"] == 32
    assert "Inpaint area" not in format_infotext({"prompt": "x", "steps": 2, "seed": 1})


def test_shipped_inpainter_only_masked_is_sharper_in_a_small_hole_of_a_large_image():
    model = load_model(task="inpaint")
    native = model.default_image_size
    image, mask = photo(512), square_hole(512, 236, 40)  # a 40 px hole in a 512 px image
    seen = []
    masked = inpaint(
        model, image, mask, "red heart", seed=0, steps=8, inpaint_area="masked",
        callback=lambda d: seen.append(tuple(d["x"].shape[-2:])), progress=False,
    )[0]  # fmt: skip
    assert seen[0] == (native // model.downscale,) * 2  # the crop ran at the model's size
    assert masked.size == (512, 512)
    assert np.array_equal(np.asarray(masked)[mask < 0.5], np.asarray(image)[mask < 0.5])  # exact outside the hole
    # The whole image inpainted at the model's size (A1111's "Whole picture" at the model's resolution), resized
    # back and pasted through the same inward feather: the hole is 5 px there.
    small_mask = np.asarray(Image.fromarray(mask).resize((native, native), Image.Resampling.BILINEAR))
    whole_small = inpaint(model, image.resize((native, native), Image.Resampling.LANCZOS), small_mask, "red heart",
                          seed=0, steps=8, progress=False)[0]  # fmt: skip
    from ldm.io.images import pil_to_tensor, tensor_to_pil

    whole = tensor_to_pil(paste_back(pil_to_tensor(image), [whole_small], mask, (0, 0, 512, 512), 8))[0]
    assert np.array_equal(np.asarray(whole)[mask < 0.5], np.asarray(image)[mask < 0.5])
    sharp, blurred = laplacian_variance(masked, mask), laplacian_variance(whole, mask)
    assert sharp > 2 * blurred, (sharp, blurred)
