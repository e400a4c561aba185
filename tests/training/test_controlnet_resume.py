"""A ControlNet run stopped at step k and resumed to n ends with the weights of an uninterrupted run to n, exactly:
the optimiser's state, the learning-rate schedule, the data position, the flips and the dropped prompts all resume."""

from __future__ import annotations

import torch
from factories import tiny_model_from

from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import load_state_dict, save_state_dict
from ldm.training.run import train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

CONTROL = ["controlnet.train=true", "data.val_fraction=0", "logging.sample_every_n_steps=0", "logging.csv=false"]
SETTINGS = ["training.warmup_steps=3", "training.cond_dropout=0.5", "data.flip=true", "data.batch_size=4"]


def test_a_controlnet_run_resumed_at_step_3_ends_as_one_run_to_6_exactly(tmp_path):
    shapes = make_shapes_dataset(tmp_path / "shapes", size=16, count=10)  # at batch 4 the second epoch starts in step 3
    base = tmp_path / "base.safetensors"
    save_state_dict(tiny_model_from(tiny_train_config("ldm", shapes, tmp_path / "unused")).original_state_dict(), base)

    def config(run: str, *extra: str) -> dict:
        return tiny_train_config(
            "ldm", shapes, tmp_path / run, [*CONTROL, *SETTINGS, f"init.checkpoint={base}", *extra]
        )

    whole, _ = train(config("whole", "trainer.max_steps=6"))
    train(config("halves", "trainer.max_steps=3", "logging.checkpoint_every_n_steps=3"))
    assert cli_main(["train", "--resume", str(tmp_path / "halves"), "trainer.max_steps=6"]) == 0
    resumed = torch.load(tmp_path / "halves" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    trained = {f"controlnet.{k}": v for k, v in whole.controlnet.state_dict().items()}
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in trained.items())
    started = load_state_dict(tmp_path / "whole" / "controlnet.safetensors")
    assert not all(torch.equal(v, torch.zeros_like(v)) for k, v in started.items() if "zero_convs" in k)  # it moved
    exported = load_state_dict(tmp_path / "halves" / "controlnet.safetensors")
    assert exported.keys() == started.keys() and all(torch.equal(exported[k], started[k]) for k in started)
