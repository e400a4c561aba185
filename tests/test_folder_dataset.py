"""CaptionedImageFolder: the three caption formats, resizing/cropping, flips and the clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.folder import (
    CaptionedImageFolder,
    CaptionFileError,
    EmptyDatasetError,
    MissingCaptionError,
    MissingImageError,
    UnreadableImageError,
)


def _image(path, size=(40, 20), color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_sidecar_txt_captions(tmp_path):
    _image(tmp_path / "b.png", color=(0, 0, 255))
    (tmp_path / "b.txt").write_text("a blue square\n")
    _image(tmp_path / "sub" / "a.jpg")
    (tmp_path / "sub" / "a.txt").write_text("a red square")
    ds = CaptionedImageFolder(tmp_path, size=16)
    assert len(ds) == 2
    items = {ds[i]["caption"]: ds[i]["image"] for i in range(2)}
    assert set(items) == {"a blue square", "a red square"}
    blue = items["a blue square"]
    assert blue.dtype == torch.float32 and blue.shape == (3, 16, 16)
    assert torch.allclose(blue[2], torch.ones(16, 16)) and torch.allclose(blue[0], -torch.ones(16, 16))


def test_jsonl_captions(tmp_path):
    _image(tmp_path / "images" / "00000.png")
    _image(tmp_path / "images" / "00001.png", color=(0, 255, 0))
    rows = [
        {"file": "images/00000.png", "caption": "red"},
        {"file": "images/00001.png", "caption": "green", "extra": 1},
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = CaptionedImageFolder(tmp_path, size=8)
    assert [ds[i]["caption"] for i in range(2)] == ["red", "green"]
    assert ds[1]["image"][1].min().item() == pytest.approx(1.0)


def test_csv_captions_with_commas_and_quotes(tmp_path):
    _image(tmp_path / "x.png")
    (tmp_path / "captions.csv").write_text('file,caption\nx.png,"woman judge: dark skin tone, with ""quotes"""\n')
    ds = CaptionedImageFolder(tmp_path, size=8)
    assert ds[0]["caption"] == 'woman judge: dark skin tone, with "quotes"'


def test_resize_shorter_side_and_center_crop(tmp_path):
    # 60x20: left third red, middle green, right blue -> the centre crop is all green
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    im.paste((0, 255, 0), (20, 0, 40, 20))
    im.paste((0, 0, 255), (40, 0, 60, 20))
    im.save(tmp_path / "stripes.png")
    (tmp_path / "stripes.txt").write_text("stripes")
    ds = CaptionedImageFolder(tmp_path, size=10)
    x = ds[0]["image"]
    assert x.shape == (3, 10, 10)
    assert x.min() >= -1 and x.max() <= 1
    inner = x[:, :, 1:-1]  # the outer columns blend with the neighbouring stripes when resampling
    assert (inner[1] > 0.9).all() and (inner[0] < -0.9).all()
    # a random crop sees other parts of the image over many draws
    ds_rand = CaptionedImageFolder(tmp_path, size=10, center_crop=False)
    reds = [ds_rand[0]["image"][0, 0, 0].item() > 0.9 for _ in range(40)]
    assert any(reds) and not all(reds)


def test_flip_mirrors_some_items(tmp_path):
    im = Image.new("RGB", (8, 8), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 4, 8))
    im.save(tmp_path / "half.png")
    (tmp_path / "half.txt").write_text("half")
    assert all(CaptionedImageFolder(tmp_path, size=8)[0]["image"][0, 0, 0] > 0.9 for _ in range(5))
    ds = CaptionedImageFolder(tmp_path, size=8, flip=True)
    left_white = [ds[0]["image"][0, 0, 0].item() > 0.9 for _ in range(60)]
    assert any(left_white) and not all(left_white)


def test_transparent_pixels_become_white(tmp_path):
    _image(tmp_path / "t.png", size=(8, 8), color=(0, 0, 0, 0), mode="RGBA")
    (tmp_path / "t.txt").write_text("nothing")
    assert torch.allclose(CaptionedImageFolder(tmp_path, size=8)[0]["image"], torch.ones(3, 8, 8))


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyDatasetError, match="no images"):
        CaptionedImageFolder(tmp_path, size=8)
    with pytest.raises(EmptyDatasetError, match="not found"):
        CaptionedImageFolder(tmp_path / "missing", size=8)


def test_image_without_caption_names_the_file(tmp_path):
    _image(tmp_path / "ok.png")
    (tmp_path / "ok.txt").write_text("fine")
    _image(tmp_path / "orphan.png")
    with pytest.raises(MissingCaptionError, match="orphan.png"):
        CaptionedImageFolder(tmp_path, size=8)


def test_image_not_listed_in_jsonl_names_the_file(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "a"}) + "\n")
    with pytest.raises(MissingCaptionError, match="b.png"):
        CaptionedImageFolder(tmp_path, size=8)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "broken.txt").write_text("broken")
    ds = CaptionedImageFolder(tmp_path, size=8)
    with pytest.raises(UnreadableImageError, match="broken.png"):
        ds[0]


def test_captions_file_naming_a_missing_image(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "captions.csv").write_text("file,caption\na.png,a\ngone.png,gone\n")
    with pytest.raises(MissingImageError, match="gone.png"):
        CaptionedImageFolder(tmp_path, size=8)


def test_malformed_caption_files(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png"}\n')
    with pytest.raises(CaptionFileError, match="captions.jsonl:1"):
        CaptionedImageFolder(tmp_path, size=8)
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("path,text\na.png,a\n")
    with pytest.raises(CaptionFileError, match="file,caption"):
        CaptionedImageFolder(tmp_path, size=8)


def test_works_with_a_dataloader(tmp_path):
    for i in range(5):
        _image(tmp_path / f"{i}.png", size=(12, 12), color=(i * 40, 0, 0))
        (tmp_path / f"{i}.txt").write_text(f"shade {i}")
    loader = torch.utils.data.DataLoader(CaptionedImageFolder(tmp_path, size=12), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 12, 12)
    assert batch["caption"] == ["shade 0", "shade 1", "shade 2", "shade 3"]
    assert np.isclose(batch["image"][1, 0, 0, 0].item(), 40 / 127.5 - 1, atol=1e-6)
