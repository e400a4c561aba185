"""Cross-attention U-Net with the original Stable Diffusion module layout.

Attribute names (input_blocks, middle_block, output_blocks, time_embed, out, label_emb,
in_layers/emb_layers/out_layers, proj_in/transformer_blocks/proj_out, ...) follow the
original checkpoints so their state dicts load with no renaming.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.core.errors import InvalidOptionError
from ldm.models.attention import attention
from ldm.models.sinusoidal import timestep_embedding
from ldm.models.t2i_adapter import level_ends


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 so half-precision activations do not lose the statistics.

    The affine weights go to fp32 with the input: the CPU kernel refuses fp32 input with bf16 weights.
    (`.float()` of an fp32 tensor is the tensor itself, so fp32 models pay nothing.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-init output layers so every residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks receive the time embedding and transformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                out_size: tuple[int, int] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, out_size)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # Upsampling to the skip connection's size (not blindly x2) lets odd latent sizes
        # through, e.g. 72 px / f=8 = 9 -> 5 -> 9; where sizes divide it is the plain x2.
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))  # noqa: E501
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))  # noqa: E501
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training:
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):  # noqa: E501
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, dropout: float = 0.0,
                 disable_self_attn: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.use_checkpoint = use_checkpoint
        # With self-attention disabled (SD x4 upscaler), attn1 attends to the context too.
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and self.training:
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context if self.disable_self_attn else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with a linear or 1x1-conv projection."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1, context_dim: int | None = None,
                 dropout: float = 0.0, disable_self_attn: bool = False, use_linear: bool = False, use_checkpoint: bool = False):  # noqa: E501
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, disable_self_attn, use_checkpoint)
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        # contiguous(): the transposed view is channels-last, which would make every later
        # convolution reorder its input (measured: ~25% of a CPU forward).
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual


def _per_level(value: int | Sequence[int], levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    if len(value) != levels:
        raise InvalidOptionError(f"{name} needs one entry per channel_mult level ({levels}), got {len(value)}")
    return list(value)


GUIDANCE_EMBED_FACTOR = 100.0  # w * 100 goes into the timestep embedding


class UNetModel(nn.Module):
    """The SD 2.x denoiser: unet(x, timesteps, context, y) -> eps or v.

    Constructor arguments carry the names of the original `UNetModel` so original YAML
    configs map onto it directly; arguments that only mattered to the reference
    implementation (image_size, use_fp16, ...) are accepted and ignored.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int | Sequence[int],
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_classes: int | str | None = None,
        use_checkpoint: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        use_spatial_transformer: bool = True,
        transformer_depth: int | Sequence[int] = 1,
        context_dim: int | Sequence[int] | None = None,
        legacy: bool = True,
        disable_self_attentions: Sequence[bool] | None = None,
        num_attention_blocks: Sequence[int] | None = None,
        disable_middle_self_attn: bool = False,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
        conv_resample: bool = True,
        dims: int = 2,
        resblock_updown: bool = False,
        guidance_embed: bool = False,
        image_size: int | None = None,  # in every SD 2.x YAML; the U-Net is size-agnostic, so unused
        use_fp16: bool = False,  # likewise: precision is the caller's autocast (--precision), not the config's
    ):
        super().__init__()
        if not use_spatial_transformer:
            raise InvalidOptionError("only use_spatial_transformer=True U-Nets (all SD 2.x models) are supported")
        if dims != 2 or not conv_resample or resblock_updown:
            raise InvalidOptionError("only 2-D U-Nets with conv resampling and no resblock_updown are supported")
        if num_heads == -1 and num_head_channels == -1:
            raise InvalidOptionError("set num_heads or num_head_channels")
        levels = len(channel_mult)
        if isinstance(context_dim, (list, tuple)):  # one per level (SDXL refiner's YAML); all alike there
            if len(set(context_dim)) != 1:
                raise InvalidOptionError(f"context_dim must be one width for all levels, got {list(context_dim)}")
            context_dim = int(context_dim[0])
        num_res_blocks = _per_level(num_res_blocks, levels, "num_res_blocks")
        depths = _per_level(transformer_depth, levels, "transformer_depth")
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.num_classes = num_classes
        self.num_res_blocks = num_res_blocks  # per level: what names its blocks the diffusers way (ldm.adapters.kohya)
        time_dim = model_channels * 4

        def heads_for(ch: int) -> tuple[int, int]:
            if num_head_channels == -1:
                heads, dim_head = num_heads, ch // num_heads
            else:
                heads, dim_head = ch // num_head_channels, num_head_channels
            if legacy:  # the original "legacy" flag always derives dim_head from the head count
                dim_head = ch // heads
            return heads, dim_head

        def transformer(ch: int, level: int, disable_sa: bool) -> SpatialTransformer:
            heads, dim_head = heads_for(ch)
            return SpatialTransformer(ch, heads, dim_head, depths[level], context_dim, dropout,
                                      disable_sa, use_linear_in_transformer, use_checkpoint)

        def resblock(ch: int, out: int) -> ResBlock:
            return ResBlock(ch, time_dim, dropout, out, use_scale_shift_norm, use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if isinstance(num_classes, int):
            self.label_emb = nn.Embedding(num_classes, time_dim)
        elif num_classes == "continuous":
            self.label_emb = nn.Linear(1, time_dim)
        elif num_classes == "sequential":
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm_in_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)))  # noqa: E501
        elif num_classes is not None:
            raise InvalidOptionError(f"unknown num_classes {num_classes!r}")
        if guidance_embed:  # a guidance-distilled student's scale w (ldm.diffusion.distillation), added like the time embedding;  # noqa: E501
            # its last layer starts at zero, so a student made from its teacher begins as the conditional teacher
            self.guidance_embed = nn.Sequential(nn.Linear(model_channels, time_dim), nn.SiLU(),
                                                zero_module(nn.Linear(time_dim, time_dim)))

        ch = model_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            disable_sa = bool(disable_self_attentions[level]) if disable_self_attentions else False
            for nr in range(num_res_blocks[level]):
                layers: list[nn.Module] = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions and (num_attention_blocks is None or nr < num_attention_blocks[level]):
                    layers.append(transformer(ch, level, disable_sa))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            resblock(ch, ch), transformer(ch, levels - 1, disable_middle_self_attn), resblock(ch, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            disable_sa = bool(disable_self_attentions[level]) if disable_self_attentions else False
            for i in range(num_res_blocks[level] + 1):
                layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions and (num_attention_blocks is None or i < num_attention_blocks[level]):
                    layers.append(transformer(ch, level, disable_sa))
                if level and i == num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))  # noqa: E501

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (fp32, or bf16 / fp16 for a model cast to half precision)."""
        return self.input_blocks[0][0].weight.dtype

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, (ResBlock, BasicTransformerBlock)):
                m.use_checkpoint = enabled

    guidance_embedded = property(lambda self: hasattr(self, "guidance_embed"))  # a distilled student's scale input

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                control: list[torch.Tensor] | None = None,
                adapter: list[torch.Tensor] | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise InvalidOptionError("pass y exactly when the U-Net has a class/noise-level embedding (num_classes)")
        if (guidance is not None) != self.guidance_embedded:
            raise InvalidOptionError("pass guidance exactly when the U-Net takes the guidance scale (guidance_embed)")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        # Inputs in the weights' dtype: samplers keep latents in fp32 and the text encoder may differ, while a
        # layer needs its input in its own dtype. No-ops for fp32 weights (and autocast then picks as before).
        x = x.to(self.dtype)
        context = context.to(self.dtype) if context is not None else None
        y = y.to(self.dtype) if y is not None and y.is_floating_point() else y
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        if guidance is not None:  # scales of 0..~15 spread over the sinusoids as timesteps 0..~1000 do
            w = timestep_embedding(guidance.to(x.device).expand(x.shape[0]) * GUIDANCE_EMBED_FACTOR, self.model_channels)  # noqa: E501
            emb = emb + self.guidance_embed(w.to(x.dtype))
        skips, h = [], x
        ends = level_ends(self.num_res_blocks) if adapter is not None else []  # T2I-Adapters' features: skips too
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if index in ends:
                h = h + adapter[ends.index(index)].to(h.dtype)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if control is not None:  # ControlNets' residuals (ldm.models.controlnet): one per skip, then the middle's
            skips, h = [s + r.to(s.dtype) for s, r in zip(skips, control)], h + control[-1].to(h.dtype)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            next_size = tuple(skips[-1].shape[-2:]) if skips else None
            h = block(h, emb, context, next_size)
        return self.out(h)
