"""Tiled autoencoder: tiles cover the image, blending is exact for local maps, and the tiny VAE's tiled
decode and encode stay close to the untiled ones; --tiled-vae reaches the model."""
import pytest
import torch
import torch.nn.functional as F

from ldm.commands.common import parse_tiling
from ldm.errors import InvalidOptionError
from ldm.tiling import tile_starts, tiled, tiled_decode, tiled_encode
from factories import tiny_model


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
        model.vae_tiling = {"tile": 16, "overlap": 6}
        assert torch.equal(model.decode_latent(z), tiles)
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
