"""Textual-inversion embeddings for SDXL (issue 39): one file with "clip_l" and "clip_g" vectors, the layout A1111,
kohya and diffusers use, the trigger word replaced in both towers; the tiny SDXL's widths come from the model."""

from __future__ import annotations

import open_clip
import pytest
import torch
from test_sdxl import BIG_G, CONTEXT, tiny_encoders_node, tiny_unet_params

from ldm.adapters.embeddings import EmbeddingError, load_embedding, read_embedding
from ldm.core.config import instantiate, load_config
from ldm.formats.detect import sd_config_path
from ldm.io.checkpoint import save_state_dict


def tiny_sdxl_node(refiner: bool = False) -> dict:
    node = load_config(sd_config_path("sd_xl_refiner.yaml" if refiner else "sd_xl_base.yaml"))["model"]
    params = node["params"]
    params["unet_config"]["params"] = tiny_unet_params(5 if refiner else 6)
    params["unet_config"]["params"]["context_dim"] = BIG_G if refiner else CONTEXT
    params["cond_stage_config"] = tiny_encoders_node(refiner)
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    params["image_size"] = 8
    return node


def tiny_sdxl(refiner: bool = False):
    torch.manual_seed(0)
    return instantiate(tiny_sdxl_node(refiner)).eval()


@pytest.fixture
def model():
    return tiny_sdxl()


def word_vector(tower, word: str) -> torch.Tensor:
    return tower.model.token_embedding.weight[open_clip.tokenizer._tokenizer.encode(word)[0]].detach().clone()


def test_the_trigger_word_is_replaced_in_both_towers(model, tmp_path):
    clip_l, big_g = model.text_encoder.embedders
    widths = [tower.model.token_embedding.weight.shape[1] for tower in (clip_l, big_g)]
    assert widths[0] != widths[1]  # the file's two keys cannot be swapped unnoticed
    plain, plain_pooled = model.text_encoder.encode(["a photo of cat dog"])
    # Each tower's vectors are its own word "cat": the prompt with the trigger is then the prompt with "cat".
    save_state_dict({"clip_l": word_vector(clip_l, "cat")[None], "clip_g": word_vector(big_g, "cat")[None]},
                    tmp_path / "mystyle.safetensors")  # fmt: skip
    assert load_embedding(model, tmp_path / "mystyle.safetensors") == "mystyle"
    context, pooled = model.text_encoder.encode(["a photo of mystyle dog"])
    torch.testing.assert_close(context, plain)
    torch.testing.assert_close(pooled, plain_pooled)
    assert model.identity["embeddings"][0]["vectors"] == 1
    # Other vectors, for bigG only: CLIP ViT-L's states stay those of "cat", bigG's move.
    save_state_dict({"clip_l": word_vector(clip_l, "cat")[None], "clip_g": torch.randn(1, widths[1])},
                    tmp_path / "other.safetensors")  # fmt: skip
    load_embedding(model, tmp_path / "other.safetensors")
    context, _ = model.text_encoder.encode(["a photo of other dog"])
    torch.testing.assert_close(context[..., : widths[0]], plain[..., : widths[0]])
    assert not torch.allclose(context[..., widths[0] :], plain[..., widths[0] :])
    # Two vectors: the trigger's one token becomes two positions in both towers.
    save_state_dict({"clip_l": torch.randn(2, widths[0]), "clip_g": torch.randn(2, widths[1])},
                    tmp_path / "two.safetensors")  # fmt: skip
    load_embedding(model, tmp_path / "two.safetensors")
    for tower in (clip_l, big_g):
        assert (tower.tokenize(["a two dog"])[0] < 0).sum() == 2


def test_the_refiner_reads_clip_g(tmp_path):
    refiner = tiny_sdxl(refiner=True)
    (big_g,) = refiner.text_encoder.embedders
    plain, _ = refiner.text_encoder.encode(["a photo of cat"])
    save_state_dict({"clip_l": torch.randn(1, 32), "clip_g": word_vector(big_g, "cat")[None]},
                    tmp_path / "style.safetensors")  # fmt: skip
    load_embedding(refiner, tmp_path / "style.safetensors")
    torch.testing.assert_close(refiner.text_encoder.encode(["a photo of style"])[0], plain)


