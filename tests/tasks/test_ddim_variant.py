"""Which DDIM runs (ldm.sampling.options: "sd", the original Stable Diffusion sampler's ends, or "k", k-diffusion's), which
models default to which, and what image metadata says of it. Parity with diffusers: tests/models/test_diffusers_parity.py."""  # noqa: E501

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from factories import tiny_original_config, write_tiny_model_files
from PIL import Image, PngImagePlugin

from ldm.core.config import canonical_target, load_config, translate_original
from ldm.core.errors import InvalidOptionError
from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas
from ldm.interfaces.cli.main import main
from ldm.io.infotext import as_made, settings_from_png
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.sampling.options import SamplingOptions, sampler_function, start_scale
from ldm.sampling.samplers import SamplerOptionError, sample_ddim, sample_ddim_sd
from ldm.tasks.base import resolve_options
from ldm.tasks.results import settings_of

ROOT = Path(__file__).resolve().parents[2]
SD_CONFIGS = ROOT / "configs" / "stable-diffusion"
SD_MODEL = SimpleNamespace(ddim_variant="sd", sampling_defaults={}, identity={})  # stand-ins of what is read
OUR_MODEL = SimpleNamespace(ddim_variant="k", sampling_defaults={}, identity={})


@pytest.mark.parametrize("name", sorted(p.name for p in SD_CONFIGS.glob("*.yaml")))
def test_models_from_original_sd_configs_default_to_sd(name):
    node = load_config(SD_CONFIGS / name)["model"]
    assert translate_original(node["target"], node["params"])["ddim_variant"] == "sd"


def test_our_models_default_to_k():
    """The shipped emoji model and this project's training configs name our target and no variant: k, with which
    their earlier images (tests/tasks/test_golden.py) were made."""
    for path in (ROOT / "checkpoints/emoji/model.yaml", ROOT / "configs/emoji/ldm.yaml"):
        node = load_config(path)["model"]
        assert (
            canonical_target(node["target"]) == "ldm.models.latent_diffusion.LatentDiffusion"
            and "ddim_variant" not in node["params"]
        )
    assert inspect.signature(LatentDiffusion).parameters["ddim_variant"].default == "k"


def test_options_take_the_models_variant_unless_given():
    assert resolve_options(None, {}, model=SD_MODEL).ddim_variant == "sd"
    assert resolve_options(None, {}, model=OUR_MODEL).ddim_variant == "k"
    assert resolve_options(None, {"ddim_variant": "k"}, model=SD_MODEL).ddim_variant == "k"
    assert resolve_options(None, {"sampler": "euler"}, model=SD_MODEL).ddim_variant is None  # DDIM's choice only
    with pytest.raises(SamplerOptionError, match="only ddim"):
        resolve_options(None, {"sampler": "euler", "ddim_variant": "sd"})
    with pytest.raises(InvalidOptionError, match="unknown DDIM variant"):
        resolve_options(None, {"ddim_variant": "original"})


def test_the_variant_picks_the_ends():
    sd, k = SamplingOptions(ddim_variant="sd"), SamplingOptions()  # no model known: k
    assert sampler_function(sd) is sample_ddim_sd and sampler_function(k) is sample_ddim
    sigma = torch.tensor(14.6)
    assert start_scale(sd, sigma) == (1 + sigma**2).sqrt() and start_scale(k, sigma) is sigma
    ab = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, 0.00085, 0.012))
    zero, t0 = get_sigmas(ab, 10), get_sigmas(ab, 10, to_zero=False)
    assert torch.equal(zero[:-1], t0[:-1]) and zero[-1] == 0
    assert torch.isclose(t0[-1], ((1 - ab[0]) / ab[0]).sqrt().float())


def test_sd_ddim_on_a_grid_ending_in_zero_is_ddim():
    def denoiser(x, sigma):
        return x / (1 + sigma[:, None] ** 2)

    x, sigmas = torch.randn(2, 3), torch.tensor([5.0, 1.0, 0.2, 0.0])
    assert torch.equal(
        sample_ddim_sd(denoiser, x, sigmas, disable=True), sample_ddim(denoiser, x, sigmas, disable=True)
    )


