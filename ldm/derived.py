"""Models shipped as a change to another: the inpainter and the upscaler beside the default model.

Every model in checkpoints/ shares one size budget, with each shared part stored once (tests/
test_shipped_budget.py). So a model made from the default one ships only what it changed, and its inference
config names the file it changes (`base:`, relative to the config):

    model: {target: ldm.models.latent_diffusion.LatentDiffusion, params: {...}}   # the derived model's own architecture
    base: model.safetensors
    parts: {vae: upscaler-vae.safetensors}   # optional: a submodule kept in a file of its own

`parts` maps a submodule to a file of its own tensors (a standalone autoencoder, shipped so that a lost run
cannot cost it): they go over the base's. Its weights file holds whole tensors under the model's own names (the inpainter's widened first
convolution; the upscaler's U-Net and autoencoder) and, optionally, LoRA tensors (`.lora_down.weight`,
`.lora_up.weight`, `.alpha`; ldm.adapters.lora). Loading takes every base tensor the model has, puts the whole
tensors over them, checks the result strictly (ldm.io.checkpoint.load_into) and merges the LoRA in:

    W = W_base + (alpha / rank) * up @ down
"""  # noqa: E501

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ldm.core.errors import MissingFileError
from ldm.io.checkpoint import CheckpointError, load_into, load_state_dict

log = logging.getLogger(__name__)


def split_derived(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(whole tensors, LoRA tensors) of a derived model's file; LoRA keys end as ldm.adapters.lora names them."""
    from ldm.adapters.lora import SUFFIXES

    lora = {k: v for k, v in state.items() if k.endswith(tuple(SUFFIXES))}
    return {k: v for k, v in state.items() if k not in lora}, lora


def base_path(base: str | Path, config_path: str | Path | None) -> Path:
    """The base file a config's `base:` names: relative to the config's folder (or as given without one)."""
    path = Path(base)
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).parent / path
    if not path.is_file():
        raise MissingFileError(f"the base model {path} that the config's 'base:' names is missing")
    return path


def part_paths(parts: dict | None, config_path: str | Path | None) -> dict[str, Path]:
    """The files a config's `parts:` names, by submodule, checked to exist (see the module docstring)."""
    if parts is None:
        return {}
    if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
        raise CheckpointError("the config's 'parts:' must map submodule names to weight files")
    return {str(prefix): base_path(file, config_path) for prefix, file in parts.items()}


def base_state(
    own: dict[str, torch.Tensor], base: str | Path, parts: dict[str, Path] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors the base file and the parts' files give the model (names as in `own`), parts over base."""
    from ldm.io.checkpoint import weights_in_our_layout

    state = {k: v for k, v in weights_in_our_layout(base).items() if k in own}
    for prefix, file in (parts or {}).items():
        tensors = {f"{prefix}.{k}": v for k, v in load_state_dict(file).items()}
        unknown = [k for k in tensors if k not in own]
        if unknown:
            raise CheckpointError(
                f"{file} (part {prefix}): {len(unknown)} tensors the model does not have, e.g. {unknown[0]}"
            )
        state.update(tensors)
    return state


def load_derived_weights(
    model: nn.Module, checkpoint: str | Path, base: str | Path, parts: dict[str, Path] | None = None
) -> None:
    """Fill `model` from its base file, its parts' files and its own file of whole tensors and LoRA (see the
    module docstring)."""
    from ldm.adapters.lora import lora_from_state, merge_lora

    own = model.state_dict()
    whole, lora = split_derived(load_state_dict(checkpoint))
    unknown = [k for k in whole if k not in own]
    if unknown:
        raise CheckpointError(f"{checkpoint}: {len(unknown)} tensors the model does not have, e.g. {unknown[0]}")
    state = base_state(own, base, parts)
    state.update(whole)
    try:
        load_into(model, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint} over {Path(base).name}: {exc}") from None
    if lora:
        merge_lora(model, lora_from_state(lora, model, Path(checkpoint).name))


FIRST_CONV = "unet.input_blocks.0.0.weight"


def widen_unet_input(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the U-Net's first convolution zero-padded to the model's input channels.

    The init weights' channels stay first (the noisy latent), the new ones (mask, masked-image latent) get
    zero weights: the widened U-Net computes exactly what the init model did until training teaches it to
    use them, the recipe of SD 2 inpainting.
    """
    weight, target = state.get(FIRST_CONV), own.get(FIRST_CONV)
    if weight is None or target is None:
        raise CheckpointError(f"init.widen_input: no {FIRST_CONV} in the init weights or the model")
    if weight.shape[1] >= target.shape[1] or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        raise CheckpointError(
            f"init.widen_input: cannot widen {tuple(weight.shape)} to {tuple(target.shape)} "
            "(only more input channels, same everything else)"
        )
    wide = torch.zeros(target.shape, dtype=weight.dtype)
    wide[:, : weight.shape[1]] = weight
    log.info(
        "widened the U-Net's input from %d to %d channels (new ones start at zero)", weight.shape[1], target.shape[1]
    )
    return {**state, FIRST_CONV: wide}


def load_adapter(model: nn.Module, path: str | Path, name: str = "default") -> None:
    """Start the model's adapter `name` (added by add_lora, same targets and rank) from a LoRA run's export, and
    its whole tensors (lora.train_whole) too: training continues from that adapter instead of from zero."""
    from ldm.adapters.lora import LoraError, _adapters

    whole, state = split_derived(load_state_dict(path))
    adapters = _adapters(model, name)
    missing = [t for t in adapters if f"{t}.lora_down.weight" not in state]
    if missing or len(state) != 3 * len(adapters):
        raise LoraError(
            f"{path} does not fit the adapter being trained (other targets or layers), e.g. "
            f"{(missing or sorted(state))[0]}"
        )
    with torch.no_grad():
        for target, adapter in adapters.items():
            for part, module in (("down", adapter.down), ("up", adapter.up)):
                value = state[f"{target}.lora_{part}.weight"]
                if value.shape != module.weight.shape:
                    raise LoraError(
                        f"{path}: {target} has rank {value.shape} where the adapter has {tuple(module.weight.shape)}"
                    )
                module.weight.copy_(value)
    unknown = set(whole) - set(model.state_dict())
    if unknown:
        raise LoraError(f"{path}: whole tensor {sorted(unknown)[0]} is not in the model")
    model.load_state_dict(whole, strict=False)
