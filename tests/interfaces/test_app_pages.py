"""The app's pages run in Streamlit's own test harness (no browser) with a tiny model from tmp_path."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_class_config, tiny_class_model, tiny_config, tiny_model, write_tiny_model_files
from PIL import Image
from streamlit.testing.v1 import AppTest

import ldm.interfaces.app
from ldm.core import defaults
from ldm.core.masks import MaskError
from ldm.interfaces.app.edit import mask_from_strokes, read_image, read_mask
from ldm.interfaces.app.forward import LEARNED, forward_views, latent_start, learned_schedule_alphas, schedule_curves
from ldm.interfaces.app.samples import SAMPLES, sample_image
from ldm.interfaces.app.state import (
    ENV_CKPT,
    ENV_CONFIG,
    ENV_UPSCALER_CKPT,
    ENV_UPSCALER_CONFIG,
    ModelMissingError,
    load_main_model,
    source_from_env,
)
from ldm.interfaces.app.text import generate, png_bytes
from ldm.io.checkpoint import save_state_dict
from ldm.io.images import InvalidImageError
from ldm.sampling.options import SamplingOptions

APP = Path(ldm.interfaces.app.__file__).resolve().parent  # absolute: AppTest resolves relative paths against the caller
VIEWS = APP / "views"
TIMEOUT = 120


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    cfg, ckpt = d / "tiny.yaml", d / "tiny.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), ckpt)
    return str(cfg), str(ckpt)


@pytest.fixture
def app_env(model_files, monkeypatch):
    cfg, ckpt = model_files
    monkeypatch.setenv(ENV_CONFIG, cfg)
    monkeypatch.setenv(ENV_CKPT, ckpt)
    return cfg, ckpt


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def images(at: AppTest) -> list:
    return [e for e in at.get("imgs") + at.get("image")]


def captions(at: AppTest) -> list[str]:
    return [c for e in images(at) for c in e.captions]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def png_upload(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --- logic functions ------------------------------------------------------------------------------------------


def test_schedule_curves_have_the_known_shapes():
    curves = schedule_curves(1000)
    assert set(curves) == {"beta", "alpha_bar", "log_snr"}
    ab, snr = curves["alpha_bar"], curves["log_snr"]
    assert list(ab.columns) == ["linear", "scaled_linear", "cosine"] and len(ab) == 1000
    assert (ab.diff().iloc[1:] < 0).all().all()  # signal only decreases
    assert (snr.iloc[0] > 5).all() and (snr.iloc[-1] < -4).all()
    assert snr["cosine"].iloc[-1] < snr["linear"].iloc[-1]  # cosine ends closest to pure noise


def test_forward_views_go_from_image_to_noise():
    model = tiny_model()
    img = sample_image("shapes", 16)
    arr = np.asarray(img, dtype=float)
    at0 = forward_views(img, 0, model)
    late = forward_views(img, 999, model)
    assert set(at0) == {"linear", "scaled_linear", "cosine"} and at0["linear"]["latent"].size == (16, 16)
    z0 = latent_start(model, img)
    again = forward_views(img, 0, model, z0=z0)  # a page encodes once and passes z0 on every slider move
    assert np.array_equal(np.asarray(again["cosine"]["latent"]), np.asarray(at0["cosine"]["latent"]))
    for kind in at0:
        d0 = np.abs(np.asarray(at0[kind]["pixel"], dtype=float) - arr).mean()
        d1 = np.abs(np.asarray(late[kind]["pixel"], dtype=float) - arr).mean()
        assert d0 < 10 < d1, (kind, d0, d1)
    with pytest.raises(ValueError, match="timestep"):
        forward_views(img, 1000)
    assert "latent" not in forward_views(img, 10)["linear"]  # no model: pixel space only


def test_sample_images_all_draw():
    for name in SAMPLES:
        img = sample_image(name, 24)
        assert img.size == (24, 24) and img.mode == "RGB" and np.asarray(img).std() > 10
    with pytest.raises(KeyError, match="no sample image"):
        sample_image("nope")


def test_generate_reports_previews_and_png_keeps_settings():
    model = tiny_model()
    reports = []
    image, settings = generate(
        model,
        "a cat",
        options=SamplingOptions(steps=4, guidance_scale=2.0),
        seed=3,
        height=16,
        width=16,
        preview_every=2,
        report=lambda done, total, img: reports.append((done, total, img is not None)),
    )
    assert image.size == (16, 16) and settings["seed"] == 3 and settings["steps"] == 4
    assert reports == [(1, 4, False), (2, 4, True), (3, 4, False), (4, 4, True)]
    png = Image.open(io.BytesIO(png_bytes(image, settings)))
    assert json.loads(png.text["ldm"])["prompt"] == "a cat"
    assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(image))


def test_uploads_and_masks_are_read_or_rejected_plainly():
    assert read_image(png_upload(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(InvalidImageError, match="not an image"):
        read_image(b"this is not a png")
    with pytest.raises(InvalidImageError, match="empty"):
        read_image(b"")
    mask = read_mask(png_upload(Image.new("L", (8, 8), 255)))
    assert mask.shape == (8, 8) and mask.min() == 1.0
    strokes = np.zeros((32, 32, 4), np.uint8)
    strokes[:16, :16, 3] = 255  # a stroke over the top-left quarter, canvas shown at 2x
    m = mask_from_strokes(strokes, (16, 16))
    assert m.shape == (16, 16) and m[:7, :7].min() > 0.9 and m[9:, 9:].max() < 0.1
    with pytest.raises(MaskError, match="RGBA"):
        mask_from_strokes(np.zeros((4, 4)), (4, 4))


def test_model_source_and_missing_default_model(tmp_path, monkeypatch):
    src = source_from_env({ENV_CONFIG: "a.yaml", ENV_CKPT: "b.safetensors"})
    assert src.config == "a.yaml" and src.ckpt == "b.safetensors"
    # Without --upscaler-*: the shipped upscaler, whatever the main model (it upscales any image).
    from ldm.core.defaults import default_model_files

    shipped = default_model_files("upscale")
    assert src.upscaler_files == (tuple(map(str, shipped)) if shipped else None)
    given = source_from_env({ENV_UPSCALER_CONFIG: "u.yaml", ENV_UPSCALER_CKPT: "u.safetensors"})
    assert given.upscaler_files == ("u.yaml", "u.safetensors") and given.has_upscaler
    assert source_from_env({}).describe() == "the shipped emoji model"
    monkeypatch.setenv("LDM_HOME", str(tmp_path))
    import importlib

    import ldm.core.defaults

    importlib.reload(ldm.core.defaults)
    try:
        with pytest.raises(ModelMissingError, match="ldm app --config"):
            load_main_model(None, None)
    finally:
        monkeypatch.delenv("LDM_HOME")
        importlib.reload(ldm.core.defaults)


# --- pages in the Streamlit harness ---------------------------------------------------------------------------


def test_forward_page_shows_three_schedules_in_both_spaces(app_env):
    at = page("forward")
    caps = captions(at)
    assert sum("pixel space" in c for c in caps) == 3 and sum("latent space" in c for c in caps) == 3
    assert [s.value for s in at.subheader] == ["linear", "scaled_linear", "cosine"]
    before = [c for c in caps if "pixel space" in c]
    at.slider(key="fwd_t").set_value(900).run()
    after = [c for c in captions(at) if "pixel space" in c]
    assert before != after and all("alpha_bar=" in c for c in after)  # captions follow the timestep
    assert len(at.get("vega_lite_chart")) == 3  # beta, alpha_bar, log-SNR


def chart_columns(chart) -> dict[str, np.ndarray]:
    """st.line_chart's data, read back from the element: {column: values in t order}."""
    import pyarrow as pa

    frame = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_pandas()
    frame.columns = ["t", "column", "value"]
    return {name: part.sort_values("t")["value"].to_numpy() for name, part in frame.groupby("column")}


