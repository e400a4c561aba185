"""The app's text-to-image page with a ControlNet: a file and a control image named on the page change the image,
the settings (and so the PNG) record them, and a bad ControlNet file is an error message on the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_model, write_tiny_model_files
from PIL import Image
from streamlit.testing.v1 import AppTest

import ldm.interfaces.app
from ldm.formats.controlnet_files import save_controlnet
from ldm.interfaces.app.state import ENV_CKPT, ENV_CONFIG
from ldm.models.controlnet import ControlNet

PAGE = Path(ldm.interfaces.app.__file__).resolve().parent / "views" / "text.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet-app")
    model = tiny_model(0)
    config, ckpt = write_tiny_model_files(root, "tiny", model=model)
    net = ControlNet(model.unet, model.latent_channels, model.downscale)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    save_controlnet(net, root / "canny.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "edges.png")
    (root / "not-a-controlnet.safetensors").write_bytes(b"not safetensors")
    return root, config, ckpt


def generate(files, monkeypatch, controlnet: str = "") -> AppTest:
    root, config, ckpt = files
    monkeypatch.setenv(ENV_CONFIG, config)
    monkeypatch.setenv(ENV_CKPT, ckpt)
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    at.number_input(key="t2i_steps").set_value(3)
    at.text_input(key="t2i_cn_file").set_value(controlnet)
    at.text_input(key="t2i_cn_image").set_value(str(root / "edges.png"))
    at.number_input(key="t2i_cn_weight").set_value(0.8)
    at.button(key="t2i_go").click().run()
    assert not at.exception, at.exception
    return at


def test_the_text_page_applies_and_records_a_controlnet(files, monkeypatch):
    root = files[0]
    plain = generate(files, monkeypatch)
    controlled = generate(files, monkeypatch, str(root / "canny.safetensors"))
    assert not plain.error and not controlled.error, [e.value for e in controlled.error]
    plain_image, plain_settings = plain.session_state["t2i_result"]
    image, settings = controlled.session_state["t2i_result"]
    assert "controls" not in plain_settings
    assert settings["controls"] == [
        {
            "image": str(root / "edges.png"),
            "controlnet": str(root / "canny.safetensors"),
            "weight": 0.8,
            "start": 0.0,
            "end": 1.0,
            "resize": "stretch",
            "mode": "balanced",
        }
    ]
    assert not np.array_equal(np.asarray(image), np.asarray(plain_image))
    broken = generate(files, monkeypatch, str(root / "not-a-controlnet.safetensors"))
    assert any("Generation failed" in e.value for e in broken.error)
