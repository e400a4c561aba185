"""Tiled VAE encode and decode: large images through the autoencoder in overlapping tiles.

The autoencoder's memory grows with the image (its decoder's activations at full resolution, and the
attention of its middle block over every latent position), so a 2048 px or 4096 px image does not fit
at once. Here the input is cut into overlapping tiles, each tile goes through the network on its own,
and the outputs are blended with weights that ramp linearly across each overlap, so no seam is a hard
edge. Tiles are not the whole image (the middle block's attention and the group norms see one tile), so
a tiled result differs from the untiled one; benchmarks/tiled_vae.py measures by how much.

The group norms matter most: each removes its groups' mean and scale over the whole picture, so a tile of sky
normalised on its own comes out in another colour than the same sky in the whole image (measured with a trained
autoencoder on a 1024 px photo: 19 dB between tiled and untiled). Given the network (`norms=`), the tiles run
twice: the first pass gathers every group norm's statistics over all tiles, the second normalises each tile
with those shared statistics (`SharedGroupNormStats`).

`blend_tiles` is the package's one tiling: the autoencoder's tiles here, and the x4 upscaler's denoiser and decoder
tiles (ldm.tasks.upscale.tiled_map), which differ only in how a tile fades into its neighbours (`FEATHERS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ldm.core.errors import InvalidOptionError


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size), neighbours overlapping by >= `overlap`
    (less by under `align` when starts must be multiples of `align`: an encoder's tiles start on whole latents)."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    count = -(-(size - tile) // stride) + 1  # ceil: the last tile ends exactly at `size`
    return [align * round(i * (size - tile) / (count - 1) / align) for i in range(count)]


# How a tile fades into its neighbours (blend_tiles' `feather`). Both ramp linearly, 1/(n+1) ... n/(n+1) over n
# samples; they differ in which n and in the last bits, and each caller keeps its own so its outputs stay as
# recorded (tests/golden):
# "measured" (the VAE's tiles): each ramp is as long as the measured overlap with that neighbour (tiles are spread
#   evenly, so often longer than `overlap`); weights from torch.linspace; where a tile's two ramps meet, the
#   falling one is written over the rising one.
# "nominal" (the upscaler's denoiser and decoder tiles): each inner side ramps over `overlap` x scale samples;
#   weights k / (n + 1) by division; where the two ramps meet, the smaller weight.
FEATHERS = ("measured", "nominal")


def ramp(length: int, before: int, after: int, device: torch.device, feather: str = "measured") -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over its first `before` samples, falling over its last
    `after`, 1 between (a tile on the image's border has no ramp on that side)."""
    w = torch.ones(length, device=device)
    if feather == "nominal":
        for n, flip in ((before, False), (after, True)):
            if n:
                r = torch.arange(1, length + 1, device=device, dtype=torch.float32) / (n + 1)
                w = torch.minimum(w, r.flip(0) if flip else r)
        return w
    if before:
        w[:before] = torch.linspace(0, 1, before + 2, device=device)[1:-1]
    if after:
        w[length - after :] = torch.linspace(1, 0, after + 2, device=device)[1:-1]
    return w


