"""The main command starts fast (issue 21) and the shortcuts change no result: it imports no model zoo
(open_clip's __init__, timm, transformers, torchvision), Lightning, Streamlit or pandas; the shipped model built
without random initialisation and with open_clip's text tower alone makes the very same image."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.core.config import instantiate, load_config
from ldm.core.defaults import default_checkpoint_path, default_config_path
from ldm.formats.load import load_model
from ldm.sampling.options import SamplingOptions
from ldm.tasks.txt2img import txt2img

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "lightning",
    "pytorch_lightning",
    "streamlit",
    "pandas",
    "timm",
    "transformers",
    "torchvision",
    "open_clip.model",
    "open_clip.factory",
    "torch._dynamo",
    "sympy",
    "ftfy",
    "wcwidth",
)

CHILD = """
import sys, tempfile
from ldm.interfaces.cli import main as cli
code = cli.main(["txt2img", "red heart", "--steps", "2", "--no-progress", "--no-grid", "--outdir", tempfile.mkdtemp()])
from ldm.models import open_clip_parts
print("deferred" if open_clip_parts.is_deferred() else "ran")
print(" ".join(m for m in sys.modules if m.split(".")[0] in {h.split(".")[0] for h in %r} and m in %r))
print(" ".join(sorted(m for m in sys.modules if m in set(cli.COMMANDS.values()))))
sys.exit(code)
""" % (HEAVY, HEAVY)  # noqa: UP031


def test_the_main_command_imports_no_model_zoo():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    deferred, loaded, commands = out.stdout.splitlines()[-3:]
    assert deferred == "deferred"  # open_clip's __init__ never ran
    assert loaded == "", f"the main command imported {loaded}"
    # no other command's module (option groups such as cli.common, cli.sdxl_args are no commands)
    assert commands == "ldm.interfaces.cli.txt2img"


def _image(model) -> torch.Tensor:
    import numpy as np

    images = txt2img(model, ["red heart"], "", 64, 64, 7, SamplingOptions(steps=2), progress=False)
    return torch.from_numpy(np.stack([np.asarray(im) for im in images]))


def test_skipping_init_changes_no_image():
    """load_model (no random init, open_clip's text tower alone) against a build with both towers of open_clip's
    CLIP, randomly initialised as before, then strictly loaded: the same image, bit for bit."""
    from ldm.models import open_clip_parts

    fast = load_model(device="cpu", variant="full")
    cfg = load_config(default_config_path())["model"]
    arch = cfg["params"]["cond_stage_config"]["params"]["arch"]
    reference = instantiate(cfg)
    full = open_clip_parts.full().model.CLIP(**arch)
    del full.visual
    reference.text_encoder.model = full.eval()
    reference.text_encoder.freeze()
    reference.load_weights(default_checkpoint_path())
    reference.eval()
    assert type(fast.text_encoder.model).__name__ == "OpenClipTextHalf"
    assert list(fast.state_dict()) == list(reference.state_dict())
    for (name, a), b in zip(fast.named_buffers(), reference.buffers()):  # not saved: made by the constructors
        assert torch.equal(a, b), name
    assert torch.equal(_image(fast), _image(reference))


def test_skipping_init_changes_no_image_of_a_derived_model():
    """The shipped student (a LoRA and a new embedding over the full model) is built without random init too, the
    text tower alone: the same image as a randomly initialised build given the same files."""
    from ldm.formats.derived import load_derived_weights
    from ldm.formats.variants import student_files

    config, weights = student_files()
    fast = load_model(device="cpu")
    assert fast.identity["model_file"] == "student.safetensors"
    assert type(fast.text_encoder.model).__name__ == "OpenClipTextHalf"
    reference = instantiate(load_config(config)["model"])
    load_derived_weights(reference, weights, default_checkpoint_path())
    reference.eval()
    assert torch.equal(_image(fast), _image(reference))


def test_open_clip_parts_are_open_clips_own():
    """The parts are the real package's modules: using the rest of open_clip later finds the same classes."""
    from ldm.models import open_clip_parts

    parts = open_clip_parts.transformer()
    assert isinstance(sys.modules["open_clip"].__version__, str)  # the first use of the package runs its __init__
    open_clip = open_clip_parts.full()
    assert not open_clip_parts.is_deferred()
    assert open_clip.transformer is parts and open_clip.model.TextTransformer is parts.TextTransformer
    assert open_clip.tokenize is open_clip_parts.tokenizer().tokenize
    from torchvision.ops.misc import FrozenBatchNorm2d

    assert open_clip.utils.FrozenBatchNorm2d is FrozenBatchNorm2d


def test_the_finite_check_by_sum_is_exact():
    from ldm.io.checkpoint import all_finite

    big = torch.full((4,), 3e38)  # finite values whose sum overflows: the elementwise test decides
    assert all_finite(big) and all_finite(torch.randn(100)) and all_finite(torch.full((70000,), 1.0).half())
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            t = torch.zeros(10, dtype=dtype)
            t[3] = bad
            assert not all_finite(t), (bad, dtype)
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))


