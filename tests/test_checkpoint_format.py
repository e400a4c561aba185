"""Original SD 2.x checkpoints map onto our model: every tensor, every shape, strictly."""

import json
import os
from pathlib import Path

import pytest
import torch
from factories import tiny_model

from ldm.core.config import load_config, model_from_config
from ldm.io.checkpoint import (
    CheckpointError,
    atomic_path,
    from_original_keys,
    load_into,
    load_state_dict,
    save_state_dict,
    to_original_keys,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "stable-diffusion"


def manifest_state(sd_format_dir, name, device="meta"):
    keys = json.load(open(os.path.join(sd_format_dir, name)))["keys"]
    return {k: torch.empty(shape, device=device) for k, shape in keys.items()}


@pytest.mark.parametrize(
    "config, manifest", [("v2-inference.yaml", "sd-v2-base.json"), ("v2-inference-v.yaml", "sd-v2-v.json")]
)
def test_full_size_sd2_loads_strictly_on_meta(sd_format_dir, config, manifest, caplog):
    with torch.device("meta"):
        model = model_from_config(CONFIGS / config)
    state = manifest_state(sd_format_dir, manifest)
    with caplog.at_level("INFO"):
        ours = from_original_keys(state)
    assert "ignored" in caplog.text  # the schedule buffers are dropped and said so
    load_into(model, ours, assign=True)  # raises on any missing, unexpected or mis-shaped tensor
    assert sum(p.numel() for p in model.parameters()) > 1.2e9
    assert model.prediction == ("v" if "-v" in config else "eps")
    # Writing back gives exactly the original names for the network weights.
    back = set(to_original_keys(model.state_dict()))
    expected = {k for k in state if k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model."))}
    assert back == expected


def test_original_schedule_name_maps_to_scaled_linear():
    cfg = load_config(CONFIGS / "v2-inference.yaml")
    with torch.device("meta"):
        model = model_from_config(cfg)
    assert model.schedule["kind"] == "scaled_linear"


def test_ema_entries_are_ignored_and_missing_ones_named(tmp_path):
    model = tiny_model()
    state = model.original_state_dict()
    state["model_ema.decay"] = torch.tensor(0.999)
    state["alphas_cumprod"] = torch.zeros(1000)
    path = tmp_path / "m.safetensors"
    save_state_dict(state, path)
    model.load_weights(path)  # EMA and schedule entries dropped without complaint

    del state["model.diffusion_model.out.2.weight"]
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    save_state_dict(state, path)
    with pytest.raises(CheckpointError) as err:
        model.load_weights(path)
    msg = str(err.value)
    assert "unet.out.2.weight" in msg and "unet.extra.weight" in msg and "\n" not in msg


def test_shape_mismatch_is_named(tmp_path):
    model = tiny_model()
    state = model.original_state_dict()
    state["first_stage_model.quant_conv.bias"] = torch.zeros(3)
    path = tmp_path / "m.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointError, match="vae.quant_conv.bias"):
        model.load_weights(path)


def test_ckpt_is_read_with_weights_only(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.original_state_dict(), "global_step": 3}, path)
    other = tiny_model(seed=1)
    other.load_weights(path)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, bad)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict(bad)


def test_safetensors_round_trip_and_atomic_write(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "x.safetensors"
    save_state_dict(state, path)
    loaded = load_state_dict(path)
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"], state["b"])
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp files left behind
    old = os.umask(0o022)
    try:
        save_state_dict(state, path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, like any file written without a temp file
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "w.bin2").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_state_dict(tmp_path / "w.bin2")


def test_atomic_path_keeps_the_old_file_on_error_and_gives_usual_permissions(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.yaml"]
    old = os.umask(0o022)
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write("new")
    finally:
        os.umask(old)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o644


def test_save_state_dict_casts_only_floating_tensors(tmp_path):
    state = {"w": torch.randn(3, 4), "steps": torch.arange(5)}
    save_state_dict(state, tmp_path / "half.safetensors", float_dtype=torch.float16)
    loaded = load_state_dict(tmp_path / "half.safetensors")
    assert loaded["w"].dtype == torch.float16 and loaded["steps"].dtype == torch.int64
    torch.testing.assert_close(loaded["w"].float(), state["w"], atol=1e-3, rtol=1e-3)
    assert torch.equal(loaded["steps"], state["steps"])
    assert state["w"].dtype == torch.float32  # the caller's tensors are untouched
