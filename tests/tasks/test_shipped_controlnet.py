"""The canny ControlNet shipped for the default model (checkpoints/emoji/controlnet-canny.safetensors): it loads with
the ControlNet loader, was made for the shipped model, and the images follow a drawn edge map more closely with it
than without it (Canny edges of the outputs against the control edges, docs/controlnet.md)."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from ldm.core.defaults import shipped_path
from ldm.evaluation.control_edges import compare_with_and_without, drawn_shapes
from ldm.formats.controlnet_files import load_controlnet
from ldm.formats.load import load_model
from ldm.io.checkpoint import file_sha256

CONTROLNET = shipped_path("checkpoints/emoji/controlnet-canny.safetensors")


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_it_is_an_fp16_canny_controlnet_made_for_the_shipped_model():
    with safe_open(str(CONTROLNET), framework="pt") as f:
        meta = f.metadata()
        assert meta["preprocess"] == "canny" and int(meta["step"]) > 0
        assert meta["base_model_sha256"] == file_sha256(shipped_path("checkpoints/emoji/model.safetensors"))
        assert all(str(f.get_slice(k).get_dtype()) == "F16" for k in f.keys())


def test_images_follow_the_edges_better_with_it_than_without(model):
    net = load_controlnet(CONTROLNET, model)
    steered, plain = compare_with_and_without(model, net, drawn_shapes(), ["red apple", "grinning face"], steps=10)
    # Measured at 10 steps on these 2 prompts x 4 shapes: F1 0.72 with it, 0.32 without (docs/controlnet.md).
    assert steered.f1 > plain.f1 + 0.2, (steered, plain)
    assert steered.iou > plain.iou, (steered, plain)
