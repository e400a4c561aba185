"""Tiled VAE encode and decode: large images through the autoencoder in overlapping tiles.

The autoencoder's memory grows with the image (its decoder's activations at full resolution, and the
attention of its middle block over every latent position), so a 2048 px or 4096 px image does not fit
at once. Here the input is cut into overlapping tiles, each tile goes through the network on its own,
and the outputs are blended with weights that ramp linearly across each overlap, so no seam is a hard
edge. Tiles are not the whole image (the middle block's attention and the group norms see one tile), so
a tiled result differs slightly from the untiled one; benchmarks/tiled_vae.py measures by how much.
"""
from __future__ import annotations

from typing import Callable

import torch

from ldm.errors import InvalidOptionError


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size), neighbours overlapping by >= `overlap`
    (less by under `align` when starts must be multiples of `align`: an encoder's tiles start on whole latents)."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    count = -(-(size - tile) // stride) + 1  # ceil: the last tile ends exactly at `size`
    return [align * round(i * (size - tile) / (count - 1) / align) for i in range(count)]


def ramp(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over its first `before` samples, falling over its last
    `after`, 1 between (a tile on the image's border has no ramp on that side)."""
    w = torch.ones(length, device=device)
    if before:
        w[:before] = torch.linspace(0, 1, before + 2, device=device)[1:-1]
    if after:
        w[length - after:] = torch.linspace(1, 0, after + 2, device=device)[1:-1]
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
          scale: float) -> torch.Tensor:
    """fn over x [B, C, H, W] in tiles of `tile` x `tile` input samples overlapping by `overlap`; fn maps a
    tile to an output `scale` times its size (8 for a decoder of f=8, 1/8 for the encoder)."""
    if not 0 <= overlap < tile:
        raise InvalidOptionError(f"tile overlap must be in [0, tile size), got {overlap} for tiles of {tile}")
    height, width = x.shape[-2:]
    align = max(1, round(1 / scale))  # an input sample per output sample, or `align` of them
    rows, cols = tile_starts(height, tile, overlap, align), tile_starts(width, tile, overlap, align)
    out = weight = None
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            piece = fn(x[..., top:top + tile, left:left + tile])
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], round(height * scale), round(width * scale))
                weight = piece.new_zeros(1, 1, *out.shape[-2:])
            h, w = piece.shape[-2:]
            t, l = round(top * scale), round(left * scale)
            # Ramps as long as the overlap with the neighbour on each side (none at the border).
            up = max(0, round(rows[i - 1] * scale) + h - t) if i else 0
            down = max(0, t + h - round(rows[i + 1] * scale)) if i + 1 < len(rows) else 0
            lf = max(0, round(cols[j - 1] * scale) + w - l) if j else 0
            rt = max(0, l + w - round(cols[j + 1] * scale)) if j + 1 < len(cols) else 0
            mask = ramp(h, up, down, x.device)[:, None] * ramp(w, lf, rt, x.device)[None, :]
            out[..., t:t + h, l:l + w] += piece * mask.to(piece.dtype)
            weight[..., t:t + h, l:l + w] += mask.to(piece.dtype)
    return out / weight


def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int = 64,
                 overlap: int = 16, factor: int = 8) -> torch.Tensor:
    """Latents [B, C, h, w] -> images through `decode` in tiles of `tile` latent samples (64: 512 px at f=8)."""
    return tiled(decode, z, tile, overlap, factor)


def tiled_encode(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int = 512,
                 overlap: int = 64, factor: int = 8) -> torch.Tensor:
    """Images [B, 3, H, W] -> latents through `encode` (a deterministic map, e.g. the posterior's mean) in
    tiles of `tile` px; tile and overlap must be multiples of the factor."""
    if tile % factor or overlap % factor:
        raise InvalidOptionError(f"encoder tiles and overlaps must be multiples of {factor} px, got {tile} and {overlap}")
    return tiled(encode, x, tile, overlap, 1 / factor)
