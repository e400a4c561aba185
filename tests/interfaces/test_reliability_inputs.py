"""Every input read from a file is checked as a flag is, and long inputs are bounded in time (issue 36, part 2).

Through the real command (tests/cli_runner.py, as tests/interfaces/test_bad_inputs.py): prompt files that are not UTF-8,
prompts over the limit, PNG metadata of the wrong types or sizes, oversized images given to --from-png, sampler
options of the wrong type or out of range. In-process: a fuzz of the prompt, infotext and metadata parsers with
inputs up to 1 MB, each answered within 5 seconds; EXIF orientation wherever an image is read.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from factories import tiny_config, tiny_model
from PIL import Image, PngImagePlugin

from ldm.core.errors import LdmError
from ldm.core.limits import MAX_PROMPT_CHARS, check_prompt_length
from ldm.interfaces.cli.common import parse_sampler_options, read_prompt_file
from ldm.io.checkpoint import save_state_dict
from ldm.io.images import load_image, open_image
from ldm.io.infotext import parse_infotext, settings_from_infotext, settings_from_png
from ldm.models.long_prompts import parse_emphasis
from ldm.models.text_encoder import _cut_part
from ldm.sampling.options import SamplingOptions, sampler_parameters
from ldm.sampling.samplers import SAMPLER_OPTIONS, SAMPLERS

RUNNER = Path(__file__).parents[1] / "cli_runner.py"
MODEL = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--steps", "2", "--no-progress", "--outdir", "out"]
FROM_PNG = [
    "txt2img",
    "--config",
    "tiny.yaml",
    "--ckpt",
    "tiny.safetensors",
    "--no-progress",
    "--outdir",
    "out",
    "--from-png",
]
GOOD = {"prompt": "x", "negative_prompt": "", "seed": 1, "steps": 2, "height": 16, "width": 16, "sampler": "ddim"}
ORIENTATION = 0x0112  # the EXIF tag

# (argv, what the one error line must say)
CASES = [
    (["txt2img", "--from-file", "bad-utf8.txt", *MODEL], "prompt file bad-utf8.txt is not UTF-8 text: byte 12 (0xff)"),
    (
        ["txt2img", "a red apple, " * 7693, *MODEL],
        f"prompt is 100,009 characters long; the limit is {MAX_PROMPT_CHARS:,}",
    ),
    (["txt2img", "x", "--negative-prompt", "b" * 6000, *MODEL], "negative prompt is 6,000 characters long"),
    (["txt2img", "--from-file", "long-line.txt", *MODEL], "line 2 of long-line.txt is 9,000 characters long"),
    ([*FROM_PNG, "long-prompt-infotext.png"], "prompt is 200,000 characters long"),
    (
        [*FROM_PNG, "long-line-infotext.png"],
        "the parameters text has no Steps or Seed",
    ),  # a 200,000-character last line
    ([*FROM_PNG, "long-infotext.png"], "the parameters text is 300,002 characters long; the limit is 262,144"),
    ([*FROM_PNG, "string-seed.png"], "setting 'seed' must be an integer, got '42'"),
    ([*FROM_PNG, "string-steps.png"], "setting 'steps' must be an integer, got '20'"),
    ([*FROM_PNG, "integer-prompt.png"], "setting 'prompt' must be text, got 7"),
    ([*FROM_PNG, "float-seed.png"], "setting 'seed' must be an integer, got 1.5"),
    ([*FROM_PNG, "list-sampler.png"], "setting 'sampler' must be text, got ['ddim']"),
    ([*FROM_PNG, "bool-steps.png"], "setting 'steps' must be an integer, got True"),
    ([*FROM_PNG, "zero-steps.png"], "steps must be at least 1, got 0"),  # a guard: ranges are checked as --steps's
    ([*FROM_PNG, "text-snr.png"], "sampler option snr must be a number from 0 to 1, got 'abc'"),
    ([*FROM_PNG, "a1111-float-seed.png"], "bad value in the parameters text"),  # a guard: A1111's text, typed
    ([*FROM_PNG, "huge-itxt.png"], "Decompressed data too large"),
    ([*FROM_PNG, "../big/huge-text.png"], "has a text chunk of 73,400,320 bytes; the limit is 1,048,576"),
    ([*FROM_PNG, "../big/many-texts.png"], "Too much memory used in text chunks"),
    ([*FROM_PNG, "bomb-30000.png"], "bomb-30000.png is too large to open safely"),
    (
        ["txt2img", "x", *MODEL, "--sampler", "pc", "--sampler-option", "snr=abc"],
        "sampler option snr must be a number from 0 to 1, got 'abc'",
    ),
    (
        ["txt2img", "x", *MODEL, "--sampler", "pc", "--sampler-option", "corrector_steps=100000000"],
        "sampler option corrector_steps must be an integer from 0 to 20, got 100000000",
    ),
    (
        ["txt2img", "x", *MODEL, "--sampler", "pc", "--sampler-option", "corrector_steps=1.5"],
        "sampler option corrector_steps must be an integer from 0 to 20, got 1.5",
    ),
]
# Inputs that were tracebacks and are now simply used.
GOOD_CASES = [[*FROM_PNG, "null-negative.png"]]


def raw_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunks(path: Path, texts: list[bytes], side: int = 16) -> None:
    """An RGB side x side PNG with the given tEXt chunk bodies before its pixels, written chunk by chunk."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + b"\x80" * (3 * side) for _ in range(side)))
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + raw_chunk(b"IHDR", header))
        for text in texts:
            f.write(raw_chunk(b"tEXt", text))
        f.write(raw_chunk(b"IDAT", pixels) + raw_chunk(b"IEND", b""))


