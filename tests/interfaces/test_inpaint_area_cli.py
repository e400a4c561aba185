"""`ldm inpaint --inpaint-area masked --mask-padding N`: the crop is inpainted and pasted back, the image keeps its
size and every pixel outside the mask, and the PNG records A1111's "Inpaint area: Only masked" fields."""

import json

import numpy as np
from factories import tiny_inpaint_config, tiny_inpaint_model, write_tiny_model_files
from PIL import Image

from ldm.interfaces.cli.main import main


def test_inpaint_only_masked_from_the_command_line(tmp_path):
    cfg, ckpt = write_tiny_model_files(tmp_path, "inpainter", tiny_inpaint_config(), tiny_inpaint_model())
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[20:30, 30:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    argv = [
        "inpaint",
        str(tmp_path / "photo.png"),
        str(tmp_path / "mask.png"),
        "a cat",
        "--config",
        cfg,
        "--ckpt",
        ckpt,
    ]
    common = ["--steps", "2", "--no-progress", "--no-grid", "--outdir", str(out)]
    assert main([*argv, *common, "--inpaint-area", "masked", "--mask-padding", "4"]) == 0
    image = Image.open(out / "samples" / "00000.png")
    settings = json.loads(image.text["ldm"])
    assert settings["inpaint_area"] == "masked" and settings["mask_padding"] == 4
    assert "Inpaint area: Only masked, Masked area padding: 4" in image.text["parameters"]
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (48, 64, 3)
    assert np.array_equal(pixels[mask == 0], np.asarray(photo)[mask == 0])
