"""ControlNet files as users have them, for SD 1.x, SD 2.x and SDXL models, told apart by their tensor names:

- the original layout (lllyasviel/ControlNet): everything under `control_model.` (input_blocks.*, zero_convs.*,
  input_hint_block.*, middle_block.*, middle_block_out.*, time_embed.*); the full training checkpoints also hold
  the U-Net, autoencoder and text encoder, which are ignored; some tools save it without the prefix;
- diffusers' ControlNetModel (controlnet_cond_embedding.*, controlnet_down_blocks.*, controlnet_mid_block.* and
  the U-Net encoder's diffusers names): a single file, or a folder with config.json and its weights file.

A ControlNet made for another family (its cross-attention reads another text encoder's width, or it has / lacks
SDXL's vector embedding) is refused in one line before the strict load; any other mismatch of names or shapes is
refused by that load, in one line too. Weights are read with safetensors or weights_only (never running code).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ldm.core.errors import InvalidOptionError, LdmError, MissingFileError
from ldm.formats.t2i_adapter_files import is_t2i_adapter, load_t2i_adapter
from ldm.io.checkpoint import load_state_dict, state_problems
from ldm.io.diffusers_keys import from_diffusers, to_diffusers
from ldm.io.sdxl_keys import sdxl_unet_names
from ldm.models.controlnet import ControlNet
from ldm.models.t2i_adapter import T2IAdapter

log = logging.getLogger(__name__)

ORIGINAL_PREFIX = "control_model."
DIFFUSERS_MARK = "controlnet_cond_embedding."
FOLDER_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
# The text encoder width a U-Net's cross-attention reads, by family (what users call the ControlNets' kinds).
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}


class ControlNetFileError(LdmError, ValueError):
    """A file that is not a ControlNet, or one that does not fit the model."""


def controlnet_names(net: ControlNet) -> dict[str, str]:
    """Our ControlNet key -> diffusers' ControlNetModel's."""
    names = {}
    unet_keys = []
    for key in net.state_dict():
        part, _, rest = key.partition(".")
        if part == "input_hint_block":
            index, _, rest = rest.partition(".")
            last = len(net.input_hint_block) - 1
            inner = "conv_in" if index == "0" else "conv_out" if int(index) == last else f"blocks.{int(index) // 2 - 1}"
            names[key] = f"controlnet_cond_embedding.{inner}.{rest}"
        elif part == "zero_convs":
            index, _, rest = rest.partition(".")
            names[key] = f"controlnet_down_blocks.{index}.{rest.partition('.')[2]}"
        elif part == "middle_block_out":
            names[key] = f"controlnet_mid_block.{rest.partition('.')[2]}"
        else:
            unet_keys.append(key)
    names.update(sdxl_unet_names(unet_keys, net.num_res_blocks))
    return names


def read_controlnet_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, layout) of a ControlNet file or diffusers folder; layout "original" or "diffusers"."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"ControlNet file not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ControlNetFileError(f"{path} is a folder without config.json: not a diffusers ControlNet")
        weights = next((path / name for name in FOLDER_WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            raise ControlNetFileError(f"{path} has no ControlNet weights ({FOLDER_WEIGHTS[0]})")
        path = weights
    state = load_state_dict(path)
    if any(key.startswith(ORIGINAL_PREFIX) for key in state):
        others = [key for key in state if not key.startswith(ORIGINAL_PREFIX)]
        if others:  # a whole training checkpoint (ControlLDM): the base model's weights are not the ControlNet's
            log.info("%s: ignored %d tensors outside control_model.", path.name, len(others))
        return {k[len(ORIGINAL_PREFIX) :]: v for k, v in state.items() if k.startswith(ORIGINAL_PREFIX)}, "original"
    if "input_hint_block.0.weight" in state:
        return state, "original"
    if any(key.startswith(DIFFUSERS_MARK) for key in state):
        return state, "diffusers"
    raise ControlNetFileError(
        f"{path} is not a ControlNet: it has no input_hint_block.* (original layout) or "
        f"controlnet_cond_embedding.* (diffusers) tensors"
    )


def _context_width(state: dict[str, torch.Tensor]) -> int | None:
    key = next((k for k in state if k.endswith("attn2.to_k.weight")), None)
    return int(state[key].shape[1]) if key is not None else None


def _family(width: int | None, vector: bool) -> str:
    name = FAMILIES.get(width, f"a {width}-wide text encoder") if width else "no text"
    return f"{name}{' with a vector embedding' if vector and not name.startswith('SDXL') else ''} (text width {width})"


def check_family(state: dict[str, torch.Tensor], net: ControlNet, where: str) -> None:
    """Refuse a ControlNet (tensors under our names) made for another model family in one line."""
    theirs = _context_width(state)
    ours = _context_width(net.state_dict())
    their_vector = "label_emb.0.0.weight" in state
    our_vector = "label_emb.0.0.weight" in net.state_dict()
    if theirs != ours or their_vector != our_vector:
        raise ControlNetFileError(
            f"{where} is a ControlNet for {_family(theirs, their_vector)}, this model is "
            f"{_family(ours, our_vector)}: use a ControlNet made for this model's family"
        )


def load_controlnet(path: str | Path, model: torch.nn.Module) -> ControlNet | T2IAdapter:
    """The ControlNet in `path` (either layout) for `model` (a LatentDiffusion): its encoder's architecture is the
    model's U-Net's, its first convolution takes the latent's channels, its hint encoder the autoencoder's f.
    A T2I-Adapter (told by its tensor names, ldm.formats.t2i_adapter_files) is loaded as such: one `--control`
    syntax, and every caller (command line, server, app) takes both kinds."""
    if is_t2i_adapter(path):
        return load_t2i_adapter(path, model)
    state, layout = read_controlnet_state(path)
    net = ControlNet(model.unet, model.latent_channels, model.downscale)
    if net.downscale != 8 and layout == "diffusers":
        raise ControlNetFileError(
            f"{path}: diffusers' ControlNets take images down by f=8, this model's autoencoder by f={net.downscale}"
        )
    if layout == "diffusers":
        state = from_diffusers(state, controlnet_names(net))
    check_family(state, net, str(path))
    problems = state_problems(net.state_dict(), state)
    if problems:
        raise ControlNetFileError(
            f"{path} does not fit this model's ControlNet ({layout} layout): {'; '.join(problems)}"
        )
    net.load_state_dict({k: v.to(net.dtype) if v.is_floating_point() else v for k, v in state.items()})
    return net.eval()


def save_controlnet(net: ControlNet, path: str | Path, layout: str = "original", prefix: bool = True) -> Path:
    """Write `net` as a .safetensors file in the original layout (under control_model. unless prefix=False) or
    diffusers' (single file)."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if layout == "diffusers":
        state = to_diffusers(state, controlnet_names(net))
    elif layout != "original":
        raise InvalidOptionError(f"unknown ControlNet layout {layout!r}; known: original, diffusers")
    elif prefix:
        state = {ORIGINAL_PREFIX + k: v for k, v in state.items()}
    path = Path(path)
    save_file(state, str(path))
    return path


