"""Class-conditional models on the real U-Net path (issue 24): labels from the data, label dropout to a null label,
classifier-free guidance on labels, `ldm txt2img --label`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ldm.core.defaults import shipped_path
from ldm.core.errors import InvalidOptionError
from ldm.data.folder import CaptionedImageFolder
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.infotext import settings_from_png
from ldm.tasks.base import resolve_options, sample_seeded
from ldm.tasks.txt2img import prepare, txt2img
from ldm.training.labels import LabelError, LabelledDataset, with_classes
from ldm.training.run import build_data, export_checkpoint, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

CLASSES = ["red square", "blue circle", "green triangle"]  # three colours far apart: a judge by latent mean tells them
# A label-only model: no text encoder, no cross-attention context (the transformers attend to the image alone).
LABEL_ONLY = ["model.params.cond_stage_config=null", "model.params.unet_config.params.context_dim=null"]


def three_classes(root: Path, size: int) -> Path:
    """Shapes data (ldm.training.shapes) cut down to CLASSES, with the caption as the class."""
    make_shapes_dataset(root, size=size, count=48)
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    for row in rows:
        if row["caption"] not in CLASSES:
            (root / row["file"]).unlink()
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["caption"] in CLASSES))
    return root


def labelled_config(data: Path, run: Path, more: list[str]) -> dict:
    return tiny_train_config(
        "ldm",
        data,
        run,
        ["data.label_field=caption", "data.val_fraction=0", "logging.checkpoint_every_n_steps=0", *more],
    )


def test_classes_come_from_the_data_into_the_model_node_and_unknown_values_are_refused(tmp_path):
    data = three_classes(tmp_path / "data", 16)
    cfg = with_classes(labelled_config(data, tmp_path / "run", []))
    assert cfg["data"]["classes"] == sorted(CLASSES) == cfg["model"]["params"]["class_names"]
    assert cfg["model"]["params"]["unet_config"]["params"]["num_classes"] == 4  # three classes + the null label
    module = build_data(cfg)
    module.setup()
    item = module.train_set[0]
    assert sorted(CLASSES)[item["label"]] == item["caption"]
    folder = CaptionedImageFolder(data, 16)
    with pytest.raises(LabelError, match="not one of data.classes"):
        LabelledDataset(folder, "caption", ["red square", "blue circle"])
    with pytest.raises(LabelError, match="has no such field"):
        LabelledDataset(folder, "group", CLASSES)
    with pytest.raises(LabelError, match="num_classes: 4"):
        with_classes(labelled_config(data, tmp_path / "run", ["model.params.unet_config.params.num_classes=3"]))


def test_text_and_label_model_trains_with_label_dropout_exports_and_samples_a_label(tmp_path):
    data = three_classes(tmp_path / "data", 16)
    run = tmp_path / "run"
    cfg = labelled_config(
        data,
        run,
        [
            f"data.classes={json.dumps(CLASSES)}",
            "trainer.max_steps=4",
            "training.label_dropout=0.5",
            "logging.sample_every_n_steps=4",
            "logging.sample_steps=2",
        ],
    )
    module, trainer = train(cfg)
    assert trainer.global_step == 4 and type(module).__name__ == "ClassConditionalModule"
    # Label dropout: about half the labels of a batch become the null label (index 3), from the position's seed.
    batch = {"label": torch.zeros(2000, dtype=torch.long)}
    module.train()
    dropped = (module.labels(batch) == 3).float().mean().item()
    assert 0.45 < dropped < 0.55
    assert torch.equal(module.labels(batch), module.labels(batch))  # the same draw at the same position
    module.loss({"image": torch.zeros(1, 3, 16, 16), "caption": ["x"], "label": torch.tensor([0])}, drop=False)
    assert torch.equal(module.labels(batch), batch["label"])  # validation (drop=False) keeps every label
    assert (run / "samples" / "step-000004.png").is_file()  # one grid image per class
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["model"]["params"]["class_names"] == CLASSES
    exported = yaml.safe_load((run / "model.yaml").read_text())["model"]["params"]
    assert exported["class_names"] == CLASSES and exported["unet_config"]["params"]["num_classes"] == 4

    # --export-only from the run's checkpoint, with the config as written (its class_names still null), loads too.
    export_checkpoint(cfg, run / "checkpoints" / "last.ckpt", tmp_path / "exported")
    assert (
        yaml.safe_load((tmp_path / "exported" / "model.yaml").read_text())["model"]["params"]["class_names"] == CLASSES
    )
    load_model(tmp_path / "exported" / "model.yaml", tmp_path / "exported" / "model.safetensors")

    model = load_model(run / "model.yaml", run / "model.safetensors")
    images = txt2img(model, "a shape", label="blue circle", steps=2, progress=False)
    assert images.settings["label"] == "blue circle" and images[0].size == (16, 16)
    assert len(txt2img(model, "a shape", steps=2, progress=False)) == 1  # no label: the null label
    with pytest.raises(
        InvalidOptionError, match="unknown label 'purple'; known: red square, blue circle, green triangle"
    ):
        txt2img(model, "a shape", label="purple", steps=2, progress=False)

    common = [
        "--config",
        str(run / "model.yaml"),
        "--ckpt",
        str(run / "model.safetensors"),
        "--steps",
        "2",
        "--no-progress",
        "--no-grid",
    ]
    assert cli_main(["txt2img", "a shape", "--label", "red square", "--outdir", str(tmp_path / "out"), *common]) == 0
    png = tmp_path / "out" / "samples" / "00000.png"
    assert settings_from_png(png)["label"] == "red square"
    assert cli_main(["txt2img", "--from-png", str(png), "--outdir", str(tmp_path / "again"), *common]) == 0
    assert settings_from_png(tmp_path / "again" / "samples" / "00000.png")["label"] == "red square"
    assert cli_main(["txt2img", "a shape", "--class", "purple", "--outdir", str(tmp_path / "bad"), *common]) != 0


def latent_means(model, label: str | None, scale: float, count: int = 8) -> torch.Tensor:
    """[count, C]: the channel means of latents sampled for a label (Euler, 20 steps, fixed seeds)."""
    options = resolve_options(None, dict(steps=20, guidance_scale=scale, sampler="euler"), model=model)
    conditioning = prepare(model, [""] * count, [""] * count, options, label)
    size = model.image_size
    with torch.no_grad():
        return sample_seeded(
            model, conditioning, options, 0, (count, model.latent_channels, size, size), progress=False
        ).mean((2, 3))


def test_class_conditional_model_follows_its_label_under_guidance(tmp_path):
    """A label-only model trained briefly on three colours: its samples of a label lie nearer that class's latents
    than any other class's, not at all with the null label alone (scale 0), and more clearly with guidance (scale 3)
    than with the conditional model alone (scale 1). The judge: the distance of a sample's latent channel means to
    each class's mean over its training latents (the shipped emoji autoencoder tells the colours apart there)."""
    data = three_classes(tmp_path / "data", 32)
    run = tmp_path / "run"
    cfg = labelled_config(
        data,
        run,
        [
            *LABEL_ONLY,
            f"data.classes={json.dumps(CLASSES)}",
            "data.size=32",
            "data.batch_size=12",
            "model.params.parameterization=v",
            "model.params.first_stage_config.params.ddconfig.ch_mult=[1,2,2]",
            f"init.vae={shipped_path('checkpoints/emoji/model.safetensors')}",
            "training.latent_cache=64",
            "training.lr=2e-3",
            "training.label_dropout=0.2",
            "training.ema_decay=null",
            "trainer.max_steps=120",
            "logging.sample_every_n_steps=0",
        ],
    )
    train(cfg)
    model = load_model(run / "model.yaml", run / "model.safetensors")
    assert model.text_encoder is None and model.class_names == CLASSES
    folder = CaptionedImageFolder(data, 32)
    with torch.no_grad():
        centres = {
            c: model.encode_image(
                torch.stack([folder[i]["image"] for i in range(len(folder)) if folder.captions[i] == c])
            ).mean((0, 2, 3))
            for c in CLASSES
        }

    def margin(scale: float) -> float:
        """Mean over labels and samples of (distance to the nearest other class) - (distance to its own class)."""
        gaps = []
        for label in CLASSES:
            means = latent_means(model, label, scale)
            own = (means - centres[label]).norm(dim=1)
            other = torch.stack([(means - centres[c]).norm(dim=1) for c in CLASSES if c != label]).min(0).values
            gaps.append(other - own)
        return torch.cat(gaps).mean().item()

    unguided, conditional, guided = margin(0.0), margin(1.0), margin(3.0)
    assert unguided < 0.1, unguided  # scale 0 is the null label: the same samples whatever the label
    assert conditional > 0.2, conditional
    assert guided > conditional, (guided, conditional)
    with pytest.raises(InvalidOptionError, match="takes no text"):
        txt2img(model, "red square", label="red square", steps=2, progress=False)
    image = txt2img(model, "", label="green triangle", steps=4, progress=False)[0]
    r, g, b = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0)
    assert g > r and g > b  # decoded by the real autoencoder: a green triangle on white is greenish
