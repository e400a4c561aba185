"""The tiny example of configs/train/README.md, run as written (fewer steps): each command's files feed the next."""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from ldm.core.defaults import shipped_path
from ldm.interfaces.cli.main import main as cli_main

README = shipped_path("configs/train/README.md")
FAST = [
    "trainer.max_steps=4",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logging.tensorboard=false",
    "logging.sample_every_n_steps=0",
    "trainer.val_check_interval=4",
]


def tiny_example_commands(readme: Path = README) -> list[list[str]]:
    """The argument lists of the `ldm ...` lines of the README's "Tiny examples" block (continuations joined)."""
    text = readme.read_text()
    block = text.split("## Tiny examples", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "ldm", line
            commands.append(words[1:])
    return commands


def test_the_documented_tiny_chain_runs_and_feeds_each_step(tmp_path, monkeypatch):
    commands = tiny_example_commands()
    assert [c[0] for c in commands] == ["data", "train", "train", "train", "txt2img"]
    trains = [c for c in commands if c[0] == "train"]
    # the diffusion run starts from the text encoder and autoencoder the two runs before it wrote
    assert "init.text_encoder=runs/tiny-clip/clip.safetensors" in trains[2]
    assert "init.vae=runs/tiny-vae/vae.safetensors" in trains[2]
    monkeypatch.chdir(tmp_path)  # data/ and runs/ are written here, the configs read from the repository
    for argv in commands:
        argv = [str(shipped_path(a)) if a.startswith("configs/") else a for a in argv]
        if argv[0] == "train":
            argv = [a for a in argv if not a.startswith("trainer.max_steps=")] + FAST
        if argv[0] == "txt2img":
            argv += ["--steps", "2", "--outdir", str(tmp_path / "out")]
        assert cli_main(argv) == 0, argv
    for path in ("runs/tiny-clip/clip.safetensors", "runs/tiny-vae/vae.safetensors", "runs/tiny-ldm/model.safetensors"):
        assert (tmp_path / path).is_file(), path
    assert list((tmp_path / "out").rglob("*.png"))
    # the exported model holds the trained text encoder and autoencoder, not random ones
    from ldm.io.checkpoint import load_state_dict

    model = load_state_dict(tmp_path / "runs/tiny-ldm/model.safetensors")
    clip = load_state_dict(tmp_path / "runs/tiny-clip/clip.safetensors")
    vae = load_state_dict(tmp_path / "runs/tiny-vae/vae.safetensors")
    token = "cond_stage_model.model.token_embedding.weight"
    torch.testing.assert_close(model[token], clip["token_embedding.weight"].to(model[token].dtype))
    conv = "first_stage_model.encoder.conv_in.weight"
    torch.testing.assert_close(model[conv], vae["encoder.conv_in.weight"].to(model[conv].dtype))