def test_settings_record_the_variant_that_ran():
    assert settings_of("txt2img", resolve_options(None, {}, model=SD_MODEL))["ddim_variant"] == "sd"
    assert settings_of("txt2img", SamplingOptions(), SD_MODEL, ["p"])["ddim_variant"] == "sd"
    assert settings_of("txt2img", SamplingOptions(ddim_variant="k"), SD_MODEL, ["p"])["ddim_variant"] == "k"
    assert settings_of("txt2img", SamplingOptions(sampler="euler"), SD_MODEL, ["p"])["ddim_variant"] is None


def test_metadata_without_a_variant_was_made_with_k():
    old = {"sampler": "ddim", "steps": 30, "seed": 1}
    assert as_made(old)["ddim_variant"] == "k" and "ddim_variant" not in old
    assert as_made({**old, "ddim_variant": "sd"})["ddim_variant"] == "sd"
    assert "ddim_variant" not in as_made({**old, "sampler": "euler"})


@pytest.fixture(scope="module")
def sd_model_files(tmp_path_factory):
    """The tiny model as an original SD YAML describes it, so it defaults to the sd variant."""
    return write_tiny_model_files(tmp_path_factory.mktemp("tiny-sd"), "tiny-sd", tiny_original_config())


def generate(model_files, out: Path, *args: str) -> Path:
    cfg, ckpt = model_files
    code = main(
        [
            "txt2img",
            *args,
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--outdir",
            str(out),
            "--no-progress",
            "--height",
            "16",
            "--width",
            "24",
            "--steps",
            "3",
            "--no-grid",
        ]
    )
    assert code == 0
    return min((out / "samples").glob("*.png"))


def ldm_settings(path: Path) -> dict:
    return json.loads(Image.open(path).text["ldm"])


def as_written_before_the_variant(path: Path, to: Path) -> Path:
    """The image with its metadata as this project wrote it before ddim_variant existed (no such field)."""
    settings = ldm_settings(path)
    del settings["ddim_variant"]
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", Image.open(path).text["parameters"])
    info.add_text("ldm", json.dumps(settings))
    Image.open(path).save(to, pnginfo=info)
    return to


def test_new_images_record_the_variant_and_old_ones_keep_their_meaning(sd_model_files, tmp_path):
    made_sd = generate(sd_model_files, tmp_path / "sd", "a cat", "--seed", "3")
    assert ldm_settings(made_sd)["ddim_variant"] == "sd"  # the SD model's default, recorded
    made_k = generate(sd_model_files, tmp_path / "k", "a cat", "--seed", "3", "--ddim-variant", "k")
    assert ldm_settings(made_k)["ddim_variant"] == "k"
    pixels_sd, pixels_k = np.asarray(Image.open(made_sd)), np.asarray(Image.open(made_k))
    assert not np.array_equal(pixels_sd, pixels_k)  # the variants differ, so the checks below can fail

    # An image made before the field existed was made with k, whatever the model's default is now.
    old = as_written_before_the_variant(made_k, tmp_path / "old.png")
    assert settings_from_png(old)["ddim_variant"] == "k"
    again = generate(sd_model_files, tmp_path / "again", "--from-png", str(old))
    assert np.array_equal(np.asarray(Image.open(again)), pixels_k) and ldm_settings(again)["ddim_variant"] == "k"
    # A new image is remade with the variant it records.
    again_sd = generate(sd_model_files, tmp_path / "again-sd", "--from-png", str(made_sd))
    assert np.array_equal(np.asarray(Image.open(again_sd)), pixels_sd)


def test_other_samplers_record_no_variant(sd_model_files, tmp_path):
    made = generate(sd_model_files, tmp_path / "euler", "a cat", "--sampler", "euler")
    assert ldm_settings(made)["ddim_variant"] is None
