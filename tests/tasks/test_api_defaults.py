"""The Python API in diffusers' habits (generator, latents, num_images_per_prompt, dtype, device, callbacks),
one set of defaults shared by the CLI, the API and the app, and long prompts wired into every task."""

import argparse
import inspect
import json
import logging

import numpy as np
import pytest
import torch
from factories import tiny_model, write_tiny_model_files
from PIL import Image

from ldm.core import defaults
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import build_parser, main
from ldm.models.prompt_options import PromptOptions
from ldm.sampling.options import SamplingOptions, task_options
from ldm.tasks.base import NoiseShapeError
from ldm.tasks.img2img import img2img
from ldm.tasks.inpaint import inpaint
from ldm.tasks.prompts import PromptError, prompt_conditions
from ldm.tasks.txt2img import txt2img
from ldm.tasks.upscale import upscale
from ldm.tasks.walk import walk_frames

FAST = dict(steps=3, progress=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return tuple(map(str, write_tiny_model_files(tmp_path_factory.mktemp("tiny"))))


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# --- one set of defaults ---------------------------------------------------------------------------------------


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def api_default(function, name: str):
    return inspect.signature(function).parameters[name].default


@pytest.mark.parametrize(
    "task, function",
    [("txt2img", txt2img), ("img2img", img2img), ("inpaint", inpaint), ("upscale", upscale), ("walk", walk_frames)],
)
def test_cli_help_and_api_show_the_same_defaults(task, function):
    parser = subcommand(task)
    options = task_options(task)
    seed_name = "seed_a" if task == "walk" else "seed"
    assert parser.get_default("seed") == api_default(function, seed_name) == defaults.SEED
    assert (parser.get_default("steps"), parser.get_default("scale"), parser.get_default("sampler")) == (
        options.steps,
        options.guidance_scale,
        options.sampler,
    )
    assert parser.get_default("device") == api_default(load_model, "device") == defaults.DEVICE == "auto"
    text = " ".join(parser.format_help().split())  # --help wraps lines
    assert f"(default: {defaults.SEED})" in text and f"(default: {options.steps})" in text
    assert f"(default: {options.guidance_scale})" in text and "(default: auto)" in text
    for option, name in (("strength", "strength"), ("noise_level", "noise_level"), ("frames", "frames")):
        if parser.get_default(option) is not None:
            assert parser.get_default(option) == api_default(function, name)


def test_tasks_whose_defaults_differ_say_so_everywhere():
    assert task_options("upscale").steps == subcommand("upscale").get_default("steps") == 50
    assert task_options("walk").steps == subcommand("walk").get_default("steps") != SamplingOptions().steps
    assert (
        subcommand("img2img").get_default("strength")
        == defaults.STRENGTH["img2img"]
        != subcommand("inpaint").get_default("strength")
    )


def test_app_widgets_start_at_the_same_defaults(model_files, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import ldm.interfaces.app
    from ldm.interfaces.app.state import ENV_CKPT, ENV_CONFIG

    monkeypatch.setenv(ENV_CONFIG, model_files[0])
    monkeypatch.setenv(ENV_CKPT, model_files[1])
    views = f"{ldm.interfaces.app.__path__[0]}/views"
    at = AppTest.from_file(f"{views}/text.py", default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    d = task_options("txt2img")
    assert at.number_input(key="t2i_steps").value == d.steps
    assert at.number_input(key="t2i_scale").value == d.guidance_scale
    assert at.number_input(key="t2i_seed").value == defaults.SEED == api_default(txt2img, "seed")
    assert at.selectbox(key="t2i_sampler").value == d.sampler
    walk = AppTest.from_file(f"{views}/walk.py", default_timeout=120)
    walk.run()
    assert not walk.exception, walk.exception
    assert walk.number_input(key="walk_steps").value == task_options("walk").steps
    assert walk.number_input(key="walk_seed_a").value == api_default(walk_frames, "seed_a")
    assert walk.number_input(key="walk_frames").value == api_default(walk_frames, "frames")
    edit = AppTest.from_file(f"{views}/edit.py", default_timeout=120)
    edit.run()
    assert not edit.exception, edit.exception
    assert edit.slider(key="edit_strength").value == api_default(img2img, "strength")


def test_device_auto_is_said_in_the_log(model_files, caplog):
    with caplog.at_level(logging.INFO, logger="ldm"):
        model = load_model(*model_files)  # the default device: "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device.type == expected
    assert any(f"device: {expected}" in r.getMessage() for r in caplog.records)


# --- the API in diffusers' habits ------------------------------------------------------------------------------


def test_num_images_per_prompt_keeps_the_seed_rule(model):
    out = txt2img(model, ["red", "blue"], num_images_per_prompt=2, seed=3, **FAST)
    assert len(out) == 4 and len(out.images) == 4 and all(isinstance(im, Image.Image) for im in out.images)
    assert out.settings["num_images_per_prompt"] == 2 and out.settings["seed"] == 3
    alone = txt2img(model, "blue", seed=3 + 2, **FAST)  # image i uses seed + i: the first "blue" is image 2
    assert np.array_equal(pixels(out[2:3]), pixels(alone))
    assert not np.array_equal(pixels(out[0:1]), pixels(out[1:2]))
    with pytest.raises(PromptError, match="num_images_per_prompt"):
        txt2img(model, "red", num_images_per_prompt=0, **FAST)


def test_generator_draws_the_batch_like_diffusers_and_latents_are_the_start_noise(model):
    shape = (2, model.latent_channels, 8, 8)
    out = txt2img(model, "red", num_images_per_prompt=2, generator=torch.Generator().manual_seed(5), **FAST)
    assert out.settings["seed"] is None and out.settings["noise"] == "generator"
    # diffusers' randn_tensor with one generator: the whole batch in one draw. DDIM at eta 0 adds no noise
    # after the start, so the same start noise given as latents gives the same images.
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    same = txt2img(model, "red", num_images_per_prompt=2, latents=latents, **FAST)
    assert np.array_equal(pixels(out), pixels(same)) and same.settings["noise"] == "latents"
    per_image = txt2img(
        model,
        "red",
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)],
        **FAST,
    )
    first = txt2img(model, "red", generator=torch.Generator().manual_seed(5), **FAST)
    assert np.array_equal(pixels(per_image[:1]), pixels(first))
    assert not np.array_equal(pixels(out), pixels(txt2img(model, "red", num_images_per_prompt=2, **FAST)))


def test_generator_drives_the_step_noise_of_ancestral_samplers(model):
    def run(seed):
        return pixels(
            txt2img(model, "red", generator=torch.Generator().manual_seed(seed), sampler="euler_ancestral", **FAST)
        )

    assert np.array_equal(run(1), run(1)) and not np.array_equal(run(1), run(2))


def test_bad_latents_and_generators_are_refused_in_one_line(model):
    with pytest.raises(NoiseShapeError, match=r"latents of shape \[1, 4, 4, 4\] for a batch of shape \[1, 4, 8, 8\]"):
        txt2img(model, "red", latents=torch.zeros(1, 4, 4, 4), **FAST)
    with pytest.raises(NoiseShapeError, match="3 generators for 2 images"):
        txt2img(model, "red", num_images_per_prompt=2, generator=[torch.Generator()] * 3, **FAST)


def test_callback_runs_once_per_step(model):
    seen = []
    txt2img(model, "red", callback=lambda step: seen.append((step["i"], tuple(step["x"].shape))), **FAST)
    assert [i for i, _ in seen] == [0, 1, 2] and seen[0][1] == (1, 4, 8, 8)


def test_dtype_casts_the_networks_and_keeps_the_schedule(model_files):
    model = load_model(*model_files, device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.alphas_cumprod.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.vae.parameters())
    low = pixels(txt2img(model, "red", **FAST))
    full = pixels(txt2img(load_model(*model_files, device="cpu"), "red", **FAST))
    assert np.abs(low - full).mean() < 8  # grey levels: bf16 weights change the image a little, not wholesale


# --- long prompts and emphasis, as options of every task --------------------------------------------------------

LONG = ", ".join(f"word{i}" for i in range(30))  # 114 tokens: two chunks


def test_long_prompts_give_both_sides_of_guidance_two_chunks(model):
    cond, uncond = prompt_conditions(model, [LONG], [""], PromptOptions(long_prompts=True))
    assert cond["context"].shape[1] == uncond["context"].shape[1] == 154

    # Words past the 77-token cut change nothing without chunking, and the image with it.
    def context(prompt, **options):
        return prompt_conditions(model, [prompt], [""], PromptOptions(**options))[0]["context"]

    assert context(LONG).shape[1] == 77
    assert torch.equal(context(LONG + ", zebra"), context(LONG + ", giraffe"))
    assert not torch.allclose(
        context(LONG + ", zebra", long_prompts=True), context(LONG + ", giraffe", long_prompts=True)
    )


def test_a_short_prompt_is_the_same_image_with_long_prompts_on(model):
    plain = txt2img(model, "red apple", **FAST)
    chunked = txt2img(model, "red apple", long_prompts=True, **FAST)
    assert np.array_equal(pixels(plain), pixels(chunked)) and chunked.settings["long_prompts"] is True


def test_emphasis_changes_the_condition_only_when_asked(model):
    plain, _ = prompt_conditions(model, ["(red:1.5) apple"], [""], PromptOptions())
    weighted, _ = prompt_conditions(model, ["(red:1.5) apple"], [""], PromptOptions(emphasis=True))
    assert plain["context"].shape == weighted["context"].shape
    assert not torch.allclose(plain["context"], weighted["context"])
    long = img2img(model, Image.new("RGB", (16, 16), "red"), LONG, strength=0.5, long_prompts=True, **FAST)
    assert long.settings["long_prompts"] is True


def test_cli_long_prompt_options_are_recorded_and_restored(model_files, tmp_path):
    cfg, ckpt = model_files
    out = tmp_path / "out"
    assert (
        main(
            [
                "txt2img",
                LONG,
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--steps",
                "2",
                "--long-prompts",
                "--emphasis",
                "--outdir",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    made = out / "samples" / "00000.png"
    settings = json.loads(Image.open(made).text["ldm"])
    assert settings["long_prompts"] is True and settings["emphasis"] is True
    again = tmp_path / "again"
    assert (
        main(
            [
                "txt2img",
                "--from-png",
                str(made),
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--outdir",
                str(again),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(again / "samples" / "00000.png")))


def test_cli_precision_bf16_on_cpu_runs_bf16_weights(model_files, tmp_path, monkeypatch):
    import ldm.interfaces.cli.common as common

    cfg, ckpt = model_files
    used = []
    original = common.use_cpu_bf16
    monkeypatch.setattr(common, "use_cpu_bf16", lambda model: (original(model), used.append(model.dtype)))
    out = tmp_path / "out"
    assert (
        main(
            [
                "txt2img",
                "a cat",
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--steps",
                "2",
                "--precision",
                "bf16",
                "--outdir",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert used == [torch.bfloat16]
    assert json.loads(Image.open(out / "samples" / "00000.png").text["ldm"])["precision"] == "bf16"
