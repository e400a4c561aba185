"""Training a ControlNet with `ldm train` (controlnet: section) on the tiny model: it starts as the base exactly,
lowers the loss on a fixed batch, exports a file the ControlNet loader reads, resumes, reads control images from a
folder, and refuses what does not fit in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import tiny_model_from
from safetensors import safe_open

from ldm.formats.controlnet_files import load_controlnet
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import load_state_dict, save_state_dict
from ldm.io.control_images import control_image, control_images
from ldm.models.controlnet import Control, ControlledUNet, using_controlnets
from ldm.tasks.txt2img import txt2img
from ldm.training.config_checks import TrainConfigError
from ldm.training.controlnet_module import ControlImageError, ControlNetModule
from ldm.training.ldm_module import LatentDiffusionModule
from ldm.training.run import build_data, build_module, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

CONTROL = ["controlnet.train=true", "data.val_fraction=0", "logging.sample_every_n_steps=0", "logging.csv=false"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=16)


@pytest.fixture(scope="module")
def base(shapes, tmp_path_factory) -> str:
    """The frozen base: the tiny config's model with its zero-initialised output layers made random (a fresh U-Net's
    output does not depend on its skip connections, so no ControlNet could change it), as init.checkpoint."""
    cfg = tiny_train_config("ldm", shapes, tmp_path_factory.mktemp("unused"))
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_state_dict(tiny_model_from(cfg).original_state_dict(), path)
    return f"init.checkpoint={path}"


def fixed_batch(cfg: dict, count: int = 8) -> dict:
    data = build_data(cfg)
    data.setup()
    items = [data.train_set[i] for i in range(count)]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": [it["caption"] for it in items],
        "key": [it["key"] for it in items],
    }


def eval_loss(module: ControlNetModule, batch: dict, seeds: int = 6) -> float:
    module.eval()
    with torch.no_grad():
        return (
            sum(module.loss(batch, torch.Generator().manual_seed(s), drop=False).item() for s in range(seeds)) / seeds
        )


def test_an_untrained_controlnet_is_the_base_model_exactly(shapes, base, tmp_path):
    torch.manual_seed(0)
    module = build_module(tiny_train_config("ldm", shapes, tmp_path / "run", [*CONTROL, base]))
    assert isinstance(module, ControlNetModule)
    unet, net = module.model.unet, module.controlnet
    # Initialised as the original: the U-Net's encoder copied, every zero convolution zero; the base frozen.
    assert torch.equal(net.input_blocks[1][0].in_layers[2].weight, unet.input_blocks[1][0].in_layers[2].weight)
    assert all(not p.any() for conv in net.zero_convs for p in conv.parameters())
    assert not any(p.requires_grad for p in module.model.parameters())
    assert all(p.requires_grad for p in net.parameters())
    batch = fixed_batch(module.config)
    x, t, context = torch.randn(8, 4, 8, 8), torch.randint(0, 1000, (8,)), module.model.encode_text(batch["caption"])
    hints = module.hints(batch)
    with torch.no_grad():
        controlled = ControlledUNet(unet, [(net, hints, 1.0, "balanced")])(x, t, context=context)
        assert torch.equal(controlled, unet(x, t, context=context))
        g = torch.Generator().manual_seed(3)
        assert torch.equal(
            module.loss(batch, g, drop=False),
            LatentDiffusionModule.loss(module, batch, torch.Generator().manual_seed(3), drop=False),
        )
    # The control images are the training images' Canny edges, made on the fly.
    assert torch.equal(hints, control_images((batch["image"] + 1) / 2, "canny", 100.0, 200.0))


def test_training_lowers_the_loss_and_the_export_loads_and_steers_the_output(shapes, base, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        "trainer.max_steps=30",
        "training.lr=1e-3",
        "training.warmup_steps=3",
        "training.cond_dropout=0.5",
        "logging.checkpoint_every_n_steps=15",
    ]
    cfg = tiny_train_config("ldm", shapes, run_dir, [*CONTROL, base, *overrides])
    batch = fixed_batch(cfg)
    torch.manual_seed(0)
    before = eval_loss(build_module(cfg), batch)
    module, trainer = train(cfg)
    after = eval_loss(module, batch)
    assert trainer.global_step == 30
    assert after < 0.9 * before, (before, after)
    base_before = torch.load(run_dir / "checkpoints" / "step-000015.ckpt", weights_only=True)["state_dict"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(base_before["model.unet.out.2.weight"], last["model.unet.out.2.weight"])  # the base stays
    assert not torch.equal(base_before["controlnet.zero_convs.0.0.weight"], last["controlnet.zero_convs.0.0.weight"])

    weights = run_dir / "controlnet.safetensors"
    assert (run_dir / "controlnet.yaml").is_file()
    with safe_open(str(weights), framework="pt") as f:
        assert f.metadata()["preprocess"] == "canny" and f.metadata()["step"] == "30"
        assert all(key.startswith("control_model.") for key in f.keys())
        assert f.get_tensor("control_model.zero_convs.0.0.weight").dtype == torch.float16
    net = load_controlnet(weights, module.model)
    trained = module.controlnet.state_dict()
    assert all(torch.equal(v, trained[k].half().float()) for k, v in net.state_dict().items())

    edges = control_image(Image_of_a_square())
    plain = txt2img(module.model, "red square", steps=3, progress=False)[0]
    with using_controlnets(module.model, [Control(net, edges)]):
        steered = txt2img(module.model, "red square", steps=3, progress=False)[0]
    assert plain.tobytes() != steered.tobytes()

    # --resume continues the run from last.ckpt (config from the checkpoint); --export-only writes the file again.
    assert cli_main(["train", "--resume", str(run_dir), "trainer.max_steps=32"]) == 0
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 32 and resumed["ldm"]["batches_seen"] == 32
    assert cli_main(["train", "--export-only", "--resume", str(run_dir), "--out", str(tmp_path / "again")]) == 0
    again = load_state_dict(tmp_path / "again" / "controlnet.safetensors")
    assert again.keys() == load_state_dict(weights).keys()


def Image_of_a_square():  # noqa: N802 - reads as the thing it makes
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (16, 16), "white")
    ImageDraw.Draw(image).rectangle((4, 4, 11, 11), fill="red")
    return image


def test_control_images_are_read_from_a_folder_when_given(shapes, tmp_path):
    from PIL import Image

    controls = tmp_path / "controls"
    for path in shapes.rglob("*.png"):  # the folder's layout mirrored: controls/images/0000.png, ...
        target = controls / path.relative_to(shapes)
        target.parent.mkdir(parents=True, exist_ok=True)
        control_image(Image.open(path), "scribble").save(target)
    torch.manual_seed(0)
    module = build_module(
        tiny_train_config("ldm", shapes, tmp_path / "run", [*CONTROL, f"controlnet.control_root={controls}"])
    )
    batch = fixed_batch(module.config, 4)
    hints = module.hints(batch)
    assert hints.shape == batch["image"].shape and set(hints.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hints, control_images((batch["image"] + 1) / 2, "scribble"))
    assert torch.isfinite(module.loss(batch, torch.Generator().manual_seed(0)))
    module.control["control_root"] = str(tmp_path / "empty")
    with pytest.raises(ControlImageError, match="no control image for .* \\(controlnet.control_root\\)"):
        module.hints(batch)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["controlnet.preprocess=depth"], "controlnet.preprocess must be one of canny, lineart, scribble"),
        (["controlnet.low=300"], "controlnet.low must not exceed controlnet.high"),
        (["lora.rank=4"], "controlnet.train trains a ControlNet on a frozen model"),
        (["controlnet.train=maybe"], "controlnet.train must be true or false"),
    ],
)
def test_what_does_not_fit_is_refused_in_one_line(shapes, tmp_path, override, message):
    with pytest.raises(TrainConfigError, match=message):
        tiny_train_config("ldm", shapes, tmp_path / "run", CONTROL + override)


def test_the_export_writes_diffusers_folder_too_when_asked(shapes, base, tmp_path):
    from diffusers import ControlNetModel

    from ldm.training.export import export_module

    with pytest.raises(TrainConfigError, match="controlnet.export_diffusers: diffusers' ControlNets take images down"):
        build_module(
            tiny_train_config("ldm", shapes, tmp_path / "f2", [*CONTROL, base, "controlnet.export_diffusers=true"])
        )
    f8 = "model.params.first_stage_config.params.ddconfig.ch_mult=[1,1,1,1]"  # diffusers' ControlNets are f=8
    cfg = tiny_train_config("ldm", shapes, tmp_path / "run", [*CONTROL, f8, "controlnet.export_diffusers=true"])
    torch.manual_seed(0)
    module = build_module(cfg)
    weights, _ = export_module(module, cfg, tmp_path / "out", step=7)
    folder = tmp_path / "out" / "controlnet-diffusers"
    original = load_controlnet(weights, module.model).state_dict()
    from_folder = load_controlnet(folder, module.model).state_dict()
    assert original.keys() == from_folder.keys() and all(torch.equal(original[k], from_folder[k]) for k in original)
    theirs = ControlNetModel.from_pretrained(folder, local_files_only=True)
    stored = load_state_dict(folder / "diffusion_pytorch_model.safetensors")  # fp16, diffusers' names
    assert {v.dtype for v in stored.values()} == {torch.float16} and stored.keys() == theirs.state_dict().keys()
    assert all(torch.equal(theirs.state_dict()[k], v.float()) for k, v in stored.items())
    with pytest.raises(TrainConfigError, match="controlnet.export_diffusers must be true or false"):
        tiny_train_config("ldm", shapes, tmp_path / "run2", [*CONTROL, "controlnet.export_diffusers=maybe"])
