"""SDXL (issue 39), first steps: its architecture in our U-Net and text encoders, the vector conditioning, the
unconditional side and the original single-file layout.

Parity, with the same random weights, against diffusers (UNet2DConditionModel with addition_embed_type
"text_time", StableDiffusionXLPipeline.encode_prompt) and transformers (CLIPTextModel,
CLIPTextModelWithProjection) at reduced widths; the full-size layout against the manifests of the original files
(tests/sd-format/sdxl-*.json) on the meta device; the facts read from generative-models (sgm) with values
computed by hand here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ldm.core.config import instantiate, load_config
from ldm.formats.detect import detect, sd_config_path
from ldm.io.checkpoint import from_original_keys, load_into
from ldm.io.diffusers_keys import from_diffusers
from ldm.io.sdxl_keys import sdxl_unet_names
from ldm.models.sdxl_conditioning import MicroConditions, micro_embedding, sdxl_conditions, vector
from ldm.models.sdxl_text import BASE_MICRO, REFINER_MICRO
from ldm.models.unet import UNetModel

TOLERANCE = 1e-4  # relative to the largest value
SD_FORMAT = Path(__file__).parents[1] / "sd-format"
POOLED = 24  # the tiny bigG's projection width (1280 in SDXL)
CLIP_L, BIG_G = 32, 48  # the tiny towers' widths (768 and 1280)
CONTEXT = CLIP_L + BIG_G
TINY_BIG_G = {
    "embed_dim": POOLED,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": BIG_G, "heads": 4, "layers": 3},
}
PROMPTS = ["a photo of a cat", "Hello,   WORLD 123, don't stop"]


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def tiny_unet_params(micro: int = 6) -> dict:
    """SDXL base's U-Net layout at reduced widths: no attention at the top level, depths 2 and 3 below."""
    return {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "attention_resolutions": [4, 2],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 2],
        "num_head_channels": 16,
        "use_linear_in_transformer": True,
        "transformer_depth": [1, 2, 3],
        "context_dim": CONTEXT,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": POOLED + micro * 256,
    }


def tiny_encoders_node(refiner: bool = False) -> dict:
    clip_l = {
        "target": "ldm.models.text_encoder.FrozenCLIPEmbedder",
        "params": {"width": CLIP_L, "layers": 3, "heads": 2, "layer": "penultimate", "activation": "quick_gelu"},
    }
    big_g = {
        "target": "ldm.models.text_encoder.FrozenOpenCLIPEmbedder",
        "params": {"arch": TINY_BIG_G, "layer": "penultimate"},
    }
    return {
        "target": "ldm.models.sdxl_text.SDXLTextEncoders",
        "params": {
            "embedders": [big_g] if refiner else [clip_l, big_g],
            "micro_conditions": list(REFINER_MICRO if refiner else BASE_MICRO),
            "zero_empty_negative": not refiner,
        },
    }


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight moved off its initialisation (zero output layers, unit norms would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return module.eval()


# ---- facts read from sgm, checked with values computed by hand ------------------------------------------------


def test_each_number_embeds_cos_then_sin_over_128_frequencies():
    """sgm's ConcatTimestepEmbedderND(outdim=256) embeds each number with timestep_embedding: [cos(v f) | sin(v f)],
    f_i = exp(-ln(10000) i / 128); a pair (height, width) becomes the two embeddings side by side."""
    out = micro_embedding(torch.tensor([[1024.0, 768.0]]))
    assert out.shape == (1, 512)
    for block, v in ((0, 1024.0), (1, 768.0)):
        row = out[0, 256 * block : 256 * (block + 1)]
        for i in (0, 1, 5, 127):
            f = 10000.0 ** (-i / 128)
            assert row[i].item() == pytest.approx(math.cos(v * f), abs=2e-4)
            assert row[128 + i].item() == pytest.approx(math.sin(v * f), abs=2e-4)
    zero = micro_embedding(torch.tensor([[0.0]]))[0]
    assert torch.equal(zero[:128], torch.ones(128)) and torch.equal(zero[128:], torch.zeros(128))


def test_the_vector_widths_are_sgms():
    """Base: pooled 1280 + 6 x 256 = 2816 (adm_in_channels), in the order original size (h, w), crop (top, left),
    target size (h, w); refiner: 1280 + 5 x 256 = 2560 with the aesthetic score last."""
    pooled = torch.zeros(1, 1280)
    base = vector(pooled, MicroConditions((1024, 960), (896, 832), (16, 8)), BASE_MICRO)
    assert base.shape == (1, 2816)
    for slot, value in enumerate([1024, 960, 16, 8, 896, 832]):
        block = base[0, 1280 + 256 * slot : 1280 + 256 * (slot + 1)]
        assert block[0].item() == pytest.approx(math.cos(value), abs=2e-4)
        assert block[128].item() == pytest.approx(math.sin(value), abs=2e-4)
    refiner = vector(pooled, MicroConditions((1024, 1024), (1024, 1024), (0, 0), 6.0), REFINER_MICRO)
    assert refiner.shape == (1, 2560)
    assert refiner[0, -128].item() == pytest.approx(math.sin(6.0), abs=1e-6)
    for name, width in (("sd_xl_base.yaml", 2816), ("sd_xl_refiner.yaml", 2560)):
        params = load_config(sd_config_path(name))["model"]["params"]
        assert params["unet_config"]["params"]["adm_in_channels"] == width
        assert params["scale_factor"] == 0.13025  # not SD's 0.18215: SDXL files do not carry it


# ---- the U-Net and the vector against diffusers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def unets():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=CONTEXT,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=POOLED + 6 * 256,
    )
    randomise(theirs, 1)
    ours = UNetModel(**tiny_unet_params()).eval()
    names = sdxl_unet_names(list(ours.state_dict()), ours.num_res_blocks)
    ours.load_state_dict(from_diffusers(theirs.state_dict(), names), strict=True)
    return ours, theirs


