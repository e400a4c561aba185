"""A1111-layout PNG metadata: written, read back under A1111's names, and --from-png regenerating an image."""

import hashlib
import json

import numpy as np
import pytest
from factories import write_tiny_model_files
from PIL import Image, PngImagePlugin

from ldm.interfaces.cli.main import main
from ldm.io.infotext import (
    InfotextError,
    format_infotext,
    parse_infotext,
    quote,
    settings_from_infotext,
    settings_from_png,
)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return write_tiny_model_files(tmp_path_factory.mktemp("tiny"), "my tiny model")


def generate(model_files, out, *args):
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
    return sorted((out / "samples").glob("*.png"))


def test_written_text_reads_back_with_a1111_names_and_quoting(model_files, tmp_path):
    negative = 'blurry, low "quality"\nwatermark: text'
    files = generate(
        model_files,
        tmp_path / "out",
        "a red apple, studio light",
        "--negative-prompt",
        negative,
        "--seed",
        "1234",
        "--scale",
        "7",
        "--sampler",
        "euler_ancestral",
        "--karras",
    )
    text = Image.open(files[0]).text["parameters"]
    fields = parse_infotext(text)
    digest = hashlib.sha256(open(model_files[1], "rb").read()).hexdigest()
    assert fields["Prompt"] == "a red apple, studio light"
    assert fields["Negative prompt"] == negative
    assert fields["Steps"] == "3" and fields["Seed"] == "1234"
    assert fields["Sampler"] == "Euler a" and fields["Schedule type"] == "Karras"
    assert fields["CFG scale"] == "7"  # A1111 writes whole scales without ".0"
    assert fields["Size"] == "24x16" and (fields["Size-1"], fields["Size-2"]) == ("24", "16")  # width x height
    assert fields["Model hash"] == digest[:10]
    assert fields["Model"] == "my tiny model"
    # The prompt and negative prompt stand on their own lines; the settings line is the last one.
    assert text.splitlines()[0] == "a red apple, studio light"
    assert text.splitlines()[1].startswith("Negative prompt: blurry, low")


def test_values_with_commas_or_colons_are_json_strings():
    assert quote("DPM++ 2M") == "DPM++ 2M"
    assert quote("a, b") == '"a, b"' and quote('x: "y"') == '"x: \\"y\\""'
    text = format_infotext(
        {
            "prompt": "p",
            "steps": 5,
            "sampler": "ddim",
            "guidance_scale": 7.5,
            "seed": 3,
            "height": 8,
            "width": 16,
            "model_file": "odd, name: v2.safetensors",
            "eta": 0.5,
        }
    )
    fields = parse_infotext(text)
    assert fields["Model"] == "odd, name: v2" and fields["CFG scale"] == "7.5" and fields["Eta DDIM"] == "0.5"
    assert "Negative prompt" not in text  # A1111 leaves the line out when there is none


def test_loras_and_embeddings_are_written_as_a1111_short_hashes():
    sha_a, sha_b, sha_t = "a" * 64, "b" * 64, "c" * 64
    text = format_infotext(
        {
            "prompt": "p",
            "steps": 5,
            "seed": 3,
            "loras": [
                {"file": "style.safetensors", "sha256": sha_a, "weight": 0.8},
                {"file": "merged.safetensors", "sha256": sha_b, "weight": 1.0, "merged": True},
            ],  # baked in: not a Lora
            "embeddings": [{"name": "sparkle", "file": "sparkle.pt", "sha256": sha_t, "vectors": 2}],
        }
    )
    fields = parse_infotext(text)
    assert fields["Lora hashes"] == f"style: {sha_a[:12]}" and fields["TI hashes"] == f"sparkle: {sha_t[:12]}"
    assert "Lora hashes" not in parse_infotext(format_infotext({"prompt": "p", "steps": 5, "seed": 3}))


def test_a1111_text_maps_onto_our_settings():
    text = (
        "masterpiece, cat\nwearing a hat\nNegative prompt: dog, (blurry:1.2)\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 99, Size: 512x768, "
        'Model hash: abcdef0123, Model: sd15, Hires upscaler: "Latent (nearest)", Version: v1.6.0'
    )
    settings = settings_from_infotext(text)
    assert (
        settings["prompt"] == "masterpiece, cat\nwearing a hat" and settings["negative_prompt"] == "dog, (blurry:1.2)"
    )
    assert (settings["steps"], settings["guidance_scale"], settings["seed"]) == (25, 6.5, 99)
    assert (settings["width"], settings["height"]) == (512, 768)
    assert settings["sampler"] == "dpmpp_2m" and settings["karras"] is True and settings["model_hash"] == "abcdef0123"
    with pytest.raises(
        InfotextError, match="sampler 'DPM adaptive'"
    ):  # UniPC has one since ldm.sampling.samplers_extra
        settings_from_infotext("x\nSteps: 2, Sampler: DPM adaptive, Seed: 1")
    with pytest.raises(InfotextError, match="no Steps or Seed"):
        settings_from_infotext("just a caption")


