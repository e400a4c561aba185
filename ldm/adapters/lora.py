"""LoRA: low-rank adapters to fine-tune a model, and LoRA files to apply at generation time or merge.

An adapter adds `(alpha / rank) * up @ down` to a frozen weight W (out x in): down is rank x in, up is
out x rank and starts at zero, so training starts from the base model and only r * (in + out) numbers per
module are learnt. `add_lora` puts trainable adapters on the U-Net's attention projections (more with
`targets`), `save_lora` writes only them, `apply_lora` / `remove_lora` use LoRA files at chosen weights
(several at once), and `merge_lora` bakes one into the weights: W + weight * (alpha / rank) * up @ down.

Files: ours name each module by its path in the model (`unet.input_blocks.1.1.transformer_blocks.0.attn1
.to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`) and carry the LoRA config in the safetensors
metadata; the kohya / A1111 layout (`lora_unet_...`, `lora_te_...`) is read too (ldm.adapters.kohya).

Why not peft: it would pull in transformers and accelerate for a few lines of maths, and it does not fit
two of our module kinds: open_clip's nn.MultiheadAttention takes q, k and v from one fused in_proj_weight
(its forward never calls a projection module), and the kohya layout names modules the diffusers way,
which peft does not map either. Our modules are plain nn.Linear / nn.Conv2d otherwise (ldm.adapters.lora_layers).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ldm.adapters.kohya import KOHYA_PREFIXES, kohya_names, to_kohya
from ldm.adapters.lora_layers import (
    DEFAULT_GROUPS,
    GROUPS,
    MHA_SLOTS,
    LoraError,
    LoRAMultiheadAttention,
    LowRank,
    Target,
    adapter_names,
    drop_adapter,
    host_at,
    hosts,
    model_targets,
)
from ldm.core.errors import MissingFileError
from ldm.io.checkpoint import CheckpointError, file_sha256, load_state_dict, save_state_dict

log = logging.getLogger(__name__)

__all__ = [  # fmt: skip
    "GROUPS", "LoraError", "LoraWeights", "add_lora", "apply_lora", "lora_state_dict", "merge_adapter", "merge_lora",
    "parse_lora_spec", "read_lora", "remove_lora", "save_lora", "using_loras",
]

SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
FORMAT = "ldm-lora"
# The largest |weight| a LoRA is applied at. LoRAs are used at about -2..2 and "slider" LoRAs at up to about
# +-10; far past that the update swamps the weights it adapts and the image comes out as noise or black.
MAX_LORA_WEIGHT = 100.0
# The largest |alpha / rank|, the scale a file gives its own update: trainers set alpha at or below the rank, a few
# times it at most, so a larger one is a wrongly written file (an alpha of 1e30 turns every image black).
MAX_LORA_SCALE = 1000.0


@dataclass
class LoraModule:
    key: str  # the file's name for it (ours or kohya's), for messages
    down: torch.Tensor  # rank x in (x k x k)
    up: torch.Tensor  # out x rank (x 1 x 1)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class LoraWeights:
    """A LoRA read for one model: our target name -> its low-rank update."""

    modules: dict[str, LoraModule]
    source: str = "LoRA"
    metadata: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None


def _check_hyper(rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise LoraError(f"LoRA rank must be a whole number >= 1, got {rank!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise LoraError(f"LoRA alpha must be a finite number > 0, got {alpha}")
    if alpha / rank > MAX_LORA_SCALE:
        raise LoraError(f"LoRA alpha / rank must be at most {MAX_LORA_SCALE:g}, got {alpha:g} / {rank}")
    if not 0 <= dropout < 1:
        raise LoraError(f"LoRA dropout must be in [0, 1), got {dropout}")


def _attach(host: nn.Module, name: str, slot: str | None, adapter: LowRank) -> None:
    weight = host.in_proj_weight if isinstance(host, LoRAMultiheadAttention) else host.weight
    adapter.to(device=weight.device, dtype=weight.dtype)
    if isinstance(host, LoRAMultiheadAttention):
        if name not in host.adapters:
            host.adapters[name] = nn.ModuleDict()
        host.adapters[name][slot] = adapter
    else:
        host.adapters[name] = adapter


def add_lora(model: nn.Module, targets: str | Sequence[str] = DEFAULT_GROUPS, rank: int = 4, alpha: float | None = None,
             dropout: float = 0.0, name: str = "default") -> list[str]:
    """Freeze the model and put a trainable adapter on every module of the target groups; returns their names.

    Groups (ldm.adapters.lora_layers.GROUPS): attn (the U-Net's to_q/to_k/to_v/to_out), proj (its transformers'
    proj_in/proj_out), ff (their feed-forward), conv (res block, down- and upsampling convolutions and the
    time-embedding projections), text (the text encoder's attention and MLP). alpha defaults to rank (scale 1).
    """
    targets = [targets] if isinstance(targets, str) else list(targets)  # "attn" is one group, not four letters
    alpha = float(rank if alpha is None else alpha)
    _check_hyper(rank, alpha, dropout)
    found = model_targets(model, tuple(targets))
    if not found:
        raise LoraError(f"the model has no modules of the LoRA targets {', '.join(targets)}")
    if name in adapter_names(model):
        raise LoraError(f"the model already has a LoRA adapter named {name!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    for target in found.values():
        host = host_at(model, target.path)
        _attach(host, name, target.slot, host.new_adapter(target.slot, rank, alpha, dropout))
    configs = model.__dict__.setdefault("lora_configs", {})
    configs[name] = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets)}
    return list(found)


def _adapters(model: nn.Module, name: str) -> dict[str, LowRank]:
    out = {}
    for path, host in hosts(model):
        if name not in host.adapters:
            continue
        entry = host.adapters[name]
        if isinstance(host, LoRAMultiheadAttention):
            out.update({f"{path}.{slot}": adapter for slot, adapter in entry.items()})
        else:
            out[path] = entry
    return out


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors alone, by target name: `<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`."""
    adapters = _adapters(model, name)
    if not adapters:
        raise LoraError(f"the model has no LoRA adapter named {name!r}")
    out = {}
    for target, adapter in adapters.items():
        out[f"{target}.lora_down.weight"] = adapter.down.weight.detach()
        out[f"{target}.lora_up.weight"] = adapter.up.weight.detach()
        out[f"{target}.alpha"] = torch.tensor(adapter.alpha)
    return out


def save_lora(model: nn.Module, path: str | Path, name: str = "default", float_dtype: torch.dtype | None = None,
              extra_metadata: dict[str, str] | None = None, whole: dict[str, torch.Tensor] | None = None,
              kohya: bool = False) -> None:
    """Write the adapter as safetensors (atomically), with its config in the metadata.

    whole: tensors trained whole beside the adapter (lora.train_whole), stored under their model names; such a
    file is a model derived from its base (ldm.formats.derived), not a LoRA to apply to any model.
    kohya: the modules named kohya's way (ldm.adapters.kohya.to_kohya), as SDXL LoRAs are shared."""
    config = dict(getattr(model, "lora_configs", {}).get(name, {}))
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in config.items()}, **(extra_metadata or {})}
    base = (getattr(model, "identity", None) or {}).get("model_sha256")  # a LoRA may adapt any module
    if base:
        metadata["base_model_sha256"] = base
    if whole:
        metadata["whole_tensors"] = str(len(whole))
    state = to_kohya(lora_state_dict(model, name), model) if kohya else lora_state_dict(model, name)
    save_state_dict({**state, **(whole or {})}, path, metadata, float_dtype)