def test_the_unet_with_its_vector_matches_diffusers(unets):
    ours, theirs = unets
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, CONTEXT, generator=generator)
    pooled = torch.randn(2, POOLED, generator=generator)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 512, 32, 16, 896, 640]])
    t = torch.tensor([999, 421])
    with torch.no_grad():
        expected = theirs(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        y = torch.cat(
            [
                vector(pooled[i : i + 1], MicroConditions(tuple(row[:2]), tuple(row[4:]), tuple(row[2:4])), BASE_MICRO)
                for i, row in enumerate(time_ids.tolist())
            ]
        )
        their_y = torch.cat([pooled, theirs.add_time_proj(time_ids.flatten()).reshape(2, -1)], dim=-1)
        got = ours(x, t, context, y=y)
        other_sizes = ours(x, t, context, y=y.flip(0))
    assert rel_err(y, their_y) <= TOLERANCE  # the vector as diffusers builds it
    assert rel_err(got, expected) <= TOLERANCE
    assert rel_err(other_sizes, expected) > 100 * TOLERANCE  # the vector matters: the comparison can fail


def test_per_level_context_widths_must_agree():
    params = {**tiny_unet_params(), "context_dim": [CONTEXT] * 3}
    assert UNetModel(**params).middle_block[1].transformer_blocks[0].attn2.to_k.in_features == CONTEXT
    from ldm.core.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="one width"):
        UNetModel(**{**params, "context_dim": [CONTEXT, 64, CONTEXT]})


# ---- the two text encoders and the unconditional side against diffusers --------------------------------------


