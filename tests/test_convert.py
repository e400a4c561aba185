"""ldm convert (ldm/formats/convert.py): .ckpt -> .safetensors keeps every tensor exactly, drops EMA or schedule buffers
on request, refuses a pickle payload without running it, and writes nothing on any error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import tiny_config, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file

from ldm.formats.convert import ConvertError, convert_checkpoint
from ldm.formats.detect import detect_file
from ldm.formats.load import load_model
from ldm.io.checkpoint import CheckpointError, save_state_dict

RUNNER = Path(__file__).with_name("cli_runner.py")


class Payload:
    """Unpickling this would create the folder `marker`: what a malicious checkpoint does, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def original_checkpoint() -> dict[str, torch.Tensor]:
    """A tiny model in the original layout, with what real .ckpt files also carry: EMA copies, schedule buffers,
    an integer counter, half-precision entries and tensors sharing storage."""
    state = tiny_model().original_state_dict()
    unet = [k for k in state if k.startswith("model.diffusion_model.")]
    for key in unet[:5]:
        state["model_ema." + key[len("model.") :].replace(".", "")] = state[key].clone() + 1
    state["model_ema.num_updates"] = torch.tensor(12, dtype=torch.int32)
    state["betas"] = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    state["alphas_cumprod"] = torch.cumprod(1 - state["betas"], 0)
    state["extra.half"] = torch.randn(3, 5).half()
    state["extra.bf16"] = torch.randn(4).bfloat16()
    fused = torch.randn(6, 4)
    state["extra.q"], state["extra.k"] = fused[:3], fused[3:]  # two slices of one storage
    state["extra.tied_a"] = state["extra.tied_b"] = torch.randn(
        2, 2
    )  # one tensor under two names (safetensors refuses)
    return state


@pytest.fixture
def ckpt(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = original_checkpoint()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 875000, "epoch": 3}, path)
    return path, state


def test_round_trip_keeps_every_tensor_exactly(ckpt, tmp_path):
    path, state = ckpt
    out = convert_checkpoint(path, tmp_path / "model.safetensors")
    loaded = load_file(out.path)
    assert loaded.keys() == state.keys() and out.kept == len(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    with safe_open(str(out.path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "converted_from": "model.ckpt"}  # no global_step: never used
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "model.safetensors"]  # no temp files


def test_ema_and_schedule_buffers_can_be_left_out(ckpt, tmp_path):
    path, state = ckpt
    out = convert_checkpoint(path, tmp_path / "pruned.safetensors", ema=False, schedule=False)
    loaded = load_file(out.path)
    assert out.dropped == {"EMA": 6, "schedule buffers": 2}
    assert not any(k.startswith("model_ema.") for k in loaded) and "betas" not in loaded
    assert {
        k for k in state if not k.startswith("model_ema.") and k not in ("betas", "alphas_cumprod")
    } == loaded.keys()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_converted_file_loads_into_the_model(tmp_path):
    model = tiny_model(seed=2)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": model.original_state_dict()}, path)
    out = convert_checkpoint(path, tmp_path / "tiny.safetensors", prediction="v")
    loaded = load_model(tiny_config(), out.path)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    assert load_file(out.path).keys() == model.original_state_dict().keys()
    with safe_open(str(out.path), framework="pt") as f:
        assert f.metadata()["prediction"] == "v"


def test_prediction_recorded_by_convert_is_what_detection_reads(sd_format_dir, tmp_path):
    """An SD 2.x 768-v .ckpt converted with --prediction v loads later without the option."""
    keys = json.loads(Path(sd_format_dir, "sd-v2-v.json").read_text())["keys"]
    wanted = (
        "model.diffusion_model.input_blocks.0.0.weight",
        "cond_stage_model.model.ln_final.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    )
    state = {k: torch.zeros(keys[k], dtype=torch.float16) for k in wanted}
    state.update({f"first_stage_model.encoder.down.{i}.block.0.norm1.weight": torch.zeros(1) for i in range(4)})
    torch.save({"state_dict": state}, tmp_path / "768-v.ckpt")
    assert detect_file(tmp_path / "768-v.ckpt").prediction == "eps"  # a pickle has no metadata: the default
    out = convert_checkpoint(tmp_path / "768-v.ckpt", tmp_path / "768-v.safetensors", prediction="v")
    found = detect_file(out.path)
    assert (found.family, found.prediction, found.config_name) == ("sd2", "v", "v2-inference-v.yaml")


def test_a_pickle_payload_raises_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_checkpoint(evil, tmp_path / "evil.safetensors")
    assert not marker.exists() and not (tmp_path / "evil.safetensors").exists()
    torch.load(evil, weights_only=False)  # the guard of this test: the payload is real and does run when allowed
    assert marker.is_dir()


def test_bad_requests_are_refused_before_writing(ckpt, tmp_path):
    path, _ = ckpt
    with pytest.raises(ConvertError, match="must end in .safetensors"):
        convert_checkpoint(path, tmp_path / "out.ckpt")
    existing = tmp_path / "existing.safetensors"
    save_state_dict({"a": torch.ones(1)}, existing)
    with pytest.raises(ConvertError, match="already exists"):
        convert_checkpoint(path, existing)
    assert load_file(existing).keys() == {"a"}
    convert_checkpoint(path, existing, overwrite=True)
    assert "betas" in load_file(existing)
    with pytest.raises(ConvertError, match="cannot read"):
        convert_checkpoint(tmp_path / "model.txt", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli(tmp_path):
    torch.save({"state_dict": original_checkpoint()}, tmp_path / "model.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload(tmp_path / "payload-ran")}, tmp_path / "evil.ckpt")
    cases = [
        ["convert", "model.ckpt", "model.safetensors", "--no-ema"],
        ["convert", "evil.ckpt", "evil.safetensors"],
        ["convert", "model.ckpt", "model.safetensors"],
    ]  # exists now
    r = subprocess.run(
        [sys.executable, str(RUNNER)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        input=json.dumps([{"argv": argv, "cwd": str(tmp_path), "timeout": 120} for argv in cases]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ok, evil, exists = json.loads(r.stdout)
    assert ok["rc"] == 0 and "6 EMA left out" in ok["stderr"], ok["stderr"]
    for result, message in ((evil, "weights_only"), (exists, "already exists")):
        errors = [line for line in result["stderr"].splitlines() if "error:" in line]
        assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"]
        assert len(errors) == 1 and message in errors[0], result["stderr"]
    assert not (tmp_path / "payload-ran").exists() and not (tmp_path / "evil.safetensors").exists()
