"""The modules behind LoRA (ldm.adapters.lora): a low-rank update, the layers that carry one, and where they go.

A *host* replaces an nn.Linear, nn.Conv2d or nn.MultiheadAttention in place. It is an instance of the
same class, shares the very same Parameter objects (so the base keeps its state-dict keys and an
optimizer over the base sees the same tensors) and adds an `adapters` dict of named low-rank updates.
With no adapter left, `unwrap` gives back the original module, which was never modified.

Linear and convolution hosts add the adapters' outputs to the base's (`up(down(dropout(x)))`, so the
input dropout of the LoRA paper applies). nn.MultiheadAttention never calls its projections' forward
(it reads the fused `in_proj_weight` and `out_proj.weight` directly), so its host adds each adapter's
weight delta to q, k, v (slices of the fused weight) or the output projection, and runs the original
forward with those weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ldm.core.errors import LdmError

MHA_SLOTS = ("in_proj_q", "in_proj_k", "in_proj_v", "out_proj")
# Target groups: what `add_lora(targets=...)` names. The U-Net's attention projections are the usual choice.
GROUPS = ("attn", "proj", "ff", "conv", "text")
DEFAULT_GROUPS = ("attn",)


class LoraError(LdmError, ValueError):
    """A LoRA file, target or option that does not fit the model."""


class LowRank(nn.Module):
    """scale * up(down(x)) with scale = multiplier * alpha / rank; up starts at zero, so a new adapter changes nothing.

    For a convolution, down is a kxk convolution with the base's stride, padding and dilation and up a 1x1
    one, so up(down(x)) is the base convolution with the weight delta `up @ down` (`delta()`).
    """

    def __init__(self, down: nn.Module, up: nn.Module, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.down, self.up = down, up
        self.rank = down.weight.shape[0]
        self.alpha = float(alpha)
        self.multiplier = 1.0
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    @property
    def scale(self) -> float:
        return self.multiplier * self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.dropout(x))) * self.scale

    def delta(self) -> torch.Tensor:
        """The update of the base weight, shaped like it: scale * up @ down."""
        down = self.down.weight
        return ((self.up.weight.flatten(1) @ down.flatten(1)) * self.scale).reshape(-1, *down.shape[1:])


def linear_lowrank(in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0) -> LowRank:
    return LowRank(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=False), alpha, dropout)


def conv_lowrank(base: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0) -> LowRank:
    if base.groups != 1:
        raise LoraError(f"LoRA on a grouped convolution (groups={base.groups}) is not supported")
    down = nn.Conv2d(
        base.in_channels,
        rank,
        base.kernel_size,
        base.stride,
        base.padding,
        base.dilation,
        bias=False,
        padding_mode=base.padding_mode,
    )
    return LowRank(down, nn.Conv2d(rank, base.out_channels, 1, bias=False), alpha, dropout)


def _wrap(base: nn.Module, cls: type) -> nn.Module:
    """An instance of `cls` (a subclass of base's class) sharing base's parameters, buffers and submodules."""
    host = cls.__new__(cls)
    host.__dict__.update(base.__dict__)
    host._modules = dict(base._modules)  # its own dict: the adapters are not added to the base
    host.__dict__["_base"] = base  # not a submodule: kept to be handed back by unwrap()
    host.adapters = nn.ModuleDict()
    return host


class _Host:
    """What the three hosts share: named adapters, and handing the original module back."""

    adapters: nn.ModuleDict

    def unwrap(self) -> nn.Module:
        base = self.__dict__["_base"]
        base._parameters = self._parameters  # the same tensors (a load with assign=True may have replaced them)
        base.train(self.training)
        return base


class LoRALinear(nn.Linear, _Host):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        for adapter in self.adapters.values():
            out = out + adapter(x)
        return out

    def new_adapter(self, slot: str | None, rank: int, alpha: float, dropout: float = 0.0) -> LowRank:
        return linear_lowrank(self.in_features, self.out_features, rank, alpha, dropout)


class LoRAConv2d(nn.Conv2d, _Host):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, self.bias)
        for adapter in self.adapters.values():
            out = out + adapter(x)
        return out

    def new_adapter(self, slot: str | None, rank: int, alpha: float, dropout: float = 0.0) -> LowRank:
        return conv_lowrank(self, rank, alpha, dropout)


class LoRAMultiheadAttention(nn.MultiheadAttention, _Host):
    """Adapters on q, k, v (slices of the fused in_proj_weight) and out_proj, as weight deltas.

    Each entry of `adapters` is a ModuleDict slot -> LowRank (slots: MHA_SLOTS). Input dropout has no
    weight-space form, so these adapters take none.
    """

    def new_adapter(self, slot: str | None, rank: int, alpha: float, dropout: float = 0.0) -> LowRank:
        if slot not in MHA_SLOTS:
            raise LoraError(f"unknown attention projection {slot!r}; known: {', '.join(MHA_SLOTS)}")
        return linear_lowrank(self.embed_dim, self.embed_dim, rank, alpha)

    def forward(self, *args, **kwargs):
        if not self.adapters or self.__dict__.get("_in_call"):
            return super().forward(*args, **kwargs)
        parts = list(self.in_proj_weight.split(self.embed_dim))
        out_weight = self.out_proj.weight
        for slots in self.adapters.values():
            for i, slot in enumerate(MHA_SLOTS[:3]):
                if slot in slots:
                    parts[i] = parts[i] + slots[slot].delta()
            if "out_proj" in slots:
                out_weight = out_weight + slots["out_proj"].delta()
        self.__dict__["_in_call"] = True
        try:  # the original forward, with these two weights in place of the parameters
            return functional_call(
                self, {"in_proj_weight": torch.cat(parts), "out_proj.weight": out_weight}, args, kwargs
            )
        finally:
            self.__dict__["_in_call"] = False


HOSTS = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d, nn.MultiheadAttention: LoRAMultiheadAttention}
HOST_TYPES = tuple(HOSTS.values())


@dataclass(frozen=True)
class Target:
    """A place an adapter can go: the module at `path` (a Linear, Conv2d or MultiheadAttention) and, for
    attention, which projection (`slot`). Its name (ldm.adapters.lora's file keys) is path, or path.slot."""

    path: str
    slot: str | None = None
    group: str = ""

    @property
    def name(self) -> str:
        return f"{self.path}.{self.slot}" if self.slot else self.path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unet_targets(prefix: str, unet: nn.Module) -> list[Target]:
    from ldm.models.unet import CrossAttention, Downsample, FeedForward, ResBlock, SpatialTransformer, Upsample

    out = []
    for path, m in unet.named_modules(prefix=prefix):
        if isinstance(m, CrossAttention):
            out += [Target(f"{path}.{n}", group="attn") for n in ("to_q", "to_k", "to_v", "to_out.0")]
        elif isinstance(m, SpatialTransformer):
            out += [Target(f"{path}.{n}", group="proj") for n in ("proj_in", "proj_out")]
        elif isinstance(m, FeedForward):
            out += [Target(f"{path}.net.0.proj", group="ff"), Target(f"{path}.net.2", group="ff")]
        elif isinstance(m, ResBlock):
            names = ["in_layers.2", "emb_layers.1", "out_layers.3"]
            names += ["skip_connection"] if isinstance(m.skip_connection, nn.Conv2d) else []
            out += [Target(f"{path}.{n}", group="conv") for n in names]
        elif isinstance(m, Downsample):
            out.append(Target(f"{path}.op", group="conv"))
        elif isinstance(m, Upsample):
            out.append(Target(f"{path}.conv", group="conv"))
    return out


def _text_targets(prefix: str, encoder: nn.Module) -> list[Target]:
    out = []
    for i, _ in enumerate(encoder.model.transformer.resblocks):
        block = _join(prefix, f"model.transformer.resblocks.{i}")
        out += [Target(f"{block}.attn", slot, "text") for slot in MHA_SLOTS]
        out += [Target(f"{block}.mlp.c_fc", group="text"), Target(f"{block}.mlp.c_proj", group="text")]
    return out


def model_targets(model: nn.Module, groups: tuple[str, ...] | list[str] = GROUPS) -> dict[str, Target]:
    """Every place of the given groups in the model (a LatentDiffusion, a bare U-Net or text encoder), by name."""
    from ldm.models.text_encoder import FrozenTextEncoder
    from ldm.models.unet import UNetModel

    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise LoraError(f"unknown LoRA target {unknown[0]!r}; known: {', '.join(GROUPS)}")
    targets = []
    for path, m in model.named_modules():
        if isinstance(m, UNetModel):
            targets += _unet_targets(path, m)
        elif isinstance(m, FrozenTextEncoder):
            targets += _text_targets(path, m)
    return {t.name: t for t in targets if t.group in groups}


def host_at(model: nn.Module, path: str, wrap: bool = True) -> nn.Module:
    """The module at `path`, replaced by its host first if it is not one yet (and wrap is set)."""
    module = model.get_submodule(path)
    if isinstance(module, HOST_TYPES) or not wrap:
        return module
    cls = HOSTS.get(type(module))
    if cls is None:
        raise LoraError(f"cannot put a LoRA on {path} ({type(module).__name__})")
    parent_path, _, name = path.rpartition(".")
    host = _wrap(module, cls)
    setattr(model.get_submodule(parent_path) if parent_path else model, name, host)
    return host


def hosts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, HOST_TYPES)]


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters the model carries, in the order they were added."""
    names: dict[str, None] = {}
    for _, host in hosts(model):
        names.update(dict.fromkeys(host.adapters))
    return list(names)


def drop_adapter(model: nn.Module, name: str) -> None:
    """Remove one named adapter everywhere; hosts left with none give the original module back."""
    for path, host in hosts(model):
        if name in host.adapters:
            del host.adapters[name]
        if not host.adapters:
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, attr, host.unwrap())