class SharedGroupNormStats:
    """Every nn.GroupNorm in a network, made to normalise with statistics gathered over several calls (the tiles).

    record(): each norm works as usual and adds its per-(image, group) mean and mean square to a running sum,
    weighted by the positions it saw. shared(): each norm normalises with the pooled mean and variance,
    var = E[x^2] - E[x]^2, then applies its own affine weights. The pooled figures are estimates: the first
    pass computed each layer's input with per-tile statistics upstream.
    """

    def __init__(self, network: nn.Module):
        self.norms = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
        self.sums: dict[nn.GroupNorm, list[torch.Tensor]] = {}

    @staticmethod
    def _grouped(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return x.float().reshape(x.shape[0], norm.num_groups, -1)

    def _recording(self, norm: nn.GroupNorm, original: Callable) -> Callable:
        def forward(x: torch.Tensor) -> torch.Tensor:
            g = self._grouped(norm, x)
            count = g.shape[-1]
            moments = [g.mean(-1) * count, g.pow(2).mean(-1) * count, torch.tensor(float(count))]
            self.sums[norm] = [a + b for a, b in zip(self.sums[norm], moments)] if norm in self.sums else moments
            return original(x)

        return forward

    def _sharing(self, norm: nn.GroupNorm, original: Callable) -> Callable:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if norm not in self.sums:
                return original(x)
            total, total_sq, count = self.sums[norm]
            mean, mean_sq = total / count, total_sq / count
            inv_std = ((mean_sq - mean**2).clamp_min(0) + norm.eps).rsqrt()
            g = (self._grouped(norm, x) - mean[..., None]) * inv_std[..., None]
            out = g.reshape(x.shape).to(x.dtype)
            if norm.affine:
                shape = (1, -1) + (1,) * (x.dim() - 2)
                out = out * norm.weight.reshape(shape) + norm.bias.reshape(shape)
            return out

        return forward

    @contextlib.contextmanager
    def _patched(self, make: Callable) -> Iterator[None]:
        for norm in self.norms:
            norm.forward = make(norm, type(norm).forward.__get__(norm))
        try:
            yield
        finally:
            for norm in self.norms:
                del norm.forward  # the class's forward again

    def record(self) -> contextlib.AbstractContextManager:
        self.sums.clear()
        return self._patched(self._recording)

    def shared(self) -> contextlib.AbstractContextManager:
        return self._patched(self._sharing)


def blend_tiles(
    fn: Callable[[slice, slice], torch.Tensor],
    height: int,
    width: int,
    tile: int,
    overlap: int,
    scale: float = 1,
    align: int = 1,
    feather: str = "measured",
    norms: nn.Module | None = None,
) -> torch.Tensor:
    """fn(rows, cols) over overlapping tiles of a height x width grid, blended: the one tiling of the package (the
    VAE's tiles here, the upscaler's denoiser and decoder tiles in ldm.tasks.upscale).

    fn maps a tile's slices to its output, `scale` times the tile's size (8 for a decoder of f=8, 1/8 for the
    encoder); tile starts are multiples of `align` input samples. `feather`: how tiles fade into each other (see
    FEATHERS). With `norms`, the network that fn runs, its group norms share their statistics across the tiles
    (two passes: SharedGroupNormStats).
    """
    if not 0 <= overlap < tile:
        raise InvalidOptionError(f"tile overlap must be in [0, tile size), got {overlap} for tiles of {tile}")
    if feather not in FEATHERS:
        raise InvalidOptionError(f"feather must be one of {', '.join(FEATHERS)}, got {feather!r}")
    rows, cols = tile_starts(height, tile, overlap, align), tile_starts(width, tile, overlap, align)
    if norms is not None and len(rows) * len(cols) > 1 and any(isinstance(m, nn.GroupNorm) for m in norms.modules()):
        stats = SharedGroupNormStats(norms)
        with stats.record():
            for top in rows:
                for left in cols:
                    fn(slice(top, top + tile), slice(left, left + tile))
        with stats.shared():
            return blend_tiles(fn, height, width, tile, overlap, scale, align, feather)
    out = weight = None
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            piece = fn(slice(top, top + tile), slice(left, left + tile))
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], round(height * scale), round(width * scale))
                weight = piece.new_zeros(1, 1, *out.shape[-2:])
            h, w = piece.shape[-2:]
            t, l = round(top * scale), round(left * scale)
            if feather == "nominal":  # `overlap` x scale at each side that has a neighbour
                side = round(overlap * scale)
                up, down = side * (top > 0), side * (t + h < out.shape[-2])
                lf, rt = side * (left > 0), side * (l + w < out.shape[-1])
            else:  # as long as the overlap with the neighbour on each side (none at the border)
                up = max(0, round(rows[i - 1] * scale) + h - t) if i else 0
                down = max(0, t + h - round(rows[i + 1] * scale)) if i + 1 < len(rows) else 0
                lf = max(0, round(cols[j - 1] * scale) + w - l) if j else 0
                rt = max(0, l + w - round(cols[j + 1] * scale)) if j + 1 < len(cols) else 0
            mask = ramp(h, up, down, piece.device, feather)[:, None] * ramp(w, lf, rt, piece.device, feather)[None, :]
            out[..., t : t + h, l : l + w] += piece * mask.to(piece.dtype)
            weight[..., t : t + h, l : l + w] += mask.to(piece.dtype)
    return out / weight


def tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: float,
    norms: nn.Module | None = None,
) -> torch.Tensor:
    """fn over x [B, C, H, W] in tiles of `tile` x `tile` input samples overlapping by `overlap`; fn maps a
    tile to an output `scale` times its size (8 for a decoder of f=8, 1/8 for the encoder). With `norms`, the
    network fn runs, the group norms share their statistics across tiles (two passes: SharedGroupNormStats)."""
    align = max(1, round(1 / scale))  # an input sample per output sample, or `align` of them
    height, width = x.shape[-2:]
    return blend_tiles(
        lambda rows, cols: fn(x[..., rows, cols]), height, width, tile, overlap, scale, align, norms=norms
    )


def tiled_decode(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    tile: int = 64,
    overlap: int = 16,
    factor: int = 8,
    norms: nn.Module | None = None,
) -> torch.Tensor:
    """Latents [B, C, h, w] -> images through `decode` in tiles of `tile` latent samples (64: 512 px at f=8);
    `norms`: the decoder, whose group norms then share statistics across tiles."""
    return tiled(decode, z, tile, overlap, factor, norms)


def tiled_encode(
    encode: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int = 512,
    overlap: int = 64,
    factor: int = 8,
    norms: nn.Module | None = None,
) -> torch.Tensor:
    """Images [B, 3, H, W] -> latents through `encode` (a deterministic map, e.g. the posterior's mean) in
    tiles of `tile` px; tile and overlap must be multiples of the factor. `norms` as in tiled_decode."""
    if tile % factor or overlap % factor:
        raise InvalidOptionError(
            f"encoder tiles and overlaps must be multiples of {factor} px, got {tile} and {overlap}"
        )
    return tiled(encode, x, tile, overlap, 1 / factor, norms)