# diffusers' ControlNetModel keys that are its U-Net's (UNet2DConditionModel's config, ldm.formats.diffusers_export).
_UNET_KEYS = (
    "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type", "only_cross_attention",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
    "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
)  # fmt: skip


def controlnet_config(net: ControlNet, unet_params: dict[str, Any]) -> dict[str, Any]:
    """The config.json of diffusers' ControlNetModel for `net`, built from a U-Net of `unet_params` (our UNetModel's
    params): the U-Net's encoder settings, and the hint encoder diffusers builds (16 32 96 256, f = 8)."""
    from ldm.formats.diffusers import DIFFUSERS_VERSION
    from ldm.formats.diffusers_export import unet_config

    if net.downscale != 8:
        raise ControlNetFileError(f"diffusers' ControlNets take images down by f=8, this one by f={net.downscale}")
    if "label_emb.0.0.weight" in net.state_dict():
        raise ControlNetFileError(
            "an SDXL ControlNet has no diffusers folder here: write its single file (save_controlnet, layout diffusers)"
        )
    unet = unet_config(unet_params, image_size=64)
    return {
        "_class_name": "ControlNetModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": net.in_channels,
        "conditioning_channels": net.input_hint_block[0].in_channels,
        **{key: unet[key] for key in _UNET_KEYS},
        "controlnet_conditioning_channel_order": "rgb",
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "global_pool_conditions": False,
    }


def save_controlnet_folder(
    net: ControlNet,
    unet_params: dict[str, Any],
    out: str | Path,
    float_dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `net` as diffusers' ControlNetModel.save_pretrained does: a folder of config.json and
    diffusion_pytorch_model.safetensors, made beside `out` and renamed into place when complete."""
    from ldm.formats.diffusers_export import _write_json, atomic_folder
    from ldm.io.checkpoint import save_state_dict

    config = controlnet_config(net, unet_params)
    state = to_diffusers({k: v.detach() for k, v in net.state_dict().items()}, controlnet_names(net))
    with atomic_folder(Path(out)) as tmp:
        _write_json(tmp / "config.json", config)
        save_state_dict(state, tmp / FOLDER_WEIGHTS[0], {"format": "pt", **(metadata or {})}, float_dtype)
    return Path(out)