def test_forward_page_draws_a_learned_schedule_between_the_linear_ends(app_env):
    at = page("forward")
    alpha_bar = chart_columns(at.get("vega_lite_chart")[1])
    learned, linear = alpha_bar[LEARNED], alpha_bar["linear"]
    assert len(learned) == len(linear) == 1000
    assert (np.diff(learned) < 0).all()  # monotone: the signal only ever falls
    assert learned[0] == pytest.approx(linear[0], rel=1e-4) and learned[-1] == pytest.approx(linear[-1], rel=1e-3)
    assert np.abs(learned - linear).max() > 0.02  # its own shape, not the linear curve again
    assert any("trained" in c.value and "spiral" in c.value for c in at.caption)  # says what it was trained on
    at.checkbox(key="fwd_learned").uncheck().run()
    assert LEARNED not in chart_columns(at.get("vega_lite_chart")[1])


def test_learned_schedule_follows_the_configured_ends():
    T, start, end = 200, 0.0005, 0.03
    ab = learned_schedule_alphas(T, start, end, train_steps=20)
    curves = schedule_curves(T, start, end, learned=ab)
    lsnr = curves["log_snr"]
    assert len(ab) == T and (ab.diff() < 0).all() and (curves["beta"][LEARNED] > 0).all()
    assert lsnr[LEARNED].iloc[0] == pytest.approx(lsnr["linear"].iloc[0], abs=1e-3)
    assert lsnr[LEARNED].iloc[-1] == pytest.approx(lsnr["linear"].iloc[-1], abs=1e-3)
    assert torch.equal(ab, learned_schedule_alphas(T, start, end, train_steps=20))  # fixed seed: one curve


