"""A T2I-Adapter through the real command (tests/cli_runner.py): `--control IMAGE:ADAPTER` takes a diffusers folder
or its weights file (told from a ControlNet by the tensor names), changes the image, is made again by --from-png,
and one that does not fit the model is refused in one line with exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from factories import tiny_model, write_tiny_model_files
from PIL import Image
from test_controlnet import as_array, hint_image, randomised
from test_controlnet_cli import run_cli

from ldm.formats.t2i_adapter_files import save_t2i_adapter
from ldm.models.t2i_adapter import T2IAdapter, t2i_adapter_for


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    model = tiny_model(0)
    root = tmp_path_factory.mktemp("adapter-cli")
    write_tiny_model_files(root, "tiny", model=model)
    save_t2i_adapter(randomised(t2i_adapter_for(model.unet, model.downscale), 5), root / "adapter")
    save_t2i_adapter(T2IAdapter(3, [48, 64], 1, model.downscale), root / "wide")
    hint_image(0).save(root / "edges.png")
    return root


def test_an_adapter_folder_or_file_through_the_command(workspace):
    made = workspace / "folder" / "samples" / "00000.png"
    results = run_cli(
        workspace,
        ["txt2img", "a cat", "--outdir", "plain"],
        ["txt2img", "a cat", "--outdir", "folder", "--control", "edges.png:adapter:0.8"],
        [
            "txt2img",
            "a cat",
            "--outdir",
            "file",
            "--control",
            "edges.png:adapter/diffusion_pytorch_model.safetensors:0.8",
        ],
        ["txt2img", "--from-png", str(made), "--outdir", "again"],
        ["txt2img", "x", "--outdir", "bad", "--control", "edges.png:wide"],
    )
    for result in results[:4]:
        assert result["rc"] == 0, result["stderr"][-3000:]
    plain, folder, file, again = (
        as_array(Image.open(workspace / name / "samples" / "00000.png"))
        for name in ("plain", "folder", "file", "again")
    )
    assert not np.array_equal(plain, folder)
    assert np.array_equal(folder, file) and np.array_equal(folder, again)
    bad = results[4]
    assert (
        bad["rc"] == 2 and "an adapter of feature widths [48, 64] for a U-Net of level widths [32, 64]" in bad["stderr"]
    )
    assert "Traceback" not in bad["stderr"]