def _metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def read_lora(path: str | Path, model: nn.Module) -> LoraWeights:
    """A LoRA file (ours or kohya's), checked against the model: every key must name one of its modules
    with fitting shapes, or a one-line LoraError names the first that does not."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"LoRA file not found: {path}")
    try:
        state = load_state_dict(path)
    except CheckpointError as exc:
        raise LoraError(str(exc)) from None
    weights = lora_from_state(state, model, path.name)
    weights.metadata, weights.sha256 = _metadata(path), file_sha256(path)
    base = weights.metadata.get("base_model_sha256")
    own = (getattr(model, "identity", None) or {}).get("model_sha256")
    if base and own and base != own:
        log.warning("%s was trained on another base model (sha256 %s...)", path.name, base[:12])
    return weights


def _split(key: str, source: str) -> tuple[str, str]:
    for suffix, part in SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    raise LoraError(f"{source}: unknown key {key} (expected .lora_down.weight, .lora_up.weight or .alpha)")


def _fit(model: nn.Module, target: Target, module: LoraModule, source: str) -> LoraModule:
    """The module's tensors in the shapes the target's adapter has, or a LoraError naming the key."""
    base = model.get_submodule(target.path)
    down, up = module.down, module.up
    if target.slot is not None:
        shapes = (base.embed_dim, base.embed_dim, ())
    elif isinstance(base, nn.Conv2d):
        shapes = (base.in_channels, base.out_channels, tuple(base.kernel_size))
    else:
        shapes = (base.in_features, base.out_features, ())
    n_in, n_out, kernel = shapes
    rank = down.shape[0] if down.ndim else 0
    want_down, want_up = (rank, n_in, *kernel), (n_out, rank, *((1, 1) if kernel else ()))
    # A 1x1 update stored 2-D for a 1x1 convolution, or 4-D (x 1 x 1) for a linear layer, is the same update.
    if down.numel() == math.prod(want_down) and up.numel() == math.prod(want_up) and kernel in ((), (1, 1)):
        down, up = down.reshape(want_down), up.reshape(want_up)
    if rank < 1 or tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        raise LoraError(f"{source}: {module.key}: lora_down {tuple(module.down.shape)} and lora_up "
                        f"{tuple(module.up.shape)} do not fit {target.name} (in {n_in}, out {n_out}"
                        f"{', kernel ' + 'x'.join(map(str, kernel)) if kernel else ''})")
    for tensor in (down, up):
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise LoraError(f"{source}: {module.key}: tensors must be finite floating-point numbers")
    return LoraModule(module.key, down, up, module.alpha)


def lora_from_state(state: dict[str, torch.Tensor], model: nn.Module, source: str = "LoRA") -> LoraWeights:
    """LoRA tensors (ours or kohya's names) -> LoraWeights for this model, checked key by key."""
    if not state:
        raise LoraError(f"{source}: no tensors")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        stem, part = _split(key, source)
        parts.setdefault(stem, {})[part] = value
    targets = model_targets(model)
    kohya = kohya_names(model, targets) if any(s.startswith(KOHYA_PREFIXES) for s in parts) else {}
    modules = {}
    for stem, tensors in parts.items():
        name = kohya.get(stem) if stem.startswith(KOHYA_PREFIXES) else (stem if stem in targets else None)
        if name is None:
            raise LoraError(f"{source}: {stem}.lora_down.weight names no LoRA-able module of this model")
        for part in ("down", "up"):
            if part not in tensors:
                raise LoraError(f"{source}: {stem} has no lora_{part}.weight")
        down = tensors["down"]
        alpha = float(tensors["alpha"].float().reshape(-1)[0]) if "alpha" in tensors else float(down.shape[0])
        if not math.isfinite(alpha):
            raise LoraError(f"{source}: {stem}.alpha is not a finite number")
        rank = down.shape[0] if down.dim() else 0  # a rank of 0 is refused with the shapes (_fit)
        if rank and abs(alpha) / rank > MAX_LORA_SCALE:
            raise LoraError(
                f"{source}: {stem}.alpha {alpha:g} over rank {rank} is a scale beyond {MAX_LORA_SCALE:g} "
                "(alpha is normally at most a few times the rank)"
            )
        modules[name] = _fit(model, targets[name], LoraModule(stem, down, tensors["up"], alpha), source)
    return LoraWeights(modules, source)


def _record(model: nn.Module, name: str, info: dict | None) -> None:
    """Keep `model.identity["loras"]` (what image metadata records as the model) in step with what is used."""
    used = model.__dict__.setdefault("_lora_used", {})
    if info is None:
        used.pop(name, None)
    else:
        used[name] = info
    identity = model.__dict__.setdefault("identity", {})
    identity.pop("loras", None)
    if used:
        identity["loras"] = list(used.values())


def _weights(model: nn.Module, lora: str | Path | LoraWeights) -> LoraWeights:
    return lora if isinstance(lora, LoraWeights) else read_lora(lora, model)


def _check_weight(weight: float) -> float:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise LoraError(f"LoRA weight must be a finite number, got {weight!r}")
    if abs(weight) > MAX_LORA_WEIGHT:
        raise LoraError(f"LoRA weight must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}, got {weight:g}")
    return float(weight)


def apply_lora(model: nn.Module, lora: str | Path | LoraWeights, weight: float = 1.0, name: str | None = None) -> str:
    """Add a LoRA (file or LoraWeights) to the model's forward at `weight`; returns its name for remove_lora.

    The base weights are not touched, so removing it gives the base model back exactly.
    """
    weight = _check_weight(weight)
    weights = _weights(model, lora)
    existing = adapter_names(model)
    if name is None:
        name = next(f"lora{i}" for i in range(len(existing) + 1) if f"lora{i}" not in existing)
    elif name in existing:
        raise LoraError(f"the model already has a LoRA adapter named {name!r}")
    targets = model_targets(model)
    for target_name, module in weights.modules.items():
        target = targets[target_name]
        host = host_at(model, target.path)
        adapter = host.new_adapter(target.slot, module.rank, module.alpha)
        with torch.no_grad():
            adapter.down.weight.copy_(module.down)
            adapter.up.weight.copy_(module.up)
        adapter.multiplier = weight
        adapter.requires_grad_(False)
        _attach(host, name, target.slot, adapter)
    _record(model, name, {"file": weights.source, "sha256": weights.sha256, "weight": weight})
    return name


def remove_lora(model: nn.Module, name: str | None = None) -> None:
    """Take one adapter (by name) or all of them off the model."""
    names = adapter_names(model) if name is None else [name]
    if name is not None and name not in adapter_names(model):
        raise LoraError(f"the model has no LoRA adapter named {name!r}")
    for n in names:
        drop_adapter(model, n)
        _record(model, n, None)
        getattr(model, "lora_configs", {}).pop(n, None)


@torch.no_grad()
def merge_lora(model: nn.Module, lora: str | Path | LoraWeights, weight: float = 1.0) -> None:
    """Bake a LoRA into the weights: W += weight * (alpha / rank) * up @ down (computed in float32)."""
    weight = _check_weight(weight)
    weights = _weights(model, lora)
    targets = model_targets(model)
    for target_name, module in weights.modules.items():
        target = targets[target_name]
        base = model.get_submodule(target.path)
        delta = (module.up.float().flatten(1) @ module.down.float().flatten(1)) * (weight * module.alpha / module.rank)
        if target.slot is None:
            param = base.weight
        elif target.slot == "out_proj":
            param = base.out_proj.weight
        else:
            i, size = MHA_SLOTS.index(target.slot), base.embed_dim
            param = base.in_proj_weight[i * size:(i + 1) * size]
        param.add_(delta.reshape(param.shape).to(param.device, param.dtype))
    _record(model, f"merged:{weights.source}:{len(getattr(model, '_lora_used', {}))}",
            {"file": weights.source, "sha256": weights.sha256, "weight": weight, "merged": True})


def merge_adapter(model: nn.Module, name: str = "default", weight: float = 1.0) -> None:
    """Bake one of the model's own adapters (e.g. the one just trained) into its weights and take it off."""
    weights = lora_from_state(lora_state_dict(model, name), model, name)
    remove_lora(model, name)
    merge_lora(model, weights, weight)


@contextmanager
def using_loras(model: nn.Module, loras: Sequence[tuple[str | Path | LoraWeights, float]]) -> Iterator[list[str]]:
    """Apply LoRAs (source, weight) for the duration of a block, then take them off again."""
    names: list[str] = []
    try:
        for source, weight in loras:
            names.append(apply_lora(model, source, weight))
        yield names
    finally:
        for name in names:
            remove_lora(model, name)


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """"FILE[:WEIGHT]" -> (FILE, WEIGHT); the weight is 1 when absent."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            path, weight = spec, 1.0
    else:
        path, weight = spec, 1.0
    if not path:
        raise LoraError(f"--lora {spec!r}: give a file, FILE or FILE:WEIGHT")
    if not math.isfinite(weight):
        raise LoraError(f"--lora {spec!r}: the weight must be a finite number")
    if abs(weight) > MAX_LORA_WEIGHT:
        raise LoraError(f"--lora {spec!r}: the weight must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}")
    if not Path(path).is_file():
        raise MissingFileError(f"LoRA file not found: {path}")
    return path, weight
