"""Tiny-CLIP training with open_clip's model and loss, and the shipped emoji CLIP weights."""

import json
import os
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import load_state_dict
from ldm.models.clip import (
    DEFAULT_CONFIG,
    ClipConfigError,
    create_clip,
    encode_text_trimmed,
    load_clip,
    save_clip,
    tokenize,
)
from ldm.training.clip import retrieval_accuracy, train_clip

ROOT = Path(__file__).resolve().parents[2]
# The shipped CLIP is the judge of `ldm eval` (the default model's text encoder lives inside model.safetensors).
SHIPPED = ROOT / "checkpoints" / "emoji" / "judge.safetensors"
SHIPPED_CONFIG = ROOT / "checkpoints" / "emoji" / "judge.json"
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (240, 220, 20),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "purple": (140, 30, 160),
    "orange": (250, 140, 0),
}
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: a second thread only adds synchronisation, which is very slow on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_config(tmp_path):
    path = tmp_path / "tiny-test-clip.json"
    path.write_text(json.dumps(TINY))
    return path


def _synthetic(n_repeats=1):
    """Solid-colour squares with a small shape, captioned with the colour name."""
    images, captions = [], []
    for name, rgb in COLORS.items():
        x = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16) / 127.5 - 1
        for _ in range(n_repeats):
            images.append(x.clone())
            captions.append(f"a {name} square")
    return torch.stack(images), captions


def test_training_lowers_the_contrastive_loss(tiny_config):
    torch.manual_seed(0)
    model = create_clip(tiny_config)
    images, captions = _synthetic()
    before = retrieval_accuracy(model, images, tokenize(captions))
    losses = train_clip(
        model, images, captions, steps=40, batch_size=8, lr=3e-3, warmup=4, log_every=0, precision="fp32"
    )
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    after = retrieval_accuracy(model, images, tokenize(captions))
    assert after["t2i_top1"] >= 0.75 > before["t2i_top1"]


def test_bf16_autocast_training_also_learns(tiny_config):
    torch.manual_seed(0)
    model = create_clip(tiny_config)
    images, captions = _synthetic()
    losses = train_clip(
        model, images, captions, steps=30, batch_size=8, lr=3e-3, warmup=3, log_every=0, precision="bf16"
    )
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_trimmed_text_encoding_equals_open_clip(tiny_config):
    torch.manual_seed(0)
    model = create_clip(tiny_config).eval()
    tokens = tokenize(["grinning face", "woman judge: medium-dark skin tone", "flag: United Kingdom"])
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        trimmed = encode_text_trimmed(model, tokens, normalize=True)
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_save_is_fp16_atomic_and_reloads_strictly(tiny_config, tmp_path):
    model = create_clip(tiny_config)
    path = tmp_path / "out" / "clip.safetensors"
    save_clip(model, path)
    assert sorted(os.listdir(path.parent)) == ["clip.safetensors"]  # no temp file left behind
    with safe_open(str(path), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    again = load_clip(path, tiny_config)
    for k, v in model.state_dict().items():
        assert torch.allclose(again.state_dict()[k], v.half().float())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ClipConfigError, match="vision_cfg"):
        create_clip(bad)
    with pytest.raises(ClipConfigError, match="not found"):
        create_clip(tmp_path / "missing.json")


def test_main_trains_and_reports(tiny_config, tmp_path, capsys):
    data = tmp_path / "data"
    for split, repeats in (("train", 2), ("heldout", 1)):
        rows = []
        for i, (name, rgb) in enumerate(COLORS.items()):
            for r in range(repeats):
                rel = f"images/{i:02d}{r}.png"
                (data / split / "images").mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 20), rgb).save(data / split / rel)
                rows.append({"file": rel, "caption": f"a {name} square"})
        (data / split / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ckpt"
    code = cli_main(
        [
            "clip",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "12",
            "--batch-size",
            "8",
            "--config",
            str(tiny_config),
            "--lr",
            "3e-3",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "clip_metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["heldout"]["n"] == len(COLORS)
    assert metrics["loss_final"] < metrics["loss_first"]
    assert "text->image top-1" in (out / "CLIP_CARD.md").read_text()
    assert load_clip(out / "clip.safetensors", tiny_config) is not None
    assert "held-out text->image top-1" in capsys.readouterr().out


def test_shipped_config_is_standard_open_clip():
    cfg = json.loads(DEFAULT_CONFIG.read_text())
    assert cfg["text_cfg"]["context_length"] == 77 and cfg["text_cfg"]["vocab_size"] == 49408
    assert cfg["vision_cfg"]["image_size"] == 64
    open_clip.add_model_config(DEFAULT_CONFIG)
    assert open_clip.get_model_config("emoji-clip") == cfg


def test_shipped_weights_load_strictly_into_the_config_model():
    assert SHIPPED.is_file(), f"shipped CLIP weights missing: {SHIPPED}"
    assert SHIPPED.stat().st_size < 40_000_000
    with safe_open(str(SHIPPED), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    model = create_clip(SHIPPED_CONFIG)
    state = {k: v.float() for k, v in load_state_dict(SHIPPED).items()}
    result = model.load_state_dict(state, strict=True)  # raises on any missing/unexpected key or shape
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state) == set(model.state_dict())


def test_shipped_text_tower_loads_into_the_sd_text_encoder():
    from ldm.models.text_encoder import FrozenOpenCLIPEmbedder

    enc = FrozenOpenCLIPEmbedder(arch=str(SHIPPED_CONFIG), layer="penultimate", weights=str(SHIPPED))
    with torch.no_grad():
        h = enc.encode_tokens(enc.tokenize(["grinning face", "woman judge: dark skin tone"]))
    assert h.shape == (2, 77, json.loads(SHIPPED_CONFIG.read_text())["text_cfg"]["width"])
    assert torch.isfinite(h).all() and not torch.allclose(h[0], h[1])


def test_shipped_clip_matches_captions_to_rendered_emoji():
    from PIL import ImageFont

    from ldm.data import emoji
    from ldm.data.folder import to_tensor

    names = [
        "grinning face",
        "red apple",
        "dog face",
        "flag: Japan",
        "police car",
        "pizza",
        "soccer ball",
        "crescent moon",
        "fire",
        "rainbow",
    ]
    by_name = {e.name: e for e in emoji.parse_emoji_test(emoji.find_emoji_list().read_text(encoding="utf-8"))}
    font = ImageFont.truetype(str(emoji.find_font()), emoji.FONT_SIZE)
    images = torch.stack([to_tensor(emoji.render_emoji(by_name[n].text, font, 64)) for n in names])
    acc = retrieval_accuracy(load_clip(SHIPPED, SHIPPED_CONFIG), images, tokenize(names))
    assert acc["t2i_top1"] >= 0.6 and acc["i2t_top1"] >= 0.6, acc  # chance is 0.1


def test_bad_training_arguments_are_project_errors(tiny_config, tmp_path, capsys):
    from ldm.core.errors import LdmError

    model = create_clip(tiny_config)
    images, captions = _synthetic()
    for kwargs, message in (
        ({"steps": 0}, "steps must be positive"),
        ({"precision": "fp8"}, "precision must be"),
        ({"captions": captions[:1]}, "need at least 2 image/caption pairs"),
    ):
        args = {"model": model, "images": images, "captions": captions, "steps": 1, **kwargs}
        with pytest.raises(LdmError, match=message):
            train_clip(**args)
    assert cli_main(["clip", "--eval-only", "--out", str(tmp_path), "--config", str(tiny_config)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"ldm clip: error: --eval-only needs the training figures in {tmp_path / 'clip_metrics.json'}"
    )