def test_forward_page_rejects_a_bad_upload_and_takes_a_good_one(app_env):
    at = page("forward")
    at.radio(key="fwd_source").set_value("upload").run()
    assert any("Upload an image" in i.value for i in at.info)
    at.file_uploader(key="fwd_upload").set_value(("x.png", b"not an image at all", "image/png")).run()
    assert not at.exception and any("Reading the image failed" in e for e in errors(at))
    at.file_uploader(key="fwd_upload").set_value(("x.png", png_upload(sample_image("gradient", 40)), "image/png")).run()
    assert not errors(at) and sum("pixel space" in c for c in captions(at)) == 3


def test_text_page_generates_and_offers_the_png(app_env):
    at = page("text")
    at.text_input(key="t2i_prompt").set_value("a red apple")
    at.number_input(key="t2i_steps").set_value(4)
    at.number_input(key="t2i_seed").set_value(7)
    at.button(key="t2i_go").click().run()
    assert not at.exception and not errors(at)
    assert "result" in captions(at)
    image, settings = at.session_state["t2i_result"]
    assert image.size == (16, 16) and settings["prompt"] == "a red apple" and settings["seed"] == 7
    assert len(at.get("download_button")) == 1
    assert json.loads(at.json[0].value)["steps"] == 4


def test_text_page_runs_the_hires_fix_and_records_it(app_env):
    at = page("text")
    at.number_input(key="t2i_steps").set_value(2)
    at.checkbox(key="t2i_hires").check().run()
    at.selectbox(key="t2i_hires_upscaler").set_value("bicubic")
    at.number_input(key="t2i_hires_steps").set_value(3)
    at.button(key="t2i_go").click().run()
    assert not at.exception and not errors(at)
    image, settings = at.session_state["t2i_result"]
    assert image.size == (32, 32) and settings["height"] == 16  # twice the base size, which is recorded
    assert settings["hires_scale"] == 2 and settings["hires_upscaler"] == "bicubic" and settings["hires_steps"] == 3
    assert settings["strength"] == 0.7


def test_text_page_upscales_each_image_x4_when_asked_and_records_it(app_env, tmp_path, monkeypatch):
    from factories import tiny_upscaler_config, tiny_upscaler_model

    cfg, ckpt = tmp_path / "up.yaml", tmp_path / "up.safetensors"
    cfg.write_text(yaml.safe_dump({**tiny_upscaler_config(), "sampling": {"steps": 2}}))
    save_state_dict(tiny_upscaler_model().original_state_dict(), ckpt)
    monkeypatch.setenv(ENV_UPSCALER_CONFIG, str(cfg))
    monkeypatch.setenv(ENV_UPSCALER_CKPT, str(ckpt))
    at = page("text")
    at.number_input(key="t2i_steps").set_value(2)
    at.checkbox(key="t2i_upscale").check().run()
    at.button(key="t2i_go").click().run()
    assert not at.exception and not errors(at)
    image, settings = at.session_state["t2i_result"]
    assert image.size == (64, 64) and settings["height"] == 16  # the 16 px sample x4; the sampled size recorded
    assert settings["upscale"] == 4 and settings["upscale_steps"] == 2  # the upscaler's own steps