# --- the CLI registers only the command it runs (ldm.interfaces.cli.main.command_module) ------------------------------------------  # noqa: E501


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_command_map_names_what_each_module_registers():
    from ldm.interfaces.cli import main as cli

    full = _subparsers(cli.build_parser()).choices
    assert list(full) == list(cli.COMMANDS)  # every command, in the order of COMMAND_MODULES
    assert set(cli.COMMANDS.values()) == set(cli.COMMAND_MODULES)
    for name, module in cli.COMMANDS.items():
        alone = _subparsers(cli.build_parser([name, "x"])).choices
        assert name in alone and all(cli.COMMANDS[other] == module for other in alone), (name, list(alone))
        assert alone[name].format_help() == full[name].format_help()  # the same options, defaults and help


@pytest.mark.parametrize(
    "argv, module",
    [
        (["txt2img", "red heart"], "ldm.interfaces.cli.txt2img"),
        (["-v", "outpaint"], "ldm.interfaces.cli.inpaint"),
        (["--verbose", "-v", "eval", "--help"], "ldm.interfaces.cli.evaluate"),
        ([], None),
        (["-v"], None),
        (["--help"], None),
        (["-h", "txt2img"], None),
        (["nosuch", "txt2img"], None),
        (["--", "txt2img"], None),
        (["-x", "txt2img"], None),
    ],
)
def test_only_a_command_line_naming_a_command_skips_the_others(argv, module):
    from ldm.interfaces.cli.main import command_module

    assert command_module(argv) == module


def _run_cli(argv: list[str], capsys, parse=None) -> tuple[int, str, str]:
    from ldm.interfaces.cli import main as cli

    with pytest.raises(SystemExit) as stop:
        (parse or cli.main)(argv)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        [],
        ["-v"],
        ["-v", "txt2img", "--help"],
        ["outpaint", "-h"],
        ["txt2imgg"],
        ["-h", "txt2img"],
        ["txt2img", "--no-such-option"],
        ["txt2img", "--steps", "many"],
    ],
)
def test_help_and_errors_are_those_of_the_whole_parser(argv, capsys):
    """What `ldm` prints and its exit status, for help and for command lines argparse refuses, are those of the
    parser with every command (as before the CLI imported only the named command)."""
    from ldm.interfaces.cli import main as cli

    ours = _run_cli(argv, capsys)
    assert ours == _run_cli(argv, capsys, cli.build_parser().parse_args)
    code, out, err = ours
    if argv in (["--help"], ["-h", "txt2img"]):
        assert code == 0 and all(name in out for name in cli.COMMANDS)
    if argv == ["txt2imgg"]:
        error = [line for line in err.splitlines() if "error" in line]
        assert code == 2 and len(error) == 1 and "invalid choice: 'txt2imgg'" in error[0]
        assert all(f"'{name}'" in error[0] for name in cli.COMMANDS)  # the choices listed


# --- the model hash, computed on a thread while the model loads -------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2047, 1 << 20, (3 << 20) + 5])
def test_the_file_hash_is_hashlibs_over_the_bytes(tmp_path, size):
    import hashlib

    from ldm.io.checkpoint import file_sha256, sha256_in_background

    path = tmp_path / "weights.bin"
    data = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size), dtype=torch.uint8)
    path.write_bytes(data.numpy().tobytes())
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected == sha256_in_background(path)()


