"""A1111's sampler labels and schedule types read from (and written to) infotext, and the exponential schedule."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from test_infotext import generate, model_files  # noqa: F401 (model_files is a fixture)

from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas, sigmas_from_alphas_cumprod
from ldm.io.a1111_samplers import A1111_SAMPLERS, sampler_settings
from ldm.io.infotext import SAMPLER_NAMES, InfotextError, format_infotext, parse_infotext, settings_from_infotext
from ldm.sampling.samplers import SAMPLERS


def read(sampler, schedule=None, version=True):
    fields = f"Steps: 20, Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "")
    text = "a cat\n" + fields + "CFG scale: 7, Seed: 1, Size: 512x512" + (", Version: v1.9.4" if version else "")
    settings = settings_from_infotext(text)
    return {key: settings[key] for key in ("sampler", "karras", "spacing") if key in settings}


@pytest.mark.parametrize(
    "sampler, schedule, expected",
    [
        # A1111 before 1.9: the schedule in the label, a bare label the uniform schedule.
        ("DPM++ 2M Karras", None, {"sampler": "dpmpp_2m", "karras": True}),
        ("DPM++ 2M SDE Exponential", None, {"sampler": "dpmpp_2m_sde", "spacing": "exponential"}),
        ("DPM++ SDE Karras", None, {"sampler": "dpmpp_sde", "karras": True}),
        ("DPM2 a Karras", None, {"sampler": "dpm_2_ancestral", "karras": True}),
        ("LMS Karras", None, {"sampler": "lms", "karras": True}),
        ("DPM++ 2M", None, {"sampler": "dpmpp_2m", "spacing": "linspace"}),
        ("LMS", None, {"sampler": "lms", "spacing": "linspace"}),
        ("DPM2", None, {"sampler": "dpm_2", "spacing": "linspace"}),
        ("Euler a", None, {"sampler": "euler_ancestral", "spacing": "linspace"}),
        # A1111 1.9 and later: the "Schedule type" field; Automatic is the sampler's own default.
        ("DPM++ 2M", "Karras", {"sampler": "dpmpp_2m", "karras": True}),
        ("DPM++ 2M", "Automatic", {"sampler": "dpmpp_2m", "karras": True}),
        ("DPM++ 2M", "Uniform", {"sampler": "dpmpp_2m", "spacing": "linspace"}),
        ("DPM++ SDE", "Exponential", {"sampler": "dpmpp_sde", "spacing": "exponential"}),
        ("DPM++ 2M SDE", "Automatic", {"sampler": "dpmpp_2m_sde", "spacing": "exponential"}),
        ("DPM++ 3M SDE", "Automatic", {"sampler": "dpmpp_3m_sde", "spacing": "exponential"}),
        ("DPM++ 2S a", "Automatic", {"sampler": "dpmpp_2s_ancestral", "karras": True}),
        ("DPM2 a", "Automatic", {"sampler": "dpm_2_ancestral", "karras": True}),
        ("Euler", "Automatic", {"sampler": "euler", "spacing": "linspace"}),
        ("LCM", "Karras", {"sampler": "lcm", "karras": True}),
        # Timestep samplers keep their own grids, whatever the schedule type says.
        ("UniPC", "Karras", {"sampler": "unipc", "spacing": "linspace"}),
        ("DDIM", "Exponential", {"sampler": "ddim"}),
        ("PLMS", None, {"sampler": "plms"}),
    ],
)
def test_a1111_labels_and_schedule_types_map_onto_our_samplers_and_grids(sampler, schedule, expected):
    assert read(sampler, schedule) == expected


def test_our_own_texts_keep_our_spacing_where_no_schedule_is_named():
    # No Version field: not A1111's text but ours, which names no schedule for our leading / trailing spacings.
    assert read("DPM++ 2M", version=False) == {"sampler": "dpmpp_2m"}
    assert read("unipc_bh2", "Karras", version=False) == {"sampler": "unipc_bh2", "karras": True}  # no A1111 label
    assert read("pc", version=False) == {"sampler": "pc"}


def test_labels_and_schedule_types_without_counterpart_are_refused_in_one_line():
    with pytest.raises(InfotextError, match="sampler 'DPM adaptive' has no counterpart"):
        read("DPM adaptive")
    with pytest.raises(InfotextError, match="sampler 'Restart Karras' has no counterpart"):
        read("Restart Karras")
    with pytest.raises(InfotextError, match="schedule type 'Align Your Steps' has no counterpart.*Exponential"):
        read("Euler", "Align Your Steps")
    assert sampler_settings("Euler", "SGM Uniform", True) is None


@pytest.mark.parametrize("sampler", sorted(SAMPLER_NAMES))
@pytest.mark.parametrize("grid", [{"karras": True}, {"spacing": "exponential"}, {"spacing": "linspace"}])
def test_written_names_read_back_as_the_same_sampler_and_grid(sampler, grid):
    text = format_infotext({"prompt": "p", "steps": 5, "seed": 3, "sampler": sampler, **grid})
    fields = parse_infotext(text)
    assert fields["Sampler"] == SAMPLER_NAMES[sampler] and SAMPLER_NAMES[sampler] in A1111_SAMPLERS
    assert (
        fields["Schedule type"]
        == {"karras": "Karras", "exponential": "Exponential", "linspace": "Uniform"}[grid.get("spacing", "karras")]
    )
    settings = settings_from_infotext(text)
    assert settings["sampler"] == sampler
    if A1111_SAMPLERS[SAMPLER_NAMES[sampler]][1] is not None:  # not a timestep sampler: the grid comes back too
        assert {k: settings[k] for k in grid} == grid
    assert "Schedule type" not in parse_infotext(format_infotext({"prompt": "p", "steps": 5, "sampler": sampler}))


def test_every_new_sampler_has_an_a1111_label_or_is_read_by_its_own_name():
    assert {name for name in SAMPLERS if name not in SAMPLER_NAMES} == {"pc", "unipc_bh2"}


def test_exponential_schedule_is_even_in_log_sigma_between_the_model_s_ends():
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012))
    model = sigmas_from_alphas_cumprod(ac.double())
    sigmas = get_sigmas(ac, 7, spacing="exponential")
    assert len(sigmas) == 8 and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[0].double(), model[-1], rtol=1e-6, atol=0)
    torch.testing.assert_close(sigmas[-2].double(), model[0], rtol=1e-6, atol=0)
    steps = sigmas[:-1].double().log().diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-5, atol=0)
    # k-diffusion's get_sigmas_exponential(7, sigma_min, sigma_max), written out.
    expected = [math.exp(math.log(model[-1]) + i / 6 * (math.log(model[0]) - math.log(model[-1]))) for i in range(7)]
    torch.testing.assert_close(sigmas[:-1].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_from_png_remakes_an_a1111_image_with_its_sampler_and_schedule(model_files, tmp_path):  # noqa: F811
    made = generate(
        model_files,
        tmp_path / "a",
        "a dog",
        "--seed",
        "11",
        "--sampler",
        "dpmpp_sde",
        "--scale",
        "4",
        "--spacing",
        "exponential",
    )
    text = Image.open(made[0]).text["parameters"]
    assert "Sampler: DPM++ SDE, Schedule type: Exponential" in text
    # As A1111 1.9 would write it: only the parameters text, the schedule as "Automatic" is not this one's default.
    a1111 = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text + ", Version: v1.9.4")
    Image.open(made[0]).save(a1111, pnginfo=info)
    again = generate(model_files, tmp_path / "b", "--from-png", str(a1111))
    assert np.array_equal(np.asarray(Image.open(made[0])), np.asarray(Image.open(again[0])))
    other = generate(model_files, tmp_path / "c", "a dog", "--seed", "11", "--sampler", "dpmpp_sde", "--scale", "4")
    assert not np.array_equal(np.asarray(Image.open(made[0])), np.asarray(Image.open(other[0])))
