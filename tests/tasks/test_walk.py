"""Latent walks: slerp maths, and `ldm walk` writing a smoothly changing GIF."""

import os

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_config, tiny_model
from PIL import Image, ImageSequence

from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.tasks.walk import WalkError, gif_bytes, lerp, slerp, walk_frames, walk_positions


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    cfg, ckpt = d / "tiny.yaml", d / "tiny.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), ckpt)
    return str(cfg), str(ckpt)


def test_slerp_endpoints_are_exact_and_unit_norm_is_kept():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    a, b = a / a.norm(), b / b.norm()
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    for t in (0.1, 0.25, 0.5, 0.9):
        assert abs(float(slerp(a, b, t).norm()) - 1.0) < 1e-5
    # A straight line would cut inside the sphere: its midpoint is much shorter.
    assert float(lerp(a, b, 0.5).norm()) < 0.8


def test_slerp_moves_at_constant_angular_speed_and_handles_parallel_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([2**-0.5, 2**-0.5]), atol=1e-6)
    third = slerp(a, b, 1 / 3)
    assert torch.allclose(third, torch.tensor([np.cos(np.pi / 6), np.sin(np.pi / 6)], dtype=torch.float32), atol=1e-6)
    same = slerp(a, 2 * a, 0.5)  # parallel: falls back to a straight line, no division by sin(0)
    assert torch.allclose(same, 1.5 * a)
    with pytest.raises(WalkError, match="shapes"):
        slerp(a, torch.zeros(3), 0.5)


def test_walk_needs_two_different_ends(model):
    with pytest.raises(WalkError, match="both ends"):
        walk_frames(model, "cat", None, seed_a=1, frames=3, progress=False)
    with pytest.raises(WalkError, match="at least 2 frames"):
        walk_positions(1)


def test_walk_ends_are_the_plain_txt2img_images(model):
    from ldm.tasks.txt2img import txt2img

    frames = walk_frames(model, "a cat", "a dog", 1, 2, 3, height=16, width=16, options=_opts(), progress=False)
    first = txt2img(model, "a cat", seed=1, height=16, width=16, options=_opts(), progress=False)[0]
    last = txt2img(model, "a dog", seed=2, height=16, width=16, options=_opts(), progress=False)[0]
    # Equal up to float rounding (the walk encodes both prompts in one batch).
    assert np.abs(np.asarray(frames[0], dtype=float) - np.asarray(first, dtype=float)).max() <= 1
    assert np.abs(np.asarray(frames[-1], dtype=float) - np.asarray(last, dtype=float)).max() <= 1


def _opts():
    from ldm.sampling.options import SamplingOptions

    return SamplingOptions(steps=3, guidance_scale=3.0)


def _frames(path):
    with Image.open(path) as gif:
        return [np.asarray(f.convert("RGB"), dtype=np.float32) for f in ImageSequence.Iterator(gif)]


def test_cli_walk_writes_a_smooth_gif(model_files, tmp_path):
    cfg, ckpt = model_files
    out = tmp_path / "walk.gif"
    code = main(
        [
            "walk",
            "prompt a",
            "prompt b",
            "--frames",
            "12",
            "--seed-a",
            "1",
            "--seed-b",
            "2",
            "--out",
            str(out),
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--steps",
            "3",
            "--height",
            "16",
            "--width",
            "16",
            "--no-progress",
        ]
    )
    assert code == 0
    frames = _frames(out)
    assert len(frames) == 12 and frames[0].shape == (16, 16, 3)
    steps = [np.abs(b - a).mean() for a, b in zip(frames, frames[1:])]
    ends = np.abs(frames[-1] - frames[0]).mean()
    assert ends > 5  # the two ends really differ
    assert max(steps) < 0.5 * ends, (steps, ends)  # no single jump dominates
    assert np.mean(steps) < 0.25 * ends  # and each step is a small part of the whole change


def test_cli_rejects_unknown_output_format(model_files, tmp_path):
    cfg, ckpt = model_files
    assert main(["walk", "a", "b", "--out", str(tmp_path / "w.avi"), "--config", cfg, "--ckpt", ckpt]) == 2


def test_gif_boomerang_plays_back():
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(4)]
    with Image.open(__import__("io").BytesIO(gif_bytes(frames, boomerang=True))) as gif:
        assert gif.n_frames == 6


def test_mp4_is_written_when_imageio_ffmpeg_is_there_and_said_plainly_when_not(tmp_path):
    import importlib.util

    from ldm.tasks.walk import VideoUnavailableError, save_mp4

    frames = [Image.new("RGB", (16, 16), (i * 40, 100, 200 - i * 40)) for i in range(5)]
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        with pytest.raises(VideoUnavailableError, match="imageio-ffmpeg"):
            save_mp4(frames, tmp_path / "w.mp4")
        return
    path = save_mp4(frames, tmp_path / "w.mp4", fps=5)
    head = path.read_bytes()[:12]
    assert head[4:8] == b"ftyp"  # an MP4 container
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        assert sum(1 for _ in reader) == 5


def test_mp4_is_written_whole_or_not_at_all(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="MP4 output needs imageio-ffmpeg (pip install -e '.[app]')")
    from ldm.tasks.walk import save_mp4

    earlier = tmp_path / "w.mp4"
    earlier.write_bytes(b"an earlier walk")
    frames = [Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16)), Image.new("RGB", (24, 16))]  # fails at the third
    with pytest.raises(ValueError, match="same size"):
        save_mp4(frames, earlier)
    assert earlier.read_bytes() == b"an earlier walk" and os.listdir(tmp_path) == ["w.mp4"]  # no half-encoded temp file
    save_mp4(frames[:2], earlier)
    assert earlier.read_bytes()[4:8] == b"ftyp"
