"""The README's worked LoRA example: the held-out style's training config, and scripts/lora_example.py's
figures (colourfulness, judge similarity, nearest-neighbour style share), picture and end-to-end run on a
tiny model. The real run (the shipped model, the high-contrast folder) is the README's, not a test's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from factories import TINY_TEXT

from ldm.core.config import instantiate
from ldm.io.checkpoint import save_state_dict
from ldm.models.clip import create_clip, save_clip
from ldm.training.config import load_train_config
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import QUIET, TINY_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "emoji" / "lora-high-contrast.yaml"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("lora_example", ROOT / "scripts" / "lora_example.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def images(*pixels_per_image) -> torch.Tensor:
    """Images [N, 3, 4, 4] in [-1, 1] from lists of RGB (0-255) pixels, white where a list runs out."""
    out = torch.ones(len(pixels_per_image), 3, 4, 4)
    for i, pixels in enumerate(pixels_per_image):
        for j, rgb in enumerate(pixels):
            out[i, :, j // 4, j % 4] = torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1
    return out


def test_colourfulness_is_the_chroma_of_the_emoji_pixels_alone(script):
    red, grey, dark_tint, pastel = (255, 0, 0), (33, 33, 33), (30, 20, 20), (250, 245, 240)
    got = script.colourfulness(images([red], [grey, grey], [red, grey], [dark_tint], [pastel], []))
    assert got[0] == pytest.approx(1.0)  # white background does not dilute it
    assert got[1] == 0.0  # the high-contrast design: one grey
    assert got[2] == pytest.approx(0.5)
    assert got[3] == pytest.approx(10 / 255, abs=1e-6)  # dark pixels: chroma stays small (HSV saturation would be 0.33)
    assert got[4].isnan() and got[5].isnan()  # near-white counts as background: nothing to measure
    assert script.nanmean(got) == pytest.approx((1 + 0 + 0.5 + 10 / 255) / 4, abs=1e-6)


def test_the_style_figures_tell_the_style_apart(script):
    g = torch.Generator().manual_seed(0)
    e1, e2 = torch.eye(8)[0], torch.eye(8)[1]
    style = e1 + 0.1 * torch.randn(20, 8, generator=g)
    other = e2 + 0.1 * torch.randn(30, 8, generator=g)
    like_style = e1 + 0.1 * torch.randn(10, 8, generator=g)
    like_other = e2 + 0.1 * torch.randn(10, 8, generator=g)
    assert script.style_share(like_style, style, other) == 1.0
    assert script.style_share(like_other, style, other) == 0.0
    assert script.style_share(torch.cat([like_style[:3], like_other]), style, other) == pytest.approx(3 / 13)
    assert script.centroid_similarity(like_style, style) > 0.9
    assert script.centroid_similarity(like_other, style) < 0.1


def test_the_picture_puts_real_base_and_lora_side_by_side(script):
    from PIL import Image

    red, blue, grey = (Image.new("RGB", (8, 8), c) for c in ("red", "blue", "grey"))
    pic = script.sheet([grey, grey], [[red, red], [red, red]], [[blue, blue], [blue, blue]], ["", ""], zoom=2)
    row = [pic.getpixel((x, 24 + 8)) for x in range(pic.width)]
    runs = [c for i, c in enumerate(row) if i == 0 or c != row[i - 1]]
    # left to right: label area, the real image, the base's two, the LoRA's two (gaps between are white)
    assert [c for c in runs if c != (255, 255, 255)] == [
        (128, 128, 128),
        (255, 0, 0),
        (255, 0, 0),
        (0, 0, 255),
        (0, 0, 255),
    ]


def test_the_lora_config_is_valid_and_fits_the_default_model():
    cfg = load_train_config(CONFIG)
    assert cfg["lora"]["rank"] > 0 and cfg["init"]["checkpoint"] == "checkpoints/emoji/model.safetensors"
    assert (
        cfg["data"]["style_prob"] == 1.0 and cfg["data"]["keyword_prob"] == 0.0
    )  # every caption ends with the trigger
    assert cfg["training"]["scale_factor"] == "model" and cfg["trainer"]["precision"] == "auto"
    assert cfg["trainer"]["max_steps"] * cfg["data"]["batch_size"] <= 8000  # a few CPU minutes, not a training run
    # The architecture is the default model's (configs/emoji/ldm.yaml); the latent scale is the v2 run's estimate.
    default = yaml.safe_load((ROOT / "configs" / "emoji" / "ldm.yaml").read_text())["model"]
    mine = yaml.safe_load(CONFIG.read_text())["model"]
    scale = mine["params"].pop("scale_factor")
    default["params"].pop("scale_factor")
    assert mine == default
    shipped = yaml.safe_load((ROOT / "checkpoints" / "emoji" / "model.yaml").read_text())["model"]
    assert scale == shipped["params"]["scale_factor"]  # the shipped base's own latent scale


def test_the_example_runs_end_to_end_on_a_tiny_model(script, tmp_path):
    data, ref = tmp_path / "hc", tmp_path / "ref"
    make_shapes_dataset(data / "train", size=16, count=12)
    make_shapes_dataset(data / "heldout", size=16, count=3)
    make_shapes_dataset(ref / "heldout", size=16, count=4)
    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    cfg = load_train_config(TINY_CONFIGS["ldm"])
    save_state_dict(instantiate(cfg["model"]).original_state_dict(), base)
    (tmp_path / "judge.json").write_text(json.dumps(TINY_TEXT))
    save_clip(create_clip(tmp_path / "judge.json"), tmp_path / "judge.safetensors")
    out = tmp_path / "docs"
    overrides = [
        f"data.root={data / 'train'}",
        f"logging.run_dir={tmp_path / 'run'}",
        f"init.checkpoint={base}",
        "lora.rank=2",
        "trainer.max_steps=2",
        "training.scale_factor=model",
        "data.val_fraction=0",
        "logging.sample_every_n_steps=0",
        "logging.csv=false",
        *QUIET,
    ]
    code = script.main(
        [
            "--train",
            "--train-config",
            str(TINY_CONFIGS["ldm"]),
            *overrides,
            "--data",
            str(data),
            "--reference",
            str(ref),
            "--judge",
            str(tmp_path / "judge.safetensors"),
            "--prompts",
            "2",
            "--seeds",
            "2",
            "--steps",
            "2",
            "--rows",
            "2",
            "--out",
            str(out / "pic.png"),
            "--json",
            str(out / "figures.json"),
        ]
    )
    assert code == 0
    result = json.loads((out / "figures.json").read_text())
    assert result["training"]["steps"] == 2 and result["training"]["seconds"] > 0
    assert result["adapter"]["bytes"] == (tmp_path / "run" / "lora.safetensors").stat().st_size
    assert result["before"]["n"] == result["after"]["n"] == 4 and result["real"]["n"] == 3
    assert all(
        0 <= result[k]["style_nn"] <= 1 and result[k]["judge_similarity"] <= 1 for k in ("before", "after", "real")
    )
    assert "| base + LoRA | 4 |" in result["table"]
    assert (out / "pic.png").is_file() and not list(out.glob("*.tmp")) and len(list(out.iterdir())) == 2


def test_a_missing_folder_is_a_one_line_error(script, tmp_path, capsys):
    (tmp_path / "x.safetensors").write_bytes(b"")
    code = script.main(
        [
            "--train-config",
            str(CONFIG),
            "--data",
            str(tmp_path / "nothing"),
            "--lora",
            str(tmp_path / "x.safetensors"),
            "--judge",
            str(tmp_path / "x.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "ldm data emoji --styles" in err