def test_text_page_reads_prompts_in_the_chosen_syntax_and_records_it(app_env):
    def made(syntax: str | None):
        at = page("text")
        at.text_input(key="t2i_prompt").set_value("[red:blue:0.5] heart")
        at.number_input(key="t2i_steps").set_value(4)
        if syntax is not None:
            at.selectbox(key="t2i_prompt_syntax").set_value(syntax)
        at.button(key="t2i_go").click().run()
        assert not at.exception and not errors(at)
        return at.session_state["t2i_result"], at

    (plain_image, plain), at = made(None)
    assert at.selectbox(key="t2i_prompt_syntax").value == defaults.PROMPT_SYNTAX == "plain"
    assert plain["prompt_editing"] is False
    (image, settings), _ = made("a1111")
    # Read as A1111 reads it the prompt changes halfway (red, then blue): another image than its brackets as text.
    assert not np.array_equal(np.asarray(image), np.asarray(plain_image))
    png = Image.open(io.BytesIO(png_bytes(image, settings)))
    recorded = json.loads(png.text["ldm"])
    assert recorded["prompt_editing"] is True and recorded["emphasis"] is True and recorded["long_prompts"] is True
    assert recorded["prompt"] == "[red:blue:0.5] heart"


CLASSES = ["red square", "blue circle"]


@pytest.fixture(scope="module")
def class_model_files(tmp_path_factory):
    """A tiny text + label model and a tiny label-only one (random weights), as YAML + safetensors."""
    d = tmp_path_factory.mktemp("tiny-class")
    return {
        kind: write_tiny_model_files(
            d,
            kind,
            tiny_class_config(CLASSES, label_only=kind == "label-only"),
            tiny_class_model(CLASSES, label_only=kind == "label-only"),
        )
        for kind in ("text+label", "label-only")
    }


def class_page(files, monkeypatch) -> AppTest:
    monkeypatch.setenv(ENV_CONFIG, files[0])
    monkeypatch.setenv(ENV_CKPT, files[1])
    return page("text")


def generate_on_page(at: AppTest, label: str):
    at.selectbox(key="t2i_label").set_value(label)
    at.number_input(key="t2i_steps").set_value(3)
    at.button(key="t2i_go").click().run()
    assert not at.exception and not errors(at)
    image, settings = at.session_state["t2i_result"]
    return np.asarray(image), settings


def test_text_page_offers_a_class_conditional_models_labels(class_model_files, monkeypatch):
    at = class_page(class_model_files["text+label"], monkeypatch)
    assert at.selectbox(key="t2i_label").options == [*CLASSES, "(no label)"]
    assert at.text_input(key="t2i_prompt").value  # a text + label model keeps its prompt box
    blue, settings = generate_on_page(at, "blue circle")
    assert settings["label"] == "blue circle" and json.loads(at.json[0].value)["label"] == "blue circle"
    red, settings = generate_on_page(at, "red square")
    assert settings["label"] == "red square" and not np.array_equal(red, blue)  # the label reached the U-Net
    _, settings = generate_on_page(at, "(no label)")
    assert "label" not in settings  # the null label, as `ldm txt2img` without --label records it


def test_text_page_hides_the_prompt_of_a_label_only_model(class_model_files, monkeypatch):
    at = class_page(class_model_files["label-only"], monkeypatch)
    assert "t2i_prompt" not in [t.key for t in at.text_input] and "t2i_negative" not in [t.key for t in at.text_input]
    image, settings = generate_on_page(at, "red square")
    assert settings["label"] == "red square" and settings["prompt"] == "" and image.shape == (16, 16, 3)


def test_text_page_of_a_model_without_classes_has_no_label_choice(app_env):
    at = page("text")
    assert "t2i_label" not in [s.key for s in at.selectbox] and at.text_input(key="t2i_prompt")


def test_text_page_shows_bad_settings_as_an_error(app_env):
    at = page("text")
    at.number_input(key="t2i_height").set_value(12)  # not a multiple of 8
    at.button(key="t2i_go").click().run()
    assert not at.exception
    assert any("Generation failed" in e and "multiple of 8" in e for e in errors(at))
    assert "t2i_result" not in at.session_state


def test_text_page_without_a_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "missing.yaml"))
    at = page("text")
    assert any(e.startswith("No model") for e in errors(at))
    assert not at.button