def png_with_text(path: Path, **texts: str) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 16), "gray").save(path, pnginfo=info)


def settings_png(path: Path, **changes) -> None:
    png_with_text(path, ldm=json.dumps({**GOOD, **changes}))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("reliability-inputs")
    # every case hashes the files of ws before and after it: the 70 MB files live beside it, in big
    root, big = base / "ws", base / "big"
    root.mkdir()
    big.mkdir()
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), root / "tiny.safetensors")
    (root / "bad-utf8.txt").write_bytes(b"a red apple\n\xff\xfe a blue one\n")
    (root / "long-line.txt").write_text("a red apple\n" + "c" * 9000 + "\n")
    png_with_text(root / "long-prompt-infotext.png", parameters="y" * 200_000 + "\nSteps: 2, Seed: 1, Size: 16x16")
    png_with_text(root / "long-line-infotext.png", parameters="a red apple\n" + "y" * 200_000)
    png_with_text(root / "long-infotext.png", parameters="x\n" + "y" * 300_000)
    settings_png(root / "string-seed.png", seed="42")
    settings_png(root / "string-steps.png", steps="20")
    settings_png(root / "integer-prompt.png", prompt=7)
    settings_png(root / "null-negative.png", negative_prompt=None)
    settings_png(root / "float-seed.png", seed=1.5)
    settings_png(root / "list-sampler.png", sampler=["ddim"])
    settings_png(root / "bool-steps.png", steps=True)
    settings_png(root / "zero-steps.png", steps=0)
    settings_png(root / "text-snr.png", sampler="pc", snr="abc")
    png_with_text(root / "a1111-float-seed.png", parameters="x\nSteps: 2, Sampler: DDIM, Seed: 1.5, Size: 16x16")
    itxt = PngImagePlugin.PngInfo()
    itxt.add_itxt("parameters", "a" * 2_000_000, zip=True)  # 2 KB compressed, 2 MB decompressed
    Image.new("RGB", (16, 16)).save(root / "huge-itxt.png", pnginfo=itxt)
    png_with_chunks(big / "huge-text.png", [b"parameters\0" + b"z" * (70 * 2**20 - len(b"parameters\0"))])
    png_with_chunks(big / "many-texts.png", [b"k%d\0" % i + b"z" * 1_000_000 for i in range(70)])
    bomb = root / "bomb-30000.png"
    png_with_chunks(bomb, [], side=16)
    data = bytearray(bomb.read_bytes())  # the same file with a header saying 30000 x 30000 (900 MP)
    data[8:33] = raw_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    bomb.write_bytes(bytes(data))
    (root / "out" / "samples").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def results(workspace) -> list[dict]:
    # 30 s each: every case is refused before any model is loaded; a hang shows as "timeout"
    cases = [{"argv": argv, "cwd": str(workspace), "watch": str(workspace), "timeout": 30} for argv, _ in CASES]
    cases += [{"argv": argv, "cwd": str(workspace), "watch": None, "timeout": 120} for argv in GOOD_CASES]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=900, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("number", range(len(CASES)), ids=[" ".join(argv[:1] + argv[-2:])[:50] for argv, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(results, number):
    message = CASES[number][1]
    result = results[number]
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["rc"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]
    assert result["changed"] == []


def test_a_null_negative_prompt_in_the_settings_is_no_negative_prompt(workspace, results):
    result = results[len(CASES)]
    assert result["rc"] == 0 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    made = settings_from_png(workspace / "out" / "samples" / "00000.png")
    assert made["negative_prompt"] == "" and made["prompt"] == "x" and made["seed"] == 1


def test_the_workspace_holds_what_the_cases_need(workspace):
    # Guards the cases above: each file is bad in the way meant, for Pillow itself.
    with pytest.raises(ValueError, match="Decompressed data too large"):
        Image.open(workspace / "huge-itxt.png")
    with pytest.raises(ValueError, match="Too much memory used in text chunks"):
        Image.open(workspace.parent / "big" / "many-texts.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(workspace / "bomb-30000.png")
    with pytest.raises(ValueError, match="Too much memory used in text chunks"):  # read whole, then refused
        Image.open(workspace.parent / "big" / "huge-text.png")
    assert json.loads(Image.open(workspace / "string-seed.png").info["ldm"])["seed"] == "42"


def test_from_png_reads_no_pixels(tmp_path, monkeypatch):
    png_with_text(tmp_path / "image.png", ldm=json.dumps(GOOD))

    def refuse(*_):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)
    assert settings_from_png(tmp_path / "image.png")["seed"] == 1


def test_every_sampler_option_has_a_type_and_range():
    own = {key for name in SAMPLERS for key in sampler_parameters(name)}
    assert own == set(SAMPLER_OPTIONS)
    for key, spec in SAMPLER_OPTIONS.items():
        assert spec.low is not None, key
    assert SAMPLER_OPTIONS["corrector_steps"].high is not None and SAMPLER_OPTIONS["snr"].high is not None
    with pytest.raises(LdmError, match="corrector_steps must be an integer"):
        SamplingOptions(sampler="pc", extra={"corrector_steps": True}).validate()
    SamplingOptions(sampler="pc", extra={"corrector_steps": 20, "snr": 1}).validate()
    with pytest.raises(LdmError, match="snr must be a number from 0 to 1, got 1.5"):
        SamplingOptions(sampler="pc", extra={"snr": 1.5}).validate()


# ---- a fuzz of the parsers: every input answered (a result or an LdmError) within 5 seconds ----

PER_INPUT_SECONDS = 5.0


def fuzz_inputs(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    unit = [
        "(",
        ")",
        "[",
        "]",
        ":",
        ",",
        "\n",
        " ",
        "\\",
        '"',
        "Steps: ",
        "Negative prompt: ",
        "BREAK",
        "a",
        "(a:1.2)",
        "é",
        "\u200b",
        "🍎",
        "\U0010ffff",
        "1",
        "x",
        "-",
        "/",
        "Size: 8x8, ",
    ]
    inputs = [
        "(" * 1_000_000,
        ")" * 1_000_000,
        "[" * 500_000 + "]" * 500_000,
        ":" * 1_000_000,
        "," * 1_000_000,
        "\n" * 1_000_000,
        " " * 1_000_000 + "x",
        "Steps: " * 140_000,
        "Steps: 1, " * 100_000,
        "a" * 1_000_000,
        "(a" * 500_000,
        "(a:1.1)" * 140_000,
        'a: "' * 250_000,
        'a:"\\' * 250_000,
        "a b/c-d " * 125_000,
        ("a" * 63 + ":") * 15_000,
        "🍎" * 1_000_000,
        "x\nNegative prompt: " * 60_000,
    ]
    for length in (10, 1000, 100_000, 1_000_000):
        inputs.append("".join(rng.choice(unit) for _ in range(max(1, length // 4))))
        inputs.append("".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(length)))
    return inputs


def timed(function, *args) -> float:
    start = time.perf_counter()
    try:
        function(*args)
    except LdmError:
        pass
    return time.perf_counter() - start


def parse_prompt(text: str) -> None:
    """What a prompt goes through before the encoder: the length check, emphasis, and the cut warning's search."""
    check_prompt_length(text)
    parse_emphasis(text)
    _cut_part(text, 75)


def test_the_parsers_answer_every_input_within_seconds(tmp_path):
    start = time.perf_counter()
    slowest = {}
    for number, text in enumerate(fuzz_inputs()):
        prompt_file = tmp_path / "prompts.txt"
        prompt_file.write_text(text, encoding="utf-8", errors="surrogatepass")
        image = tmp_path / "image.png"
        png_with_text(image, parameters=text, ldm=json.dumps({**GOOD, "prompt": text}))
        for name, function, arg in (
            ("infotext", parse_infotext, text),
            ("settings", settings_from_infotext, text),
            ("prompt", parse_prompt, text),
            ("prompt at the limit", parse_prompt, text[:MAX_PROMPT_CHARS]),
            ("prompt file", read_prompt_file, prompt_file),
            ("png", settings_from_png, image),
            ("sampler option", parse_sampler_options, [f"snr={text[:100_000]}"]),
        ):
            seconds = timed(function, arg)
            slowest[name] = max(slowest.get(name, 0.0), seconds)
            assert seconds < PER_INPUT_SECONDS, (name, number, text[:40], seconds)
    assert time.perf_counter() - start < 60, slowest


def test_a_long_prompt_is_refused_at_once():
    with pytest.raises(LdmError, match="limit is 5,000"):
        check_prompt_length("a" * (MAX_PROMPT_CHARS + 1))
    check_prompt_length("a" * MAX_PROMPT_CHARS)


def test_a_prompt_file_over_the_count_is_refused(tmp_path, monkeypatch):
    import ldm.interfaces.cli.common as common

    monkeypatch.setattr(common, "MAX_PROMPTS_PER_FILE", 3)
    (tmp_path / "p.txt").write_text("a\nb\n\nc\nd\n")
    with pytest.raises(LdmError, match="more than 3 prompts"):
        read_prompt_file(tmp_path / "p.txt")
    (tmp_path / "bom.txt").write_bytes("\ufeffa red apple\n".encode("utf-8"))
    assert read_prompt_file(tmp_path / "bom.txt") == ["a red apple"]


# ---- EXIF orientation ----


def sideways(tmp_path: Path, name: str = "phone.png") -> tuple[Path, np.ndarray]:
    """A 24x16 image stored as a phone stores an upright 16x24 photo: orientation 6 (turn 90 degrees clockwise)."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / name
    Image.fromarray(stored).save(path, exif=exif)
    upright = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    return path, upright


def test_images_are_read_upright_by_their_exif_orientation(tmp_path):
    path, upright = sideways(tmp_path)
    with Image.open(path) as raw:
        assert raw.size == (24, 16) and raw.getexif()[ORIENTATION] == 6
    assert upright.shape == (24, 16, 3)
    assert np.array_equal(np.asarray(load_image(path)), upright)  # img2img, inpaint image and mask, upscale
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), upright)  # the app's uploads
    assert np.array_equal(np.asarray(load_image(path, "L")), np.asarray(Image.fromarray(upright).convert("L")))


def test_img2img_uses_the_upright_image(workspace, tmp_path):
    path, _ = sideways(workspace, "phone-for-img2img.png")
    out = tmp_path / "out"
    argv = ["img2img", str(path), "x", *MODEL[:-1], str(out), "--strength", "0.5"]
    result = subprocess.run(
        [sys.executable, "-m", "ldm.interfaces.cli.main", *argv],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(out / "samples" / "00000.png") as made:
        assert made.size == (16, 24)  # upright; the stored pixels are 24 wide and 16 high
