"""The OpenVINO backend (ldm.backends): the default model's images against torch's, the export cache, the refusals.

Tolerances, stated: OpenVINO at f32 makes the default model's 4-step image within 2 levels of 255 of torch's fp32
image (PSNR over 45 dB; measured: identical); at bf16 within PSNR 35 dB of it (measured: 47.7 dB, max 14 levels).

Run by tests/backends/test_openvino_backend.py in a process of their own, so that OpenVINO's runtime (its thread
pool) is never loaded into the suite's process, whose later training tests fork.
"""

from __future__ import annotations

import sys

import numpy as np
import openvino  # noqa: F401  (the extra; scripts/setup.sh installs it: a missing one fails these)
import pytest
import torch

from ldm.backends import openvino_export
from ldm.backends.openvino_export import BackendError, OpenVINOMissingError
from ldm.backends.openvino_networks import backend_networks, use_backend
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main
from ldm.tasks.txt2img import txt2img


def psnr(a, b) -> float:
    a, b = np.asarray(a).astype(np.float64), np.asarray(b).astype(np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def made(cache):
    """The default model's image on torch, then on OpenVINO at f32 and bf16 (one export, kept in `cache`)."""
    torch.set_num_threads(1)
    model = load_model(device="cpu")
    reference = txt2img(model, "a red heart", steps=4, progress=False)
    use_backend(model, "openvino", cache_dir=cache)
    f32 = txt2img(model, "a red heart", steps=4, progress=False)
    bf16 = txt2img(model, "a red heart", steps=4, progress=False, precision="bf16")
    return model, reference, f32, bf16


def test_openvino_samples_the_default_model_as_torch_does(made):
    model, reference, f32, bf16 = made
    assert np.abs(np.asarray(f32[0]).astype(int) - np.asarray(reference[0]).astype(int)).max() <= 2
    assert psnr(f32[0], reference[0]) > 45
    assert psnr(bf16[0], reference[0]) > 35
    assert f32.settings["backend"] == "openvino" and bf16.settings["precision"] == "bf16"
    assert "backend" not in reference.settings  # torch, the default, is not written
    exports = {role: sum(len(n.exports) for n in networks) for role, networks in backend_networks(model).items()}
    assert exports == {"unet": 1, "decoder": 1, "text": 1}  # bf16 is a compile of the same export


def test_the_export_is_reused_by_a_second_run_and_redone_when_weights_change(made, cache, monkeypatch):
    converted = []
    real = openvino_export.convert
    monkeypatch.setattr(openvino_export, "convert", lambda *a: converted.append(a[0]) or real(*a))
    model = use_backend(load_model(device="cpu"), "openvino", cache_dir=cache)  # a second run: a new model
    again = txt2img(model, "a red heart", steps=4, progress=False)
    assert converted == [] and psnr(again[0], made[2][0]) == float("inf")
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.add_(0.05)  # changed in place, as merging a LoRA changes the U-Net's
    changed = txt2img(model, "a red heart", steps=4, progress=False)
    assert [type(m).__name__ for m in converted] == ["TracedDecoder"]  # only the changed network is exported again
    assert psnr(changed[0], again[0]) < 60


def test_refusals_are_one_line(made):
    model = made[0]
    with pytest.raises(BackendError, match="ControlNets are not run by the OpenVINO backend"):
        model.unet(torch.zeros(1, 4, 8, 8), torch.ones(1), context=torch.zeros(1, 77, 192),
                   guidance=torch.ones(1), control=[torch.zeros(1)])  # fmt: skip
    with pytest.raises(BackendError, match=r"seamless tiling \(--tiling\) is not run"):
        txt2img(model, "a red heart", steps=1, progress=False, tiling="xy", height=64, width=64)
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        use_backend(model, "onnx")


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(OpenVINOMissingError, match=r'^openvino is not installed: pip install "\.\[openvino\]"$'):
        openvino_export.import_openvino()
    code = main(["txt2img", "x", "--backend", "openvino", "--steps", "1", "--outdir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith('openvino is not installed: pip install ".[openvino]"')
    assert "Traceback" not in "\n".join(err)