def test_toy_page_trains_and_samples(app_env):
    at = page("toy")
    at.number_input(key="toy_steps").set_value(200)
    at.multiselect(key="toy_schedules").set_value(["linear", "cosine"])
    at.button(key="toy_train").click().run()
    assert not at.exception and not errors(at)
    models = at.session_state["toy_models"]
    assert set(models) == {"linear", "cosine"} and all(len(m.losses) == 200 for m in models.values())
    table = at.dataframe[0].value
    assert set(table["schedule"]) == {"linear", "cosine"} and set(table["sampler"]) == {"ddpm", "ddim"}
    assert len(at.get("vega_lite_chart")) == 1 + 4 + 1  # loss, a scatter per schedule x sampler, the replay
    at.slider(key="toy_run_step").set_value(0).run()
    start = next(c.value for c in at.caption if "noise level" in c.value)
    at.slider(key="toy_run_step").set_value(50).run()
    end = next(c.value for c in at.caption if "noise level" in c.value)
    assert "sigma = 0 " in end and start != end and not errors(at)


@pytest.mark.parametrize("mode,button", [("img2img", "edit_go"), ("outpaint", "edit_go")])
def test_edit_page_img2img_and_outpaint(app_env, mode, button):
    at = page("edit")
    at.radio(key="edit_mode").set_value(mode).run()
    at.number_input(key="edit_steps").set_value(3)
    at.button(key=button).click().run()
    assert not at.exception and not errors(at)
    done_mode, result = at.session_state["edit_result"]
    assert done_mode == mode
    assert result.size == ((16, 16) if mode == "img2img" else (32, 16))  # outpaint adds 16 px on the right
    assert any(c.startswith("result") for c in captions(at))


def test_edit_page_inpaint_needs_a_mask_of_the_right_size(app_env):
    at = page("edit")
    at.radio(key="edit_mode").set_value("inpaint").run()
    at.radio(key="edit_source").set_value("upload").run()
    at.file_uploader(key="edit_upload").set_value(("in.png", png_upload(sample_image("shapes", 24)), "image/png")).run()
    at.radio(key="edit_mask_source").set_value("upload").run()
    at.number_input(key="edit_steps").set_value(3)
    at.button(key="edit_go").click().run()
    assert any("needs a mask" in e for e in errors(at))
    wrong = Image.new("L", (8, 8), 255)
    at.file_uploader(key="edit_mask").set_value(("m.png", png_upload(wrong), "image/png")).run()
    at.button(key="edit_go").click().run()
    assert not at.exception and any("mask is 8x8 but the image is 24x24" in e for e in errors(at))
    right = Image.new("L", (24, 24), 0)
    right.paste(255, (0, 0, 12, 24))  # repaint the left half
    at.file_uploader(key="edit_mask").set_value(("m.png", png_upload(right), "image/png")).run()
    at.button(key="edit_go").click().run()
    assert not errors(at)
    mode, result = at.session_state["edit_result"]
    assert mode == "inpaint" and result.size == (24, 24)
    kept = np.asarray(result)[:, 16:]  # well outside the hole and its feathered edge: unchanged
    assert np.array_equal(kept, np.asarray(sample_image("shapes", 24))[:, 16:])


def test_edit_page_outpaints_with_the_shipped_inpainting_model_or_blends(monkeypatch):
    for name in (ENV_CONFIG, ENV_CKPT):
        monkeypatch.delenv(name, raising=False)  # the shipped models
    at = page("edit")
    at.radio(key="edit_mode").set_value("outpaint").run()
    assert any("shipped inpainting model" in c.value for c in at.caption)
    at.number_input(key="edit_steps").set_value(2)
    at.button(key="edit_go").click().run()
    assert not at.exception and not errors(at)
    assert at.session_state["edit_result"][0] == "outpaint"
    at.checkbox(key="edit_blend").check().run()
    assert any("latent blending" in c.value for c in at.caption)


