"""Our networks against an independent implementation (diffusers) given the same original-format weights.

diffusers ships converters from original SD state dicts to its own layout; if our modules
compute the same function as the original ones, both outputs agree to float32 precision.
"""

import copy
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel
from diffusers.loaders import single_file_utils as s

from ldm.core.errors import InvalidOptionError
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "stable-diffusion"


def small_sd2(**unet):
    cfg = yaml.safe_load((CONFIGS / "v2-inference.yaml").read_text())
    small = copy.deepcopy(cfg)
    small["model"]["params"]["unet_config"]["params"].update(unet)
    small["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2], resolution=32)
    return small


def randomise(module, std=0.05):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module.eval()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    "heads",
    [
        dict(num_head_channels=32, use_linear_in_transformer=True),  # SD 2.x: linear projections, 64-channel heads
        dict(num_heads=4, num_head_channels=-1, use_linear_in_transformer=False),  # SD 1.x style: conv projections
    ],
)
def test_unet_matches_diffusers(heads):
    cfg = small_sd2(model_channels=64, channel_mult=[1, 2, 2], context_dim=64, **heads)
    ours = randomise(UNetModel(**cfg["model"]["params"]["unet_config"]["params"]))
    ckpt = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    dcfg = s.create_unet_diffusers_config_from_ldm(cfg, ckpt)
    theirs = UNet2DConditionModel(**dcfg).eval()
    theirs.load_state_dict(s.convert_ldm_unet_checkpoint(ckpt, dcfg), strict=True)
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([10, 700]), torch.randn(2, 77, 64)
    with torch.no_grad():
        assert rel_err(ours(x, t, c), theirs(x, t, c).sample) <= 1e-4


def test_vae_matches_diffusers():
    cfg = small_sd2()
    params = cfg["model"]["params"]["first_stage_config"]["params"]
    ours = randomise(AutoencoderKL(params["ddconfig"], params["embed_dim"]), std=0.03)
    ckpt = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    dcfg = s.create_vae_diffusers_config_from_ldm(cfg, ckpt)
    theirs = DiffusersVAE(**dcfg).eval()
    theirs.load_state_dict(s.convert_ldm_vae_checkpoint(ckpt, dcfg), strict=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ours_post, theirs_post = ours.encode(x), theirs.encode(x).latent_dist
        assert rel_err(ours_post.mean, theirs_post.mean) <= 1e-4
        assert rel_err(ours_post.logvar, theirs_post.logvar) <= 1e-4
        z = ours_post.mean
        assert rel_err(ours.decode(z), theirs.decode(z).sample) <= 1e-4


def test_a_narrow_vae_with_fewer_norm_groups_matches_diffusers():
    """norm_groups (diffusers' norm_num_groups): the upscaler's autoencoder normalises 32 channels in 8 groups."""
    ddconfig = {
        "double_z": True,
        "z_channels": 8,
        "resolution": 32,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
        "norm_groups": 8,
    }
    ours = randomise(AutoencoderKL(ddconfig, 8), std=0.03)
    assert {m.num_groups for m in ours.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    from ldm.formats.diffusers_export import vae_config

    dcfg = {k: v for k, v in vae_config({"ddconfig": ddconfig, "embed_dim": 8}, 1.0).items() if not k.startswith("_")}
    assert dcfg["norm_num_groups"] == 8
    theirs = DiffusersVAE(**dcfg).eval()
    ckpt = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(s.convert_ldm_vae_checkpoint(ckpt, dcfg), strict=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ours.encode(x).mean
        assert rel_err(z, theirs.encode(x).latent_dist.mean) <= 1e-4
        assert rel_err(ours.decode(z), theirs.decode(z).sample) <= 1e-4
    with pytest.raises(InvalidOptionError, match="norm_groups 12"):
        AutoencoderKL({**ddconfig, "norm_groups": 12}, 8)


# SD 1.x's text encoder against transformers' CLIPTextModel, from prompt text through each side's own tokenizer.
# The prompts cover punctuation, an empty prompt, odd spacing and case, non-ASCII text, and a prompt cut at
# 77 tokens (no padding left at all). Padding with 0 instead of the end token moves the outputs by ~80%.
SD1_PROMPTS = ["a photo of a cat!", "", "Hello,   WORLD  ünïcode 123, don't stop", "🍎 " * 40 + "cut here"]


@pytest.fixture(scope="module")
def clip_tokenizer():
    """transformers' CLIPTokenizer, offline: its vocabulary and merges built from the BPE file open_clip ships
    (OpenAI's, the one SD 1.x's tokenizer was made from), by GPT-2's byte-level rule as transformers has it."""
    import gzip

    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    # The pad token is the end token, as in SD 1.x's tokenizer config (CLIPTokenizer's default too).
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split()) for m in merges], pad_token="<|endoftext|>"
    )