@pytest.fixture(scope="module")
def text_towers(tmp_path_factory, unets):
    """(our base and refiner text encoders, diffusers' SDXL pipeline) with the same random tower weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ldm.formats.diffusers_export import write_tokenizer
    from ldm.io.hf_clip import open_clip_from_hf

    common = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407}
    clip_l = randomise(
        CLIPTextModel(
            CLIPTextConfig(
                hidden_size=CLIP_L,
                intermediate_size=4 * CLIP_L,
                num_attention_heads=2,
                num_hidden_layers=3,
                hidden_act="quick_gelu",
                **common,
            )
        ),
        3,
    )
    big_g = randomise(
        CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=BIG_G,
                intermediate_size=4 * BIG_G,
                num_attention_heads=4,
                num_hidden_layers=3,
                hidden_act="gelu",
                projection_dim=POOLED,
                **common,
            )
        ),
        4,
    )

    def ours_from(model, with_projection: bool) -> dict[str, torch.Tensor]:
        # CLIPTextModel's own state dict has no "text_model." prefix in transformers 5; the projection model's has.
        state = {
            k.removeprefix("text_model."): v for k, v in model.state_dict().items() if k != "text_projection.weight"
        }
        tower, left = open_clip_from_hf(state)
        assert not left
        if with_projection:
            tower["text_projection"] = model.state_dict()["text_projection.weight"].T
        return tower

    encoders = {}
    for refiner in (False, True):
        encoder = instantiate(tiny_encoders_node(refiner))
        towers = [big_g] if refiner else [clip_l, big_g]
        for embedder, tower in zip(encoder.embedders, towers):
            weights = ours_from(tower, tower is big_g)
            if tower is big_g:  # open_clip's CLIP keeps its contrastive temperature, which SDXL files carry too
                weights["logit_scale"] = embedder.model.logit_scale.detach().clone()
            embedder.model.load_state_dict(weights, strict=True)
        encoders["refiner" if refiner else "base"] = encoder
    root = tmp_path_factory.mktemp("sdxl-tokenizers")
    write_tokenizer(root / "tok", "<|endoftext|>", 77)  # CLIP ViT-L pads with the end token
    write_tokenizer(root / "tok2", "!", 77)  # bigG with "!", id 0
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(block_out_channels=(32,), latent_channels=4, norm_num_groups=32),
        text_encoder=clip_l,
        text_encoder_2=big_g,
        tokenizer=CLIPTokenizer.from_pretrained(root / "tok", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(root / "tok2", local_files_only=True),
        unet=unets[1],
        scheduler=DDIMScheduler(),
        add_watermarker=False,
    )
    return encoders, pipe


def their_prompt_embeds(pipe, negative):
    with torch.no_grad():
        return pipe.encode_prompt(
            PROMPTS, device=torch.device("cpu"), do_classifier_free_guidance=True, negative_prompt=negative
        )


def test_context_and_pooled_output_match_diffusers(text_towers):
    """Penultimate states of both towers before their final norm, joined (768 + 1280 = 2048 in SDXL); the pooled
    output from bigG's last layer after ln_final at the end token, projected."""
    encoders, pipe = text_towers
    context, pooled = encoders["base"].encode(PROMPTS)
    their_context, _, their_pooled, _ = their_prompt_embeds(pipe, ["blurry", "ugly, low quality"])
    assert context.shape == (2, 77, CONTEXT) and pooled.shape == (2, POOLED)
    assert rel_err(context[..., :CLIP_L], their_context[..., :CLIP_L]) <= TOLERANCE
    assert rel_err(context[..., CLIP_L:], their_context[..., CLIP_L:]) <= TOLERANCE
    assert rel_err(pooled, their_pooled) <= TOLERANCE
    # What the comparison would catch: the final norm applied to the read-out layer moves it far.
    normed = encoders["base"].embedders[1].encode_tokens(encoders["base"].embedders[1].tokenize(PROMPTS))
    assert rel_err(normed, their_context[..., CLIP_L:]) > 100 * TOLERANCE