def test_edit_page_upscale_without_upscaler_says_so(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_HOME", str(tmp_path))  # no shipped upscaler there, and none given
    at = page("edit")
    at.radio(key="edit_mode").set_value("upscale x4").run()
    assert not at.exception
    assert any("needs the upscaler" in i.value for i in at.info)


def test_edit_page_upscales_with_an_upscaler_given(app_env, tmp_path, monkeypatch):
    from factories import tiny_upscaler_config, tiny_upscaler_model

    from ldm.interfaces.app.state import ENV_UPSCALER_CKPT, ENV_UPSCALER_CONFIG

    cfg, ckpt = tmp_path / "up.yaml", tmp_path / "up.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_upscaler_config()))
    save_state_dict(tiny_upscaler_model().original_state_dict(), ckpt)
    monkeypatch.setenv(ENV_UPSCALER_CONFIG, str(cfg))
    monkeypatch.setenv(ENV_UPSCALER_CKPT, str(ckpt))
    at = page("edit")
    at.radio(key="edit_mode").set_value("upscale x4").run()
    assert not at.info or not any("needs the upscaler" in i.value for i in at.info)
    at.number_input(key="edit_steps").set_value(2)
    at.button(key="edit_go").click().run()
    assert not at.exception and not errors(at)
    mode, result = at.session_state["edit_result"]
    assert mode == "upscale x4" and result.size == (64, 64)  # the 16 px sample, four times larger


def test_edit_page_upscales_with_the_shipped_upscaler_when_none_is_given(app_env):
    at = page("edit")
    at.radio(key="edit_mode").set_value("upscale x4").run()
    assert not at.exception and not any("needs the upscaler" in i.value for i in at.info)
    at.number_input(key="edit_steps").set_value(2)
    at.button(key="edit_go").click().run()
    assert not at.exception and not errors(at)
    mode, result = at.session_state["edit_result"]
    assert mode == "upscale x4" and result.size == (256, 256)  # the shipped upscaler's 64 px input, x4


def test_walk_page_makes_a_gif(app_env):
    at = page("walk")
    at.number_input(key="walk_frames").set_value(3)
    at.number_input(key="walk_steps").set_value(2)
    at.checkbox(key="walk_boomerang").uncheck()
    at.button(key="walk_go").click().run()
    assert not at.exception and not errors(at)
    gif, video = at.session_state["walk_result"]
    with Image.open(io.BytesIO(gif)) as img:
        assert img.format == "GIF" and img.n_frames == 3
    assert video is None and "walk" in captions(at)
    assert [n.label for n in at.number_input if "Seed" in n.label] == ["Seed A", "Seed B"]  # no unused seed


def test_walk_page_same_ends_is_an_error(app_env):
    at = page("walk")
    # Both ends set here: the page's default prompts differ (and may change), the test is about equal ends.
    at.text_input(key="walk_prompt_a").set_value("smiling face")
    at.text_input(key="walk_prompt_b").set_value("smiling face")
    at.number_input(key="walk_seed_a").set_value(1)
    at.number_input(key="walk_seed_b").set_value(1)
    at.button(key="walk_go").click().run()
    assert not at.exception and any("both ends are the same" in e for e in errors(at))


def test_main_navigates_to_every_page(app_env):
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and at.header[0].value == "Forward diffusion explorer"
    for path, header in [
        ("views/text.py", "Text-to-image"),
        ("views/walk.py", "Latent walk"),
        ("views/toy.py", "Train a denoiser, live"),
        ("views/edit.py", "Edit"),
        ("views/compare.py", "GAN, VAE and diffusion, side by side"),
    ]:
        at.switch_page(path).run()
        assert not at.exception and at.header[0].value == header
    assert "Model: tiny.yaml + tiny.safetensors" in at.sidebar.caption[0].value


# --- the `ldm app` command ------------------------------------------------------------------------------------


def test_app_command_is_headless_on_localhost_and_passes_the_model(model_files):
    import argparse

    from ldm.interfaces.cli.app import MAIN, app_command, app_env

    cmd = app_command(8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(MAIN) and MAIN.is_file()
    flags = list(zip(cmd[5::2], cmd[6::2]))
    assert dict(flags) == {
        "--server.headless": "true",
        "--server.port": "8600",
        "--server.address": "127.0.0.1",
        "--browser.gatherUsageStats": "false",
        "--server.allowedHosts": "localhost",
    }
    assert [v for k, v in flags if k == "--server.allowedHosts"] == ["127.0.0.1", "localhost"]
    cfg, ckpt = model_files
    args = argparse.Namespace(config=cfg, ckpt=ckpt, upscaler_config=None, upscaler_ckpt=None, device="cpu")
    env = app_env(args)
    assert source_from_env(env).config == cfg and source_from_env(env).device == "cpu"
    assert source_from_env(env).upscaler_config is None


@pytest.mark.parametrize(
    "argv,message",
    [
        (["app", "--port", "0"], "--port"),
        (["app", "--ckpt", "x.safetensors"], "needs --config"),
        (["app", "--config", "missing.yaml"], "not found"),
        (["app", "--upscaler-config", "u.yaml"], "both --upscaler-config"),
    ],
)
def test_app_command_rejects_bad_arguments_before_starting(argv, message, capsys):
    from ldm.interfaces.cli.main import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err
