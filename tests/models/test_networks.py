"""The three networks: shapes, maths of their parts, and options that must not change results."""

import math

import pytest
import torch
from factories import TINY_TEXT, tiny_model

from ldm.models.attention import attention
from ldm.models.sinusoidal import timestep_embedding
from ldm.models.text_encoder import FrozenOpenCLIPEmbedder


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    out = attention(q, k, v, heads=2)
    qh, kh, vh = (t.reshape(2, -1, 2, 4).transpose(1, 2) for t in (q, k, v))
    ref = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(4), dim=-1) @ vh
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(2, 5, 8), rtol=1e-5, atol=1e-6)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 10.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_unet_shapes_odd_sizes_and_checkpointing():
    model = tiny_model()
    unet = model.unet
    ctx = torch.randn(2, 77, 32)
    for h, w in [(8, 8), (6, 10)]:  # 6 and 10 latents are not powers of two
        x = torch.randn(2, 4, h, w)
        out = unet(x, torch.tensor([10, 500]), ctx)
        assert out.shape == x.shape
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    unet.train()
    ref = unet(x, torch.tensor([3, 4]), ctx)
    unet.set_gradient_checkpointing(True)
    ckpt = unet(x, torch.tensor([3, 4]), ctx)
    torch.testing.assert_close(ref, ckpt)
    ckpt.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_context_changes_the_output():
    unet = tiny_model().unet
    x = torch.randn(1, 4, 8, 8)
    a = unet(x, torch.tensor([100]), torch.randn(1, 77, 32))
    b = unet(x, torch.tensor([100]), torch.randn(1, 77, 32))
    assert (a - b).abs().max() > 1e-4


def test_vae_posterior_and_kl():
    vae = tiny_model().vae
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = vae.encode(x)
    assert posterior.mean.shape == (2, 4, 8, 8)
    # KL of N(m, s^2) to N(0, 1) in closed form, summed over dimensions.
    m, lv = posterior.mean, posterior.logvar
    kl = 0.5 * (m**2 + lv.exp() - 1 - lv).flatten(1).sum(1)
    torch.testing.assert_close(posterior.kl(), kl)
    g = torch.Generator().manual_seed(0)
    s1 = posterior.sample(torch.Generator().manual_seed(0))
    s2 = posterior.sample(g)
    assert torch.equal(s1, s2)
    assert vae.decode(posterior.mode()).shape == x.shape
    z = vae.encode_to_latent(x)
    torch.testing.assert_close(z, posterior.mode() * vae.scale_factor)


def test_text_encoder_layers_and_empty_prompt(tmp_path):
    enc = FrozenOpenCLIPEmbedder(TINY_TEXT, layer="penultimate")
    last = FrozenOpenCLIPEmbedder(TINY_TEXT, layer="last")
    last.model.load_state_dict(enc.model.state_dict())
    a = enc(["a red apple", ""])
    b = last(["a red apple", ""])
    assert a.shape == (2, 77, 32)
    assert not torch.allclose(a, b)
    # Penultimate = run all but the last block, then ln_final (as SD 2.x).
    tokens = enc.tokenize(["a red apple"])
    m = enc.model
    x = m.token_embedding(tokens) + m.positional_embedding
    for blk in m.transformer.resblocks[:-1]:
        x = blk(x, attn_mask=m.attn_mask)
    torch.testing.assert_close(a[:1], m.ln_final(x))
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # frozen encoders stay in eval mode


def test_text_encoder_errors():
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        FrozenOpenCLIPEmbedder("no-such-arch")
    with pytest.raises(ValueError, match="layer"):
        FrozenOpenCLIPEmbedder(TINY_TEXT, layer="middle")