def test_padding_differs_between_the_towers(text_towers):
    """CLIP ViT-L pads with the end token (49407), bigG with 0, as diffusers' two tokenizers do."""
    encoders, pipe = text_towers
    clip_l, big_g = encoders["base"].embedders
    assert clip_l.tokenize(["a cat"])[0, -1].item() == 49407 and big_g.tokenize(["a cat"])[0, -1].item() == 0
    assert torch.equal(
        clip_l.tokenize(PROMPTS),
        pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids,
    )
    assert torch.equal(
        big_g.tokenize(PROMPTS),
        pipe.tokenizer_2(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids,
    )


def test_both_sides_of_guidance_match_diffusers(text_towers):
    """Base: an empty negative prompt gives a zero context and pooled output (diffusers' force_zeros_for_empty_prompt
    with no negative prompt), the same sizes on both sides; a given negative prompt is encoded."""
    encoders, pipe = text_towers
    cond, uncond = sdxl_conditions(encoders["base"], PROMPTS, ["", ""], 1024, 768)
    their_context, their_uncond, their_pooled, their_uncond_pooled = their_prompt_embeds(pipe, None)
    assert torch.equal(their_uncond, torch.zeros_like(their_uncond)) and not their_uncond_pooled.any()
    assert torch.equal(uncond["context"], their_uncond) and rel_err(cond["context"], their_context) <= TOLERANCE
    time_ids = pipe._get_add_time_ids((1024, 768), (0, 0), (1024, 768), torch.float32, POOLED)  # h, w, top, left, h, w
    their_sizes = pipe.unet.add_time_proj(time_ids.flatten())
    their_y = torch.cat([their_pooled, their_sizes.reshape(1, -1).expand(2, -1)], dim=-1)
    their_uncond_y = torch.cat([their_uncond_pooled, their_sizes.reshape(1, -1).expand(2, -1)], dim=-1)
    assert rel_err(cond["y"], their_y) <= TOLERANCE and rel_err(uncond["y"], their_uncond_y) <= TOLERANCE
    _, their_negative, _, their_negative_pooled = their_prompt_embeds(pipe, ["blurry", ""])
    _, negative = sdxl_conditions(encoders["base"], PROMPTS, ["blurry", ""], 1024, 768)
    assert rel_err(negative["context"][:1], their_negative[:1]) <= TOLERANCE
    assert rel_err(negative["y"][:1, :POOLED], their_negative_pooled[:1]) <= TOLERANCE
    assert not negative["y"][1, :POOLED].any()  # ours zeroes each empty negative prompt of a batch


def test_refiner_encodes_an_empty_negative_and_scores_6_and_2_5(text_towers):
    encoders, pipe = text_towers
    cond, uncond = sdxl_conditions(encoders["refiner"], PROMPTS, ["", ""], 1024, 1024)
    _, pooled = encoders["refiner"].encode([""])
    assert cond["context"].shape == (2, 77, BIG_G) and cond["y"].shape == (2, POOLED + 5 * 256)
    assert torch.allclose(uncond["y"][:, :POOLED], pooled.expand(2, -1)) and pooled.abs().sum() > 0
    assert torch.allclose(cond["y"][:, -256:], micro_embedding(torch.tensor([[6.0], [6.0]])))
    assert torch.allclose(uncond["y"][:, -256:], micro_embedding(torch.tensor([[2.5], [2.5]])))
    assert torch.equal(cond["y"][:, POOLED:-256], uncond["y"][:, POOLED:-256])  # sizes alike on both sides


# ---- the original single-file layout ------------------------------------------------------------------------


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((SD_FORMAT / name).read_text())["keys"].items()}


# Entries of the original files a loader must not require: the reference denoiser's sigmas and CLIP's position ids
# (an integer index that the transformers version the files were written with saved).
OPTIONAL = {"denoiser.sigmas", "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"}


@pytest.mark.parametrize(
    "name, family, config",
    [("sdxl-base.json", "sdxl", "sd_xl_base.yaml"), ("sdxl-refiner.json", "sdxl-refiner", "sd_xl_refiner.yaml")],
)
def test_full_size_layout_is_the_original_files_and_is_detected(name, family, config):
    """The full-size model (meta device) has every tensor of the original file by name and shape, and the file is
    told from its tensors, its config built at the release's sizes with SDXL's VAE scale factor."""
    shapes = manifest(name)
    found = detect(shapes)
    assert (found.family, found.config_name, found.resized, found.prediction) == (family, config, (), "eps")
    with torch.device("meta"):
        model = instantiate(found.config["model"])
    ours = {k: tuple(v.shape) for k, v in model.original_state_dict().items()}
    assert ours == {k: s for k, s in shapes.items() if k not in OPTIONAL}
    assert model.scale_factor == 0.13025 and model.ddim_variant == "sd"
    load_into(model, from_original_keys({k: torch.empty(s, device="meta") for k, s in shapes.items()}), assign=True)