def hf_token_ids(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def small_hf_clip_text_model(layers=3):
    """A random CLIPTextModel of CLIP ViT-L/14's kind (quick-GELU, 12 heads), 48 wide."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=48,
        intermediate_size=192,
        num_hidden_layers=layers,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    model = randomise(CLIPTextModel(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.add_(1.0)  # norms near 1, as trained ones are, so each block's residual path matters
    return model


SD1_TEXT = "cond_stage_model.transformer.text_model."  # where SD 1.x checkpoints hold the text tower


def text_model(hf_model):
    """The tower inside CLIPTextModel: a `text_model` child before transformers 5, the model itself since."""
    return getattr(hf_model, "text_model", hf_model)


def sd1_text_encoder_from(hf_model, layers=3):
    """Our SD 1.x text encoder filled from the Hugging Face model's weights as an SD 1.x checkpoint holds them."""
    from ldm.io.checkpoint import from_original_keys, load_into
    from ldm.models.text_encoder import FrozenCLIPEmbedder

    ckpt = {SD1_TEXT + k: v for k, v in text_model(hf_model).state_dict().items()}
    ours = FrozenCLIPEmbedder(width=48, layers=layers)
    load_into(ours, {k[len("text_encoder.") :]: v for k, v in from_original_keys(ckpt).items()})
    return ours


def test_sd1_tokens_match_transformers(clip_tokenizer):
    from ldm.models.text_encoder import FrozenCLIPEmbedder

    ours = FrozenCLIPEmbedder(width=48, layers=1).tokenize(SD1_PROMPTS)
    theirs = hf_token_ids(clip_tokenizer, SD1_PROMPTS)
    assert torch.equal(ours, theirs)
    assert ours[0, 6] == 256 and (ours[0, 7:] == 49407).all()  # "!", the end token, then end tokens as padding
    assert ours[1].tolist() == [49406] + [49407] * 76  # the empty prompt (guidance's unconditional half)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd1_text_encoder_matches_transformers(clip_tokenizer, clip_skip):
    """Clip skip 1 is CLIPTextModel's last_hidden_state; N is the N-th hidden state from the end, through the
    final layer norm (A1111's rule)."""
    theirs = small_hf_clip_text_model()
    ours = sd1_text_encoder_from(theirs)
    ours.set_clip_skip(clip_skip)
    with torch.no_grad():
        out = theirs(input_ids=hf_token_ids(clip_tokenizer, SD1_PROMPTS), output_hidden_states=True)
        expected = (
            out.last_hidden_state
            if clip_skip == 1
            else text_model(theirs).final_layer_norm(out.hidden_states[-clip_skip])
        )
        got = ours(SD1_PROMPTS)
    assert got.shape == expected.shape == (len(SD1_PROMPTS), 77, 48)
    assert rel_err(got, expected) <= 1e-5


def test_sd1_text_encoder_saves_what_transformers_loads(clip_tokenizer):
    """Our model written in the original layout gives back a CLIPTextModel that loads it strictly and computes
    the same function: the q/k/v split and every renamed tensor are the right way round."""
    from ldm.io.checkpoint import HF_CLIP_LAYOUT, to_original_keys

    source = small_hf_clip_text_model(layers=2)
    ours = sd1_text_encoder_from(source, layers=2)
    saved = to_original_keys({"text_encoder." + k: v for k, v in ours.state_dict().items()}, HF_CLIP_LAYOUT)
    assert all(k.startswith(SD1_TEXT) for k in saved)
    reloaded = copy.deepcopy(source)
    with torch.no_grad():
        for p in reloaded.parameters():
            p.zero_()
    missing, unexpected = text_model(reloaded).load_state_dict(
        {k[len(SD1_TEXT) :]: v for k, v in saved.items()}, strict=False
    )
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    ids = hf_token_ids(clip_tokenizer, SD1_PROMPTS)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).last_hidden_state, source(input_ids=ids).last_hidden_state)
