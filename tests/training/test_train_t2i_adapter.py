"""Training a T2I-Adapter with `ldm train` (controlnet: {kind: t2i_adapter}) over the frozen tiny model: the loss is
finite and falls on a fixed batch, only the adapter trains, the export (diffusers' names, fp16, and its folder)
loads back through --control's loader and changes the output, and --resume continues the run."""

from __future__ import annotations

import pytest
import torch
from diffusers import T2IAdapter as DiffusersT2IAdapter
from test_train_controlnet import CONTROL, Image_of_a_square, base, eval_loss, fixed_batch, shapes  # noqa: F401

from ldm.formats.controlnet_files import load_controlnet
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.control_images import control_image
from ldm.models.controlnet import Control, using_controlnets
from ldm.models.t2i_adapter import T2IAdapter
from ldm.tasks.txt2img import txt2img
from ldm.training.config_checks import TrainConfigError
from ldm.training.run import build_module, train
from ldm.training.tiny import tiny_train_config

ADAPTER = [*CONTROL, "controlnet.kind=t2i_adapter", "controlnet.adapter_blocks=1", "controlnet.export_diffusers=true"]


def test_an_adapter_trains_exports_loads_and_resumes(shapes, base, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    overrides = [
        "trainer.max_steps=12",
        "training.lr=1e-3",
        "training.warmup_steps=2",
        "logging.checkpoint_every_n_steps=6",
    ]
    cfg = tiny_train_config("ldm", shapes, run_dir, [*ADAPTER, base, *overrides])
    batch = fixed_batch(cfg)
    torch.manual_seed(0)
    fresh = build_module(cfg)
    assert isinstance(fresh.controlnet, T2IAdapter)
    before = eval_loss(fresh, batch)
    module, trainer = train(cfg)
    after = eval_loss(module, batch)
    assert trainer.global_step == 12
    assert torch.isfinite(torch.tensor(after)) and after < before, (before, after)
    first = torch.load(run_dir / "checkpoints" / "step-000006.ckpt", weights_only=True)["state_dict"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(first["model.unet.out.2.weight"], last["model.unet.out.2.weight"])  # the base stays
    assert not torch.equal(first["controlnet.adapter.conv_in.weight"], last["controlnet.adapter.conv_in.weight"])

    for path in (run_dir / "t2i-adapter.safetensors", run_dir / "t2i-adapter-diffusers"):
        adapter = load_controlnet(path, module.model)
        assert isinstance(adapter, T2IAdapter) and adapter.config == module.controlnet.config
        trained = module.controlnet.state_dict()
        assert all(torch.equal(v.float(), trained[k].half().float()) for k, v in adapter.state_dict().items())
    assert (
        DiffusersT2IAdapter.from_pretrained(run_dir / "t2i-adapter-diffusers", local_files_only=True).config[
            "num_res_blocks"
        ]
        == 1
    )
    plain = txt2img(module.model, "red square", steps=3, progress=False)[0]
    with using_controlnets(module.model, [Control(adapter, control_image(Image_of_a_square()))]):
        steered = txt2img(module.model, "red square", steps=3, progress=False)[0]
    assert plain.tobytes() != steered.tobytes()

    assert cli_main(["train", "--resume", str(run_dir), "trainer.max_steps=14"]) == 0
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 14 and resumed["ldm"]["batches_seen"] == 14


def test_an_unknown_kind_is_refused_in_one_line(shapes, tmp_path):  # noqa: F811
    with pytest.raises(TrainConfigError) as refused:
        build_module(tiny_train_config("ldm", shapes, tmp_path / "run", [*CONTROL, "controlnet.kind=lora"]))
    assert str(refused.value) == "controlnet.kind must be controlnet or t2i_adapter, got 'lora'"