def test_from_png_makes_the_same_image_bit_for_bit(model_files, tmp_path):
    first = generate(
        model_files,
        tmp_path / "a",
        "a cat, sitting",
        "--negative-prompt",
        "dog, hat",
        "--seed",
        "5",
        "--n-samples",
        "2",
        "--sampler",
        "dpmpp_2m",
        "--scale",
        "3.5",
    )
    again = generate(model_files, tmp_path / "b", "--from-png", str(first[1]))
    original, remade = np.asarray(Image.open(first[1])), np.asarray(Image.open(again[0]))
    assert original.shape == remade.shape and np.array_equal(original, remade)
    settings = json.loads(Image.open(again[0]).text["ldm"])
    assert settings["seed"] == 6 and settings["sampler"] == "dpmpp_2m" and settings["negative_prompt"] == "dog, hat"
    # A different seed would have made a different image: the comparison above can fail.
    other = generate(
        model_files,
        tmp_path / "c",
        "a cat, sitting",
        "--negative-prompt",
        "dog, hat",
        "--seed",
        "9",
        "--sampler",
        "dpmpp_2m",
        "--scale",
        "3.5",
    )
    assert not np.array_equal(original, np.asarray(Image.open(other[0])))


def test_from_png_reads_an_a1111_image(model_files, tmp_path):
    made = generate(model_files, tmp_path / "a", "a dog", "--seed", "11", "--sampler", "euler", "--scale", "4")
    # The same image as A1111 would have saved it: only the parameters text, no JSON.
    a1111 = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", Image.open(made[0]).text["parameters"])
    Image.open(made[0]).save(a1111, pnginfo=info)
    assert "seed" in settings_from_png(a1111) and "ldm" not in Image.open(a1111).text
    again = generate(model_files, tmp_path / "b", "--from-png", str(a1111))
    assert np.array_equal(np.asarray(Image.open(made[0])), np.asarray(Image.open(again[0])))


def test_an_a1111_image_with_prompt_editing_is_remade_bit_for_bit(model_files, tmp_path):
    """An A1111 text turns A1111's syntax on (prompt editing among it), so an edited prompt is remade as edited."""
    prompt = "[red:blue:0.5] (heart:1.2)"
    args = ("--seed", "4", "--negative-prompt", "[dark|]", "--scale", "9")
    made = generate(model_files, tmp_path / "a", prompt, *args, "--prompt-syntax", "a1111")
    settings = json.loads(Image.open(made[0]).text["ldm"])
    assert settings["prompt_editing"] is settings["emphasis"] is settings["long_prompts"] is True
    a1111 = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", Image.open(made[0]).text["parameters"])
    Image.open(made[0]).save(a1111, pnginfo=info)
    assert settings_from_png(a1111)["prompt_editing"] is True
    again = generate(model_files, tmp_path / "b", "--from-png", str(a1111))
    assert np.array_equal(np.asarray(Image.open(made[0])), np.asarray(Image.open(again[0])))
    assert json.loads(Image.open(again[0]).text["ldm"])["prompt_editing"] is True
    # Our own metadata says the same; read plainly, the prompt makes another image, so the comparisons can fail.
    ours = generate(model_files, tmp_path / "c", "--from-png", str(made[0]))
    assert np.array_equal(np.asarray(Image.open(made[0])), np.asarray(Image.open(ours[0])))
    plain = generate(model_files, tmp_path / "d", prompt, *args)
    assert not np.array_equal(np.asarray(Image.open(made[0])), np.asarray(Image.open(plain[0])))
    assert json.loads(Image.open(plain[0]).text["ldm"])["prompt_editing"] is False


def test_from_png_errors_are_one_line(model_files, tmp_path, capsys):
    cfg, ckpt = model_files
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    for args, message in (
        (["--from-png", str(plain)], "holds no generation settings"),
        (["--from-png", str(tmp_path / "missing.png")], "image not found"),
        (["a prompt", "--from-png", str(plain)], "give no prompt"),
    ):
        code = main(
            ["txt2img", *args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(tmp_path / "o"), "--no-progress"]
        )
        assert code != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