def test_a_tiny_sdxl_file_round_trips_through_the_original_names(tmp_path):
    """Our state dict written with the original names (the CLIP ViT-L tower in Hugging Face's) and read back."""
    from ldm.io.checkpoint import load_state_dict, save_state_dict

    node = load_config(sd_config_path("sd_xl_base.yaml"))["model"]
    params = node["params"]
    params["unet_config"]["params"] = tiny_unet_params()
    params["cond_stage_config"] = tiny_encoders_node()
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    torch.manual_seed(5)
    model = instantiate(node)
    original = model.original_state_dict()
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in original
    assert "conditioner.embedders.1.model.text_projection" in original
    save_state_dict(original, tmp_path / "tiny.safetensors")
    torch.manual_seed(6)
    again = instantiate(node)
    load_into(again, from_original_keys(load_state_dict(tmp_path / "tiny.safetensors")))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ---- txt2img through our task composition against StableDiffusionXLPipeline ------------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl(unets, text_towers):
    """A tiny SDXL-architecture LatentDiffusion (our SDXL base config at reduced widths) holding the U-Net and text
    towers of the diffusers pipeline."""
    node = load_config(sd_config_path("sd_xl_base.yaml"))["model"]
    params = node["params"]
    params["unet_config"]["params"] = tiny_unet_params()
    params["cond_stage_config"] = tiny_encoders_node()
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    params["image_size"] = 8
    model = instantiate(node).eval()
    model.unet.load_state_dict(unets[0].state_dict())
    model.text_encoder.load_state_dict(text_towers[0]["base"].state_dict())
    return model, node


def test_guided_ddim_txt2img_matches_the_sdxl_pipeline(tiny_sdxl, text_towers):
    """A 4-step guided DDIM through ldm.tasks.txt2img.prepare and ldm.tasks.base.denoise equals
    StableDiffusionXLPipeline's
    latents from the same start latents (empty negative prompt: zero context and pooled output)."""
    from diffusers import DDIMScheduler

    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.base import denoise, for_model
    from ldm.tasks.txt2img import prepare

    model, _ = tiny_sdxl
    pipe = text_towers[1]
    pipe.scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(
            PROMPTS, height=16, width=16, num_inference_steps=4, guidance_scale=5.0, latents=noise, output_type="latent"
        ).images
        options = for_model(SamplingOptions(steps=4, guidance_scale=5.0, sampler="ddim"), model)  # SD's DDIM
        conditioning = prepare(model, PROMPTS, ["", ""], options, size=(16, 16))
        ours = denoise(model, conditioning, options, noise, None, progress=False)
        other_size = denoise(
            model, prepare(model, PROMPTS, ["", ""], options, size=(32, 16)), options, noise, None, progress=False
        )
    assert options.ddim_variant == "sd"
    assert rel_err(ours, theirs) <= TOLERANCE
    assert rel_err(other_size, theirs) > 10 * TOLERANCE  # the size conditioning reaches the images


def test_ldm_txt2img_runs_a_tiny_sdxl_file_end_to_end(tiny_sdxl, tmp_path):
    """`ldm txt2img --ckpt tiny-sdxl.safetensors`: the file alone (its config in its metadata) makes an image."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from ldm.io.checkpoint import save_state_dict

    model, node = tiny_sdxl
    save_state_dict(
        model.original_state_dict(),
        tmp_path / "tiny-sdxl.safetensors",
        metadata={"ldm_config": json.dumps({"model": node})},
    )
    argv = [
        "txt2img",
        "a red apple",
        "--ckpt",
        "tiny-sdxl.safetensors",
        "--H",
        "16",
        "--W",
        "24",
        "--steps",
        "2",
        "--seed",
        "5",
        "--no-progress",
        "--outdir",
        "out",
    ]
    runner = Path(__file__).parents[1] / "cli_runner.py"
    r = subprocess.run(
        [sys.executable, str(runner)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        input=json.dumps([{"argv": argv, "cwd": str(tmp_path), "timeout": 120}]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)[0]
    assert result["rc"] == 0, result["stderr"][-3000:]
    png = Image.open(tmp_path / "out" / "samples" / "00000.png")
    assert png.size == (24, 16) and np.asarray(png).std() > 0
