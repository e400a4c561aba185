"""Hugging Face `imagefolder` layout: metadata.jsonl (or .csv) with file_name and a caption column."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ldm.data.folder import CaptionedImageFolder, CaptionFileError, MissingCaptionError
from ldm.training.run import build_data
from ldm.training.tiny import tiny_train_config


def imagefolder(root, rows: list[dict], name: str = "metadata.jsonl"):
    (root / "train").mkdir(parents=True)
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (12, 10), colour).save(root / "train" / f"{i}.png")
    if name.endswith(".jsonl"):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        (root / name).write_text("file_name,text\n" + "".join(f"{r['file_name']},{r['text']}\n" for r in rows))
    return root


ROWS = [
    {"file_name": f"train/{i}.png", "text": f"a {c} box", "score": 0.5, "style": "flat"}
    for i, c in enumerate(("red", "green", "blue"))
]


def test_metadata_jsonl_gives_captions_and_extras(tmp_path):
    folder = CaptionedImageFolder(imagefolder(tmp_path, ROWS), size=8)
    assert folder.files == ["train/0.png", "train/1.png", "train/2.png"]
    assert folder.captions == ["a red box", "a green box", "a blue box"]
    assert folder.extras[1] == {"style": "flat"}  # only the fields training uses; score is not one
    item = folder[2]
    assert item["image"].shape == (3, 8, 8) and item["caption"] == "a blue box"
    assert item["image"][2].mean() > 0.9 and item["image"][0].mean() < -0.9  # blue, not red


def test_metadata_csv_and_a_named_caption_column(tmp_path):
    folder = CaptionedImageFolder(imagefolder(tmp_path / "csv", ROWS, "metadata.csv"), size=8)
    assert folder.captions[0] == "a red box"
    rows = [{"file_name": r["file_name"], "prompt": r["text"].upper(), "text": "ignored"} for r in ROWS]
    named = CaptionedImageFolder(imagefolder(tmp_path / "named", rows), size=8, caption_column="prompt")
    assert named.captions == ["A RED BOX", "A GREEN BOX", "A BLUE BOX"]


def test_missing_caption_column_or_row_is_one_line(tmp_path):
    rows = [{"file_name": r["file_name"], "label": 1} for r in ROWS]
    with pytest.raises(
        CaptionFileError, match=r"metadata.jsonl:1: no caption column 'caption' or 'text'.*data.caption_column"
    ):
        CaptionedImageFolder(imagefolder(tmp_path / "a", rows), size=8)
    with pytest.raises(MissingCaptionError, match="2.png"):
        CaptionedImageFolder(imagefolder(tmp_path / "b", ROWS[:2]), size=8)


def test_training_reads_an_imagefolder_through_data_root(tmp_path):
    root = imagefolder(tmp_path / "hf", [{**r, "caption": r.pop("text")} for r in [dict(r) for r in ROWS]])
    cfg = tiny_train_config("ldm", root, tmp_path / "run", ["data.val_fraction=0", "data.batch_size=3"])
    batch = next(iter(build_data(cfg).train_dataloader()))
    assert sorted(batch["caption"]) == ["a blue box", "a green box", "a red box"]
    assert batch["image"].shape == (3, 3, 16, 16)