def test_wrong_files_are_one_line_refusals(model, tmp_path):
    clip_l, big_g = model.text_encoder.embedders
    l_width, g_width = clip_l.model.token_embedding.weight.shape[1], big_g.model.token_embedding.weight.shape[1]
    save_state_dict({"emb_params": torch.zeros(1, l_width)}, tmp_path / "sd1.safetensors")
    with pytest.raises(
        EmbeddingError, match=r"an SD 1.x / 2.x embedding\); an SDXL model needs .* clip_l and clip_g"
    ) as e:
        load_embedding(model, tmp_path / "sd1.safetensors")
    assert "\n" not in str(e.value)
    save_state_dict(
        {"clip_l": torch.zeros(1, l_width), "clip_g": torch.zeros(1, g_width + 1)}, tmp_path / "w.safetensors"
    )
    with pytest.raises(EmbeddingError, match=f"clip_g holds vectors of width {g_width + 1}; .* takes {g_width}"):
        load_embedding(model, tmp_path / "w.safetensors")
    save_state_dict({"clip_l": torch.zeros(2, l_width), "clip_g": torch.zeros(1, g_width)}, tmp_path / "n.safetensors")
    with pytest.raises(EmbeddingError, match="clip_l holds 2 vectors and clip_g 1"):
        load_embedding(model, tmp_path / "n.safetensors")
    for tower in (clip_l, big_g):  # nothing half-loaded by the refused files
        assert not tower.__dict__.get("embeddings")
    with pytest.raises(EmbeddingError, match="is an SDXL embedding"):
        read_embedding(tmp_path / "w.safetensors")  # what an SD 1.x / 2.x model reads it with


def test_the_command_takes_an_sdxl_embedding_long_prompts_and_clip_skip_and_refuses_an_sd_one(model, tmp_path):
    """`ldm txt2img --ckpt tiny-sdxl.safetensors --embedding ... --long-prompts --emphasis --clip-skip 1` makes an
    image that records its settings; an SD 1.x embedding on the same model is one line and exit status 2."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    node = tiny_sdxl_node()
    save_state_dict(model.original_state_dict(), tmp_path / "tiny-sdxl.safetensors",
                    metadata={"ldm_config": json.dumps({"model": node})})  # fmt: skip
    clip_l, big_g = model.text_encoder.embedders
    save_state_dict({"clip_l": word_vector(clip_l, "cat")[None], "clip_g": word_vector(big_g, "cat")[None]},
                    tmp_path / "mystyle.safetensors")  # fmt: skip
    save_state_dict({"emb_params": torch.zeros(1, 32)}, tmp_path / "sd1.safetensors")
    common = ["--ckpt", "tiny-sdxl.safetensors", "--H", "16", "--W", "16", "--steps", "1", "--no-progress"]
    long = "a (mystyle:1.2) " + " ".join(["dog"] * 90)
    cases = [
        ["txt2img", long, *common, "--embedding", "mystyle.safetensors", "--long-prompts", "--emphasis",
         "--clip-skip", "1", "--outdir", "out"],
        ["txt2img", "a cat", *common, "--embedding", "sd1.safetensors", "--outdir", "bad"],
    ]  # fmt: skip
    runner = Path(__file__).parents[1] / "cli_runner.py"
    r = subprocess.run(
        [sys.executable, str(runner)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        input=json.dumps([{"argv": argv, "cwd": str(tmp_path), "timeout": 120} for argv in cases]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    good, bad = json.loads(r.stdout)
    assert good["rc"] == 0, good["stderr"][-3000:]
    parameters = Image.open(tmp_path / "out" / "samples" / "00000.png").info["parameters"]
    assert "Clip skip: 1" in parameters and "mystyle" in parameters
    assert bad["rc"] == 2 and "an SD 1.x / 2.x embedding" in bad["stderr"] and "Traceback" not in bad["stderr"]
    errors = [line for line in bad["stderr"].splitlines() if "error" in line]  # the others are info lines
    assert len(errors) == 1 and errors[0].startswith("ldm txt2img: error: sd1.safetensors holds one text encoder")
