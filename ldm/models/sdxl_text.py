"""SDXL's conditioner: two CLIP text towers whose hidden states are joined, and the numbers of the vector.

The original (Stability-AI/generative-models, sgm.modules.GeneralConditioner with the embedders of
configs/inference/sd_xl_base.yaml) runs, in this order:

- CLIP ViT-L/14 (Hugging Face CLIPTextModel, layer "hidden", layer_idx 11): hidden_states[11], the output of
  the 11th of 12 blocks, *before* the final layer norm; prompts padded with the end token;
- OpenCLIP ViT-bigG/14 (FrozenOpenCLIPEmbedder2, layer "penultimate", legacy False): the input of its last
  block, before ln_final, and its pooled output: the last block's output after ln_final, at the end token,
  times text_projection (`x @ text_projection`); prompts padded with 0;
- one sinusoidal embedder per micro-conditioning (ldm.models.sdxl_conditioning).

The per-token states are joined along the width (768 + 1280 = 2048, the U-Net's context), the pooled
output leads the vector that the U-Net's label embedding takes. The refiner has the bigG tower alone.

Here each tower is one of our frozen text encoders (ldm.models.text_encoder), run once for both read-outs. In our
state dict they are `embedders.N.model.*` (open_clip names); ldm.io.sdxl_keys maps the original
`conditioner.embedders.N.*` names onto them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ldm.core.config import instantiate
from ldm.core.errors import InvalidOptionError
from ldm.models.long_prompts import emphasise, prompt_chunks

# The numbers a conditioner may put into the vector, by sgm's input keys, and how many numbers each is.
MICRO_CONDITIONS = {"original_size": 2, "crop": 2, "target_size": 2, "aesthetic_score": 1}
BASE_MICRO = ("original_size", "crop", "target_size")  # sd_xl_base.yaml: embedders 2-4
REFINER_MICRO = ("original_size", "crop", "aesthetic_score")  # sd_xl_refiner.yaml: embedders 1-3
MICRO_EMBED_DIM = 256  # ConcatTimestepEmbedderND(outdim=256) in both configs


def hidden_and_pooled(encoder: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states of the encoder's read-out layer before the final norm, pooled output or None) of token ids.

    The pooled output is the last block's output after ln_final at each prompt's first end token, times the
    tower's text_projection; a tower without a projection (CLIP ViT-L here) has none."""
    model = encoder.model
    x = encoder._token_vectors(tokens) + model.positional_embedding
    blocks = model.transformer.resblocks
    read_after = len(blocks) - encoder.layer_idx
    hidden = x if read_after == 0 else None
    for i, block in enumerate(blocks):
        x = block(x, attn_mask=model.attn_mask)
        if i + 1 == read_after:
            hidden = x
    projection = getattr(model, "text_projection", None)
    if projection is None:
        return hidden, None
    end = (tokens == encoder.vocabulary().end_id).int().argmax(dim=-1)  # the first end token of each row
    last = model.ln_final(x)[torch.arange(len(tokens), device=tokens.device), end]
    pooled = projection(last) if isinstance(projection, nn.Linear) else last @ projection
    return hidden, pooled


