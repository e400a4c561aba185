"""SDXL's vector conditioning: the pooled text output followed by sinusoidal embeddings of a few numbers.

Each number v (an original or target height or width, a crop offset, an aesthetic score) becomes a 256-wide
embedding [cos(v f_0) .. cos(v f_127) | sin(v f_0) .. sin(v f_127)], f_i = 10000^(-i / 128): the U-Net's
timestep embedding (ldm.models.sinusoidal.timestep_embedding; sgm's ConcatTimestepEmbedderND uses its Timestep,
diffusers'
add_time_proj is Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)). Pairs are (height, width) and
(top, left), as sgm's get_batch builds original_size_as_tuple, crop_coords_top_left and target_size_as_tuple.

    base:    [pooled 1280 | orig h | orig w | crop top | crop left | target h | target w] = 1280 + 6 x 256 = 2816
    refiner: [pooled 1280 | orig h | orig w | crop top | crop left | aesthetic score]    = 1280 + 5 x 256 = 2560

The unconditional side of guidance, as the references build it: the same sizes; the refiner's aesthetic score
2.5 (6.0 on the conditional side); for the base an empty negative prompt gives a zero context and a zero pooled
output (ldm.models.sdxl_text.SDXLTextEncoders.zero_empty_negative), any other negative prompt is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldm.core.errors import InvalidOptionError
from ldm.models.sinusoidal import timestep_embedding

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # sgm's scripts/demo defaults, diffusers' too


@dataclass(frozen=True)
class MicroConditions:
    """The numbers of the vector for one side of guidance; sizes are (height, width) in pixels."""

    original_size: tuple[int, int]
    target_size: tuple[int, int]
    crop: tuple[int, int] = (0, 0)  # (top, left)
    aesthetic_score: float = AESTHETIC_SCORE

    def values(self, names: tuple[str, ...]) -> list[float]:
        """The numbers in the order `names` (a conditioner's micro_conditions) puts them."""
        numbers = {
            "original_size": list(self.original_size),
            "crop": list(self.crop),
            "target_size": list(self.target_size),
            "aesthetic_score": [self.aesthetic_score],
        }
        return [float(v) for name in names for v in numbers[name]]


def micro_embedding(values: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """[batch, n] numbers -> [batch, n * dim]: each number's sinusoidal embedding, side by side."""
    if values.ndim != 2:
        raise InvalidOptionError(f"micro-conditioning values must be [batch, n], got shape {list(values.shape)}")
    batch, n = values.shape
    return timestep_embedding(values.reshape(-1), dim).reshape(batch, n * dim)


def vector(pooled: torch.Tensor, conditions: MicroConditions, names: tuple[str, ...], dim: int = 256) -> torch.Tensor:
    """The U-Net's vector input [batch, pooled + numbers x dim] for one side of guidance."""
    values = torch.tensor(conditions.values(names), dtype=torch.float32, device=pooled.device)
    embedded = micro_embedding(values.expand(len(pooled), -1), dim)
    return torch.cat([pooled.float(), embedded], dim=-1).to(pooled.dtype)


def batch_vector(
    pooled: torch.Tensor, conditions: list[MicroConditions], names: tuple[str, ...], dim: int = 256
) -> torch.Tensor:
    """The vector [batch, pooled + numbers x dim] with each row's own numbers (training: each image's size and crop)."""
    if len(conditions) != len(pooled):
        raise InvalidOptionError(f"{len(conditions)} micro-conditionings for {len(pooled)} pooled outputs")
    values = torch.tensor([c.values(names) for c in conditions], dtype=torch.float32, device=pooled.device)
    return torch.cat([pooled.float(), micro_embedding(values, dim)], dim=-1).to(pooled.dtype)


def default_conditions(height: int, width: int) -> tuple[MicroConditions, MicroConditions]:
    """(conditional, unconditional) numbers for an image of height x width: original and target size the image's,
    no crop, aesthetic scores 6.0 and 2.5."""
    size = (int(height), int(width))
    return (
        MicroConditions(size, size, (0, 0), AESTHETIC_SCORE),
        MicroConditions(size, size, (0, 0), NEGATIVE_AESTHETIC_SCORE),
    )


@torch.no_grad()
def sdxl_conditions(
    encoders,
    prompts: list[str],
    negative_prompts: list[str],
    height: int,
    width: int,
    micro: tuple[MicroConditions, MicroConditions] | None = None,
    chunking: bool = False,
    emphasis: bool = False,
) -> tuple[dict, dict]:
    """The U-Net's keyword inputs ({"context", "y"}) for both sides of guidance.

    encoders: an ldm.models.sdxl_text.SDXLTextEncoders. micro: (conditional, unconditional) numbers; default
    `default_conditions(height, width)`. chunking / emphasis: A1111's long prompts and (word:1.2) weights; both sides
    are encoded as one batch, so they come out with one sequence length (the shorter padded with empty chunks).
    """
    if len(prompts) != len(negative_prompts):
        raise InvalidOptionError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
    cond_micro, uncond_micro = micro or default_conditions(height, width)
    context, pooled = encoders.encode(list(prompts) + list(negative_prompts), chunking=chunking, emphasis=emphasis)
    n = len(prompts)
    cond_context, uncond_context, cond_pooled, uncond_pooled = context[:n], context[n:], pooled[:n], pooled[n:]
    if encoders.zero_empty_negative:
        empty = torch.tensor([not text for text in negative_prompts], device=context.device)
        uncond_context = torch.where(empty[:, None, None], torch.zeros_like(uncond_context), uncond_context)
        uncond_pooled = torch.where(empty[:, None], torch.zeros_like(uncond_pooled), uncond_pooled)
    names, dim = encoders.micro_conditions, encoders.micro_embed_dim
    return (
        {"context": cond_context, "y": vector(cond_pooled, cond_micro, names, dim)},
        {"context": uncond_context, "y": vector(uncond_pooled, uncond_micro, names, dim)},
    )
