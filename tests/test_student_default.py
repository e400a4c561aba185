"""The shipped few-step student as the text-to-image default (issue 21), with a tiny teacher and a tiny student
shipped into an LDM_HOME the way scripts/ship_derived_model.py ships the real one: `ldm txt2img`, the Python API
and the app's text-to-image page use the student with its own steps and spacing, one U-Net call a step; the full
model is one option away (30 guided steps, a batch of two a step); explicit options win; without the student nothing
changes; the metadata names the model and its steps, and --from-png re-makes a student image with the student."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_config, write_tiny_model_files
from PIL import Image

from ldm.core.config import instantiate
from ldm.core.errors import MissingFileError
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import save_state_dict
from ldm.io.infotext import settings_from_png
from ldm.models.unet import UNetModel
from ldm.training.distill import write_student_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def student_config() -> dict:
    cfg = tiny_config()
    cfg["model"]["params"]["unet_config"]["params"]["guidance_embed"] = True
    return cfg


def ship_student(export: Path, base: Path) -> None:
    """A halve-8 stage's export (its whole guidance embedding as lora.safetensors, lora.yaml, student.yaml), shipped
    with scripts/ship_derived_model.py into $LDM_HOME/checkpoints/emoji."""
    export.mkdir()
    torch.manual_seed(1)
    student = instantiate(student_config()["model"])
    with torch.no_grad():
        for p in student.unet.guidance_embed.parameters():
            p.normal_(0, 0.1)  # its last layer starts at zero: the student would be its teacher whatever w
    whole = {k: v for k, v in student.state_dict().items() if k.startswith("unet.guidance_embed.")}
    save_state_dict(whole, export / "lora.safetensors")
    (export / "lora.yaml").write_text(yaml.safe_dump({"model": student_config()["model"]}))
    write_student_config(export, str(base), stage=8, scale_range=[1.0, 8.0])
    spec = importlib.util.spec_from_file_location("ship_derived_model", SCRIPTS / "ship_derived_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.ship("student", str(export))


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> dict[str, Path]:
    """Two LDM_HOMEs with the same tiny teacher: one with the student shipped beside it, one without."""
    out = {}
    for name in ("with", "without"):
        home = tmp_path_factory.mktemp(f"home-{name}")
        emoji = home / "checkpoints" / "emoji"
        emoji.mkdir(parents=True)
        write_tiny_model_files(emoji, "model")
        out[name] = home
    mp = pytest.MonkeyPatch()
    mp.setenv("LDM_HOME", str(out["with"]))
    try:
        ship_student(
            tmp_path_factory.mktemp("distill") / "halve-8", out["with"] / "checkpoints" / "emoji" / "model.safetensors"
        )
    finally:
        mp.undo()
    return out


@pytest.fixture
def unet_calls(monkeypatch) -> list[int]:
    """The batch size of every U-Net evaluation."""
    calls: list[int] = []
    forward = UNetModel.forward
    monkeypatch.setattr(
        UNetModel, "forward", lambda self, x, *a, **k: calls.append(x.shape[0]) or forward(self, x, *a, **k)
    )
    return calls


def txt2img(home: Path, monkeypatch, outdir: Path, *argv: str) -> tuple[int, dict | None]:
    """Run `ldm txt2img` in-process under LDM_HOME=home; (exit status, the first image's settings or None)."""
    monkeypatch.setenv("LDM_HOME", str(home))
    rc = cli_main(["txt2img", *argv, "--outdir", str(outdir), "--no-progress", "--no-grid", "--device", "cpu"])
    first = outdir / "samples" / "00000.png"
    return rc, (settings_from_png(first) if rc == 0 and first.is_file() else None)


def test_the_shipped_student_keeps_its_sampling_section_and_name(homes):
    shipped = yaml.safe_load((homes["with"] / "checkpoints" / "emoji" / "student.yaml").read_text())
    assert shipped["base"] == "model.safetensors" and shipped["name"] == "emoji 4-step student"
    assert shipped["sampling"] == {"guidance_scale": 7.5, "steps": 4, "spacing": "trailing", "sampler": "ddim"}


def test_ldm_txt2img_uses_the_shipped_student_with_its_own_steps_one_call_a_step(
    homes, monkeypatch, unet_calls, tmp_path
):
    rc, settings = txt2img(homes["with"], monkeypatch, tmp_path, "red heart")
    assert rc == 0 and unet_calls == [1] * 4  # four steps, one evaluation each: no guidance pair
    assert settings["steps"] == 4 and settings["spacing"] == "trailing" and settings["guidance_scale"] == 7.5
    assert settings["model_file"] == "student.safetensors" and settings["model_name"] == "emoji 4-step student"
    assert settings["base_file"] == "model.safetensors"
    text = Image.open(tmp_path / "samples" / "00000.png").text["parameters"]
    assert "Steps: 4," in text and "Model: student" in text  # the A1111 text names it too


def test_model_full_is_the_teacher_with_30_guided_steps(homes, monkeypatch, unet_calls, tmp_path):
    rc, settings = txt2img(homes["with"], monkeypatch, tmp_path, "red heart", "--model", "full")
    assert rc == 0 and unet_calls == [2] * 30  # the conditional and unconditional halves as one batch, each step
    assert (
        settings["steps"] == 30 and settings["spacing"] == "leading" and settings["model_file"] == "model.safetensors"
    )
    assert "model_name" not in settings


def test_options_given_win_over_the_students_own(homes, monkeypatch, unet_calls, tmp_path):
    rc, settings = txt2img(homes["with"], monkeypatch, tmp_path, "red heart", "--steps", "30", "--scale", "3")
    assert rc == 0 and unet_calls == [1] * 30  # --steps 30 given: 30 steps, even though 30 is the full model's default
    assert settings["steps"] == 30 and settings["guidance_scale"] == 3.0 and settings["spacing"] == "trailing"
    unet_calls.clear()
    rc, settings = txt2img(
        homes["with"], monkeypatch, tmp_path / "b", "red heart", "--spacing", "linspace", "--steps", "2"
    )
    assert rc == 0 and unet_calls == [1, 1] and settings["spacing"] == "linspace"


def test_without_the_student_the_default_is_the_teacher_as_before(homes, monkeypatch, unet_calls, tmp_path, capsys):
    rc, settings = txt2img(homes["without"], monkeypatch, tmp_path, "red heart")
    assert rc == 0 and unet_calls == [2] * 30
    assert (
        settings["steps"] == 30 and settings["spacing"] == "leading" and settings["model_file"] == "model.safetensors"
    )
    rc, _ = txt2img(homes["without"], monkeypatch, tmp_path / "b", "red heart", "--model", "student")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not shipped" in err and "--model full" in err


def test_the_student_refuses_a_negative_prompt_naming_the_option(homes, monkeypatch, tmp_path, capsys):
    rc, _ = txt2img(homes["with"], monkeypatch, tmp_path, "red heart", "--negative-prompt", "blue")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "negative prompt" in err and "--model full" in err
    rc, settings = txt2img(
        homes["with"], monkeypatch, tmp_path / "b", "red heart", "--negative-prompt", "blue", "--model", "full"
    )
    assert rc == 0 and settings["negative_prompt"] == "blue"
    rc, _ = txt2img(
        homes["with"], monkeypatch, tmp_path / "c", "red heart", "--model", "full", "--ckpt", "x.safetensors"
    )
    assert rc == 2 and "--model" in capsys.readouterr().err


def test_from_png_remakes_a_student_image_with_the_student(homes, monkeypatch, unet_calls, tmp_path, capsys):
    rc, _ = txt2img(homes["with"], monkeypatch, tmp_path / "a", "red heart", "--seed", "5")
    made = tmp_path / "a" / "samples" / "00000.png"
    unet_calls.clear()
    rc, settings = txt2img(homes["with"], monkeypatch, tmp_path / "b", "--from-png", str(made))
    assert rc == 0 and unet_calls == [1] * 4 and settings["model_file"] == "student.safetensors"
    assert np.array_equal(
        np.asarray(Image.open(made)), np.asarray(Image.open(tmp_path / "b" / "samples" / "00000.png"))
    )
    rc, _ = txt2img(homes["without"], monkeypatch, tmp_path / "c", "--from-png", str(made))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "student" in err and "not shipped" in err
    # A full-model image replayed where the student is shipped: the full model, as it was made.
    rc, _ = txt2img(homes["without"], monkeypatch, tmp_path / "d", "red heart", "--steps", "3")
    unet_calls.clear()
    rc, settings = txt2img(
        homes["with"], monkeypatch, tmp_path / "e", "--from-png", str(tmp_path / "d" / "samples" / "00000.png")
    )
    assert rc == 0 and unet_calls == [2] * 3 and settings["model_file"] == "model.safetensors"


def test_the_python_api_defaults_to_the_student_where_shipped(homes, monkeypatch):
    from ldm.tasks.txt2img import txt2img as api_txt2img

    monkeypatch.setenv("LDM_HOME", str(homes["with"]))
    student, full = load_model(device="cpu"), load_model(device="cpu", variant="full")
    assert student.guidance_embedded and not full.guidance_embedded
    assert api_txt2img(student, "red heart", progress=False).settings["steps"] == 4
    assert api_txt2img(student, "red heart", steps=2, progress=False).settings["steps"] == 2
    assert api_txt2img(full, "red heart", steps=2, progress=False).settings["spacing"] == "leading"
    monkeypatch.setenv("LDM_HOME", str(homes["without"]))
    assert not load_model(device="cpu").guidance_embedded
    with pytest.raises(MissingFileError, match="not shipped"):
        load_model(device="cpu", variant="student")


def test_the_app_text_page_defaults_to_the_student_and_offers_the_full_model(homes, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import ldm.interfaces.app

    monkeypatch.delenv("LDM_APP_CONFIG", raising=False)
    monkeypatch.delenv("LDM_APP_CKPT", raising=False)
    monkeypatch.setenv("LDM_HOME", str(homes["with"]))
    page = str(Path(ldm.interfaces.app.__file__).resolve().parent / "views" / "text.py")
    at = AppTest.from_file(page, default_timeout=120)
    at.run()
    assert not at.exception
    assert at.radio(key="t2i_model").options == ["fast (4-step student)", "full model"]
    assert at.radio(key="t2i_model").value == "fast (4-step student)"
    assert "t2i_negative" not in [t.key for t in at.text_input]  # the student has no negative-prompt path
    at.button(key="t2i_go").click().run()
    assert not at.exception and not at.error
    _, settings = at.session_state["t2i_result"]
    assert (
        settings["steps"] == 4 and settings["spacing"] == "trailing" and settings["model_file"] == "student.safetensors"
    )
    at.radio(key="t2i_model").set_value("full model").run()
    assert at.number_input(key="t2i_steps").value == 30 and at.text_input(key="t2i_negative")
    monkeypatch.setenv("LDM_HOME", str(homes["without"]))
    at = AppTest.from_file(page, default_timeout=120)
    at.run()
    assert not at.exception and "t2i_model" not in [r.key for r in at.radio]
    assert at.number_input(key="t2i_steps").value == 30