class SDXLTextEncoders(nn.Module):
    """prompts -> context [batch, 77, sum of widths] (forward) or (context, pooled) (encode).

    embedders: config nodes of our frozen text encoders, in the original's order; the last one with a text
    projection gives the pooled output. micro_conditions: the numbers of the vector after the pooled output,
    in order (BASE_MICRO or REFINER_MICRO). zero_empty_negative: an empty negative prompt gives a zero context
    and pooled output (the base: sgm's force_uc_zero_embeddings=["txt"], diffusers' force_zeros_for_empty_prompt);
    without it (the refiner) the empty prompt is encoded.
    """

    # The class says "sdxl"; an instance says each tower's layout, which ldm.io.checkpoint.to_original_keys hands to
    # ldm.io.sdxl_keys (a training export, which reads the class's, is not supported for SDXL).
    checkpoint_layout: str | tuple[str, ...] = "sdxl"

    def __init__(
        self,
        embedders: Sequence[dict[str, Any]],
        micro_conditions: Sequence[str] = BASE_MICRO,
        zero_empty_negative: bool = True,
        micro_embed_dim: int = MICRO_EMBED_DIM,
    ):
        super().__init__()
        if not embedders:
            raise InvalidOptionError("SDXLTextEncoders needs at least one text encoder in embedders")
        unknown = [name for name in micro_conditions if name not in MICRO_CONDITIONS]
        if unknown:
            raise InvalidOptionError(f"unknown micro-conditioning {unknown[0]!r}; known: {', '.join(MICRO_CONDITIONS)}")
        self.embedders = nn.ModuleList(instantiate(node) for node in embedders)
        self.micro_conditions = tuple(micro_conditions)
        self.zero_empty_negative = bool(zero_empty_negative)
        self.micro_embed_dim = int(micro_embed_dim)
        self.width = sum(e.width for e in self.embedders)
        self.max_length = self.embedders[0].max_length
        self.checkpoint_layout = self.layouts

    @property
    def layouts(self) -> tuple[str, ...]:
        """How the original files store each tower: Hugging Face's names (CLIP ViT-L) or open_clip's (bigG)."""
        return tuple(e.checkpoint_layout for e in self.embedders)

    @property
    def pooled_width(self) -> int:
        projection = self._pooling_embedder().model.text_projection
        return projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]

    @property
    def vector_width(self) -> int:
        """The width of the U-Net's vector input (adm_in_channels): pooled output and micro-conditionings."""
        numbers = sum(MICRO_CONDITIONS[name] for name in self.micro_conditions)
        return self.pooled_width + numbers * self.micro_embed_dim

    def _pooling_embedder(self) -> nn.Module:
        with_projection = [e for e in self.embedders if getattr(e.model, "text_projection", None) is not None]
        if not with_projection:
            raise InvalidOptionError("no SDXL text encoder has a text projection to give the pooled output")
        return with_projection[-1]

    def train(self, mode: bool = True) -> SDXLTextEncoders:
        return super().train(False)  # frozen, as each tower is

    @property
    def clip_skip(self) -> int:
        """The block read out, counted from the end as A1111's "clip skip" (1: the last); SDXL's own is 2."""
        return self.embedders[0].layer_idx + 1

    def set_clip_skip(self, skip: int) -> None:
        """Read out the `skip`-th block from the end in every tower, before the final norm as SDXL reads its layers;
        the pooled output stays the last block's. ComfyUI's CLIPSetLastLayer sets both towers so; diffusers'
        `clip_skip` counts from the penultimate block (theirs + 2 = ours); A1111 moves CLIP ViT-L alone, and only
        with its "sdxl_clip_l_skip" option."""
        layers = min(e.num_layers for e in self.embedders)
        if not 1 <= skip <= layers:
            raise InvalidOptionError(
                f"--clip-skip must be between 1 and {layers} (the text encoders' layers), got {skip}"
            )
        for embedder in self.embedders:
            embedder.layer_idx = skip - 1

    @torch.no_grad()
    def encode(
        self, prompts: list[str] | str, chunking: bool = False, emphasis: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [batch, 77 x chunks, width], pooled [batch, pooled_width]) of the prompts.

        chunking / emphasis: A1111's 75-token chunks and (word:1.2) weights (ldm.models.long_prompts), in each
        tower (encode_chunked); without either a prompt is cut at 77 tokens as the references cut it."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if chunking or emphasis:
            return self.encode_chunked(prompts, chunking, emphasis)
        pooler = self._pooling_embedder()
        hidden, pooled = [], None
        for embedder in self.embedders:
            tokens = embedder.tokenize(prompts).to(embedder.model.positional_embedding.device)
            states, pooled_here = hidden_and_pooled(embedder, tokens)
            hidden.append(states)
            if embedder is pooler:
                pooled = pooled_here
        assert pooled is not None
        return torch.cat(hidden, dim=-1), pooled

    def encode_chunked(self, prompts: list[str], chunking: bool, emphasis: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts read the A1111 way in both towers (its sd_hijack_clip, which SDXL's conditioner runs per tower).

        Each prompt's chunks (the same in both towers: one BPE; each pads its own way) are encoded chunk by chunk, the
        i-th chunks of all prompts as one batch, shorter prompts padded with empty chunks; each chunk's states are
        weighted and rescaled on its own (per prompt, as ldm.models.long_prompts does), the towers' states joined
        along the width and the chunks along the sequence. The pooled output is the first chunk's, unweighted (A1111:
        `zs[0].pooled`, taken before emphasis). One chunk without emphasis gives exactly the tokens, so the
        output, of `encode` without chunking."""
        pooler = self._pooling_embedder()
        chunked = [[prompt_chunks(e.vocabulary(), p, chunking, emphasis) for p in prompts] for e in self.embedders]
        count = max(len(chunks) for tower in chunked for chunks in tower)
        contexts, pooled = [], None
        for embedder, tower in zip(self.embedders, chunked):
            empty = prompt_chunks(embedder.vocabulary(), "")[0]
            tower = [chunks + [empty] * (count - len(chunks)) for chunks in tower]
            device = embedder.model.positional_embedding.device
            states = []
            for i in range(count):
                tokens = torch.tensor([chunks[i].tokens for chunks in tower], device=device)
                hidden, pooled_here = hidden_and_pooled(embedder, tokens)
                if emphasis:
                    hidden = torch.cat([emphasise(h[None], chunks[i].weights) for h, chunks in zip(hidden, tower)])
                states.append(hidden)
                if i == 0 and embedder is pooler:
                    pooled = pooled_here
            contexts.append(torch.cat(states, dim=1))
        assert pooled is not None
        return torch.cat(contexts, dim=-1), pooled

    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        return self.encode(prompts)[0]
