"""`ldm train` with a LoRA on an SDXL model (issue 39): the U-Net's vector holds each image's size and crop, a few
steps lower the loss on a fixed batch, and the run exports a kohya-layout SDXL LoRA that the loader reads and that
changes the output. The tiny SDXL of tests/models/test_sdxl.py; configs/train/sdxl-lora.yaml is the full-size
example."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import write_training_base
from PIL import Image
from test_sdxl import tiny_encoders_node, tiny_unet_params

from ldm.adapters.lora import apply_lora, read_lora
from ldm.core.config import load_config
from ldm.data.folder import CaptionedImageFolder
from ldm.formats.detect import sd_config_path
from ldm.io.checkpoint import load_state_dict
from ldm.models.sdxl_conditioning import MicroConditions, vector
from ldm.training.config import load_train_config
from ldm.training.config_checks import TrainConfigError
from ldm.training.run import build_data, build_module, train
from ldm.training.sdxl_module import image_conditions
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import QUIET

EXAMPLE = Path(__file__).parents[2] / "configs" / "train" / "sdxl-lora.yaml"


def tiny_sdxl_node() -> dict:
    node = load_config(sd_config_path("sd_xl_base.yaml"))["model"]
    params = node["params"]
    params["unet_config"]["params"] = tiny_unet_params()
    params["cond_stage_config"] = tiny_encoders_node()
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    params["image_size"] = 8
    return node


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=8)


def sdxl_config(shapes: Path, run_dir: Path, *extra: str) -> dict:
    """The example config, with the tiny SDXL for its model, tiny data and a few CPU steps."""
    overrides = [f"data.root={shapes.as_posix()}", f"logging.run_dir={run_dir.as_posix()}", "data.size=16",
                 "data.batch_size=4", "data.val_fraction=0", "trainer.accelerator=cpu", "trainer.precision=32-true",
                 "training.gradient_checkpointing=false", "training.warmup_steps=0", "training.lr=1e-2",
                 "lora.rank=4", "lora.alpha=4", "logging.checkpoint_every_n_steps=0", "logging.csv=false",
                 "logging.sample_every_n_steps=0", "init.checkpoint=null", *QUIET, *extra]  # fmt: skip
    cfg = load_train_config(EXAMPLE, overrides)
    cfg["model"] = tiny_sdxl_node()
    return cfg


def test_the_example_config_is_sdxl_base():
    cfg = load_train_config(EXAMPLE, [])
    assert cfg["model"] == load_config(sd_config_path("sd_xl_base.yaml"))["model"]
    assert (
        cfg["lora"]["rank"] > 0 and "text" not in cfg["lora"]["targets"] and cfg["training"]["scale_factor"] == "model"
    )


def test_items_carry_their_original_size_and_crop_and_the_vector_holds_them(tmp_path):
    Image.new("RGB", (40, 20), "red").save(tmp_path / "wide.png")  # width 40, height 20
    (tmp_path / "wide.txt").write_text("a red field")
    item = CaptionedImageFolder(tmp_path, 10)[0]  # scaled to 20 x 10, the centre 10 x 10 cropped
    assert item["original_size"].tolist() == [20, 40] and item["crop"].tolist() == [0, 5]
    batch = {"original_size": torch.tensor([[20, 40], [64, 48]]), "crop": torch.tensor([[0, 5], [3, 0]])}
    conditions = image_conditions(batch, torch.zeros(2, 3, 10, 10))
    assert conditions[1] == MicroConditions((64, 48), (10, 10), (3, 0))
    assert image_conditions({}, torch.zeros(1, 3, 16, 24)) == [MicroConditions((16, 24), (16, 24), (0, 0))]


def test_a_few_lora_steps_lower_the_loss_and_export_a_kohya_sdxl_lora(shapes, tmp_path):
    cfg = sdxl_config(shapes, tmp_path / "unused")
    base_file = write_training_base(cfg, tmp_path / "base")
    cfg = sdxl_config(shapes, tmp_path / "run", f"init.checkpoint={base_file}", "trainer.max_steps=3")
    module = build_module(cfg)
    assert type(module).__name__ == "SDXLModule"
    assert {n.split(".")[0] for n, p in module.model.named_parameters() if p.requires_grad} == {"unet"}
    data = build_data(cfg)
    batch = next(iter(torch.utils.data.DataLoader(data.stream(), batch_size=4)))
    # The vector each image gets is the one sampling builds for its numbers (ldm.models.sdxl_conditioning).
    context, y = module.sdxl_inputs(list(batch["caption"]), batch, batch["image"])
    _, pooled = module.model.text_encoder.encode(list(batch["caption"]))
    names = module.model.text_encoder.micro_conditions
    assert torch.equal(y[:1], vector(pooled[:1], MicroConditions((16, 16), (16, 16)), names))

    def fixed_loss() -> float:
        with torch.no_grad():
            return sum(module.loss(batch, torch.Generator().manual_seed(s), drop=False).item() for s in range(4))

    before = fixed_loss()
    optimiser = module.configure_optimizers()["optimizer"]
    for step in range(8):  # fitting the fixed batch: its images, captions, noise and timesteps
        optimiser.zero_grad()
        module.loss(batch, torch.Generator().manual_seed(step % 4), drop=False).backward()
        optimiser.step()
    after = fixed_loss()
    assert after < 0.95 * before, (before, after)

    # A run through `ldm train`'s own path: lora.safetensors in kohya's layout, the U-Net's modules alone.
    trained, trainer = train(cfg)
    assert trainer.global_step == 3
    state = load_state_dict(tmp_path / "run" / "lora.safetensors")
    assert state and all(k.startswith("lora_unet_") for k in state)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
    base = build_module(sdxl_config(shapes, tmp_path / "again", f"init.checkpoint={base_file}")).model
    assert len(read_lora(tmp_path / "run" / "lora.safetensors", base).modules) == len(state) // 3
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    context, y = trained.sdxl_inputs(["red square", "blue circle"], {}, torch.zeros(2, 3, 16, 16))
    with torch.no_grad():
        plain = base.unet(x, t, context, y=y)
        apply_lora(base, tmp_path / "run" / "lora.safetensors", 1.0)
        adapted = base.unet(x, t, context, y=y)
        trained.eval()
        expected = trained.model.unet(x, t, context, y=y)
    assert (adapted - plain).abs().max() > 1e-4  # the file changes the output ...
    torch.testing.assert_close(adapted, expected, rtol=1e-5, atol=1e-5)  # ... into the trained model's


@pytest.mark.parametrize(
    "extra, message",
    [
        (["lora.rank=0"], "an SDXL model trains a LoRA"),
        (["lora.targets=[attn, text]", "training.text_cache=0"], "both text encoders frozen"),
    ],
)
def test_sdxl_runs_other_than_a_unet_lora_are_one_line_errors(shapes, tmp_path, extra, message):
    with pytest.raises(TrainConfigError, match=message):
        build_module(sdxl_config(shapes, tmp_path / "run", *extra))
