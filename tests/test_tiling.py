"""Tiled autoencoder: tiles cover the image, blending is exact for local maps, and the tiny VAE's tiled
decode and encode stay close to the untiled ones; --tiled-vae reaches the model."""

import pytest
import torch
import torch.nn.functional as F
from factories import tiny_model

from ldm.core.errors import InvalidOptionError
from ldm.interfaces.cli.common import parse_tiling
from ldm.models.tiling import SharedGroupNormStats, tile_starts, tiled, tiled_decode, tiled_encode


@pytest.mark.parametrize("size, tile, overlap", [(100, 32, 8), (64, 64, 16), (65, 64, 16), (200, 48, 0)])
def test_tiles_cover_the_image_and_overlap_enough(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, size) == size
    for a, b in zip(starts, starts[1:]):
        assert b - a <= tile - overlap  # neighbours overlap by at least `overlap`


def test_blending_is_exact_for_a_local_map():
    # A map whose output at a pixel depends on that pixel alone gives the same image tiled or not,
    # whatever the tile layout: the blend weights sum to one everywhere.
    x = torch.randn(2, 3, 37, 53)
    fn = lambda t: F.interpolate(t, scale_factor=4, mode="nearest") * 2 + 1
    torch.testing.assert_close(tiled(fn, x, 16, 5, 4), fn(x), rtol=0, atol=1e-5)
    down = lambda t: F.avg_pool2d(t, 4)
    x = torch.randn(1, 3, 96, 128)
    torch.testing.assert_close(tiled(down, x, 32, 8, 0.25), down(x), rtol=0, atol=1e-5)


def test_tiny_vae_tiled_is_close_to_untiled_and_the_model_uses_it():
    model = tiny_model()
    z = torch.randn(1, 4, 40, 56)
    with torch.no_grad():
        full = model.decode_latent(z)
        tiles = tiled_decode(model.vae.decode_from_latent, z, tile=16, overlap=6, factor=model.downscale)
        assert tiles.shape == full.shape
        # The group norms see one tile instead of the image, so the result moves, though not wholesale (a random
        # tiny VAE with 32 px tiles; benchmarks/tiled_vae.py measures the trained-size case).
        assert (tiles - full).abs().mean() < 0.5 * full.abs().mean()
        shared = tiled_decode(
            model.vae.decode_from_latent, z, tile=16, overlap=6, factor=model.downscale, norms=model.vae
        )
        assert (shared - full).abs().mean() < 0.5 * full.abs().mean()
        model.vae_tiling = {"tile": 16, "overlap": 6}
        assert torch.equal(model.decode_latent(z), shared)
        images = full.clamp(-1, 1)
        encoded = model.encode_image(images)  # tiled: the image is larger than 16 latent samples
        model.vae_tiling = None
        reference = model.encode_image(images)
        assert encoded.shape == reference.shape
        assert (encoded - reference).abs().mean() < 0.5 * reference.abs().mean()
    with pytest.raises(InvalidOptionError, match="multiples of 2"):
        tiled_encode(model.vae.encode_to_latent, images, tile=33, overlap=8, factor=2)


def test_tiling_option_is_checked():
    assert parse_tiling("64:16") == {"tile": 64, "overlap": 16} and parse_tiling("32") == {"tile": 32, "overlap": 16}
    for bad in ("x:1", "4:1", "32:32"):
        with pytest.raises(InvalidOptionError, match="--tiled-vae"):
            parse_tiling(bad)


def test_shared_statistics_of_one_call_are_the_group_norms_own():
    # Recorded over the whole input, the pooled mean and variance are the norm's own: the same output.
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.GroupNorm(4, 8),
        torch.nn.SiLU(),
        torch.nn.GroupNorm(2, 8, affine=False),
    )
    torch.nn.init.normal_(net[1].weight)
    x = torch.randn(2, 3, 12, 10) * 3 + 1
    stats = SharedGroupNormStats(net)
    with torch.no_grad():
        expected = net(x)
        with stats.record():
            assert torch.equal(net(x), expected)  # recording changes nothing
        with stats.shared():
            torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5)
    assert all("forward" not in norm.__dict__ for norm in stats.norms)  # the class's forward is back


def test_shared_statistics_bring_a_trained_decoders_tiles_nearer_the_whole():
    # The shipped autoencoder (trained), a picture of a red disk and a green square on white, tiles of 48 px: each
    # tile normalised on its own strays far from the untiled decode; with the statistics shared, much less
    # (measured 0.75 against 0.26 mean absolute error). A random network is no test of this: its untrained group
    # norms amplify any difference either way.
    import yaml

    from ldm.core.config import instantiate
    from ldm.core.defaults import shipped_path
    from ldm.io.checkpoint import load_state_dict

    cfg = yaml.safe_load(shipped_path("checkpoints/emoji/model.yaml").read_text())
    vae = instantiate(cfg["model"]["params"]["first_stage_config"]).eval()
    state = load_state_dict(shipped_path("checkpoints/emoji/model.safetensors"))
    vae.load_state_dict(
        {k[len("first_stage_model.") :]: v.float() for k, v in state.items() if k.startswith("first_stage_model.")}
    )
    y, x = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    image = torch.ones(1, 3, 128, 128)
    disk = (y + 0.2) ** 2 + (x - 0.3) ** 2 < 0.35
    image[0, 1][disk] = image[0, 2][disk] = -0.8
    square = (y.abs() < 0.3) & ((x + 0.55).abs() < 0.3)
    image[0, 0][square], image[0, 1][square], image[0, 2][square] = -0.9, 0.2, -0.9
    with torch.no_grad():
        z = vae.encode(image).mean
        full = vae.decode_from_latent(z)
        own = tiled_decode(vae.decode_from_latent, z, tile=12, overlap=4, factor=4)
        shared = tiled_decode(vae.decode_from_latent, z, tile=12, overlap=4, factor=4, norms=vae)
    assert (shared - full).abs().mean() < 0.6 * (own - full).abs().mean()


def test_vae_attention_never_holds_the_tokens_by_tokens_matrix():
    # The pixels-as-tokens of the autoencoder's attention come from a transposed conv output; SDPA's fused CPU
    # kernel needs them contiguous, else it falls back to a path that holds all tokens x tokens scores (32 GiB
    # at 2048 px for SD's VAE).
    from torch.utils._python_dispatch import TorchDispatchMode

    from ldm.models.vae import AttnBlock

    class LargestNewTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    block = AttnBlock(32).eval()
    x = torch.randn(1, 32, 48, 48)  # 2,304 tokens: a 5.3 M-entry score matrix, against 74 k entries of features
    with torch.no_grad(), LargestNewTensor() as probe:
        block(x)
    assert probe.largest < 2304 * 2304 / 10