def test_a_hash_that_failed_raises_when_asked_for(tmp_path):
    from ldm.io.checkpoint import sha256_in_background

    wait = sha256_in_background(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        wait()


def test_the_shipped_models_identity_is_its_files_hash():
    import hashlib

    model = load_model(device="cpu", variant="full")
    assert model.identity["model_sha256"] == hashlib.sha256(default_checkpoint_path().read_bytes()).hexdigest()
    assert model.identity["model_file"] == default_checkpoint_path().name
    from ldm.formats.variants import student_files

    student = load_model(device="cpu")  # the default: the shipped student, named by its own file
    weights = student_files()[1]
    assert student.identity["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (student.identity["model_file"], student.identity["base_file"]) == (
        weights.name,
        default_checkpoint_path().name,
    )


# --- open_clip's tokenizer without ftfy for text ftfy leaves alone (ldm.models.open_clip_parts._fix_text) ---------------  # noqa: E501


def _texts() -> list[str]:
    """Every printable ASCII character alone and in pairs, random printable ASCII, and texts ftfy does change."""
    import random

    printable = [chr(c) for c in range(0x20, 0x7F)]
    rng = random.Random(21)
    texts = printable + [a + b for a in printable for b in printable]
    texts += ["".join(rng.choice(printable) for _ in range(rng.randint(0, 80))) for _ in range(3000)]
    texts += [
        "red heart",
        "a photo of a cat, 4k",
        "tom &amp; jerry",
        "fish &amp chips",
        "AT&T",
        "&lt;b&gt;",
        "line\r\nbreak",
        "tab\there",
        "bell\x07",
        "\x1b[31mred\x1b[0m",
        "caf\u00e9",
        "cafe\u0301",
        "\u201cquoted\u201d",
        "\ufb01sh",
        "\uff2c\uff2f\uff35\uff24",
        "s\u00c3\u00b3",
        "\u00c3\u00a9t\u00c3\u00a9",
        "emoji \u2764\ufe0f",
        "\x85next",
        "nul\x00",
        "del\x7f",
        "",
        " ",
        "\n",
        "<b>&amp;</b>",
    ]
    return texts


def test_the_ftfy_stand_in_gives_ftfys_own_result():
    import ftfy

    from ldm.models.open_clip_parts import _FTFY_LEAVES_AS_IS, _fix_text

    texts = _texts()
    assert [_fix_text(t) for t in texts] == [ftfy.fix_text(t) for t in texts]
    assert not _FTFY_LEAVES_AS_IS.fullmatch("AT&T") and not _FTFY_LEAVES_AS_IS.fullmatch("tab\there")
    assert _fix_text("tom &amp; jerry") == "tom & jerry"  # such text goes to the real ftfy
    assert _fix_text("caf\u00e9", normalization="NFD") == ftfy.fix_text("caf\u00e9", normalization="NFD")


TOKENS_CHILD = """
import json, sys
from ldm.models import open_clip_parts
bpe = open_clip_parts.tokenizer()._tokenizer
texts = json.load(sys.stdin)
ascii_ones = [t for t in texts if open_clip_parts._FTFY_LEAVES_AS_IS.fullmatch(t)]
first = [bpe.encode(t) for t in ascii_ones]
ftfy_unloaded = "ftfy" not in sys.modules
print(json.dumps({"ftfy_unloaded": ftfy_unloaded, "ascii": first, "all": [bpe.encode(t) for t in texts]}))
"""


def test_the_tokenizer_gives_open_clips_tokens_and_imports_ftfy_only_when_needed():
    """In a fresh process (open_clip's parts only): printable ASCII prompts are tokenized without importing ftfy,
    and every text gets the tokens of open_clip's own tokenizer with the real ftfy (this process, whole open_clip)."""
    import json

    from ldm.models import open_clip_parts

    texts = _texts()[::7] + _texts()[-30:]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", TOKENS_CHILD],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    child = json.loads(out.stdout.splitlines()[-1])
    assert child["ftfy_unloaded"]
    reference = open_clip_parts.full().tokenizer.SimpleTokenizer()  # open_clip's, cleaning with the real ftfy
    import ftfy

    assert open_clip_parts.full().tokenizer.ftfy is ftfy  # the whole package puts the real module back
    assert child["all"] == [reference.encode(t) for t in texts]
    ascii_ones = [t for t in texts if open_clip_parts._FTFY_LEAVES_AS_IS.fullmatch(t)]
    assert len(ascii_ones) > 100 and child["ascii"] == [reference.encode(t) for t in ascii_ones]


THP_CHILD = """
import os, sys, numpy as np
from PIL import Image
from ldm.interfaces.cli import main as cli
code = cli.main(["txt2img", "red heart", "--steps", "2", "--no-progress", "--no-grid", "--outdir", sys.argv[1]])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"))
sys.exit(code)
"""


def test_huge_pages_change_no_image(tmp_path):
    """`ldm` asks PyTorch for transparent huge pages (ldm.interfaces.cli.main.use_huge_pages) unless the user chose: same PNG."""  # noqa: E501
    from PIL import Image

    outputs = {}
    for setting in (None, "0"):
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **({"THP_MEM_ALLOC_ENABLE": setting} if setting else {}))
        out = subprocess.run(
            [sys.executable, "-c", THP_CHILD, str(tmp_path / str(setting))],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == (setting or "1")  # the user's own setting wins
        (png,) = (tmp_path / str(setting)).rglob("*.png")
        outputs[setting] = np.asarray(Image.open(png))
    assert np.array_equal(outputs[None], outputs["0"])


def test_skipped_init_reaches_initialisers_bound_by_name():
    """nn.MultiheadAttention (open_clip's text blocks) calls the xavier_uniform_ its module imported by name: inside
    skipped_init it draws no random numbers either, and afterwards every binding is torch's own again."""
    import torch.nn.modules.activation as activation

    from ldm.core.skip_init import skipped_init

    real = torch.nn.init.xavier_uniform_
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with skipped_init():
        torch.nn.MultiheadAttention(16, 2)
        torch.nn.Linear(16, 16)
    assert torch.equal(torch.get_rng_state(), before)
    assert activation.xavier_uniform_ is real is torch.nn.init.xavier_uniform_
    torch.nn.MultiheadAttention(16, 2)
    assert not torch.equal(torch.get_rng_state(), before)  # outside, layers initialise as usual
