"""Which files hold a diffusers folder part's weights, and reading them: one file or shards, plain or fp16.

A part (`unet/`, `vae/`, `text_encoder/`) keeps its tensors in one file (`diffusion_pytorch_model.safetensors`;
transformers' `model.safetensors`), or in shards listed by an index (`<file>.index.json`, whose `weight_map`
names each tensor's shard in the same folder). Either may come as a variant, the `fp16` copy, with the
variant before the last suffix (`diffusion_pytorch_model.fp16.safetensors`,
`diffusion_pytorch_model.safetensors.index.fp16.json`), as diffusers and transformers name them.

The full-precision files win over the fp16 variant when both are there, and safetensors over pickles at the
same precision; pickled `.bin` files are read with weights_only=True (ldm.io.checkpoint.load_state_dict), so
reading never runs code. Shard names must be plain file names of the index's own format.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ldm.io.checkpoint import CheckpointError, load_state_dict

log = logging.getLogger(__name__)

# Per part: (safetensors file, pickle file), as diffusers (unet, vae) and transformers (text_encoder) name them.
WEIGHTS = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
    "text_encoder_2": ("model.safetensors", "pytorch_model.bin"),
}  # SDXL's second tower (ldm.formats.sdxl_diffusers)
VARIANTS = (None, "fp16")  # in order of preference: the full-precision files first


class DiffusersFolderError(CheckpointError):
    """A diffusers folder that is incomplete, or holds a layout or options we cannot build."""


class DiffusersWeightsError(DiffusersFolderError):
    """A part's weights that are missing, or an index that does not describe its shards."""


def with_variant(name: str, variant: str | None) -> str:
    """`name` with `variant` before its last suffix: model.safetensors -> model.fp16.safetensors,
    model.safetensors.index.json -> model.safetensors.index.fp16.json."""
    if variant is None:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def candidates(part: str) -> list[tuple[str, bool]]:
    """(file name, is an index) in the order they are looked for."""
    out = []
    for variant in VARIANTS:
        for name in WEIGHTS[part]:
            out += [(with_variant(name, variant), False), (with_variant(f"{name}.index.json", variant), True)]
    return out


def _index(path: Path, shard_suffix: str) -> dict[str, str]:
    """An index's weight_map (tensor -> shard file name), checked."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffusersWeightsError(f"{path} is no readable JSON index: {str(exc).splitlines()[0]}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        raise DiffusersWeightsError(f"{path} has no weight_map of tensor names to shard files")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard.startswith(".") or not shard.endswith(shard_suffix):
            raise DiffusersWeightsError(f"{path}: shard {shard!r} is not a {shard_suffix} file beside the index")
    return weight_map


def part_files(folder: Path, part: str) -> list[Path]:
    """The files that hold `part`'s weights: [the file], or [the index, its shards...]."""
    for name, is_index in candidates(part):
        path = folder / part / name
        if not path.is_file():
            continue
        if not is_index:
            return [path]
        shard_suffix = "." + name.split(".")[1]  # .safetensors or .bin
        shards = sorted(set(_index(path, shard_suffix).values()))
        missing = [s for s in shards if not (path.parent / s).is_file()]
        if missing:
            raise DiffusersWeightsError(
                f"{folder} is no complete diffusers folder: {part}/{missing[0]} (a shard {path.name} names) is missing"
            )
        return [path] + [path.parent / s for s in shards]
    raise DiffusersWeightsError(f"{folder} is no complete diffusers folder: {part}/{WEIGHTS[part][0]} is missing")


def load_part(folder: Path, part: str) -> dict[str, torch.Tensor]:
    """All of `part`'s tensors, from its file or its shards (each tensor where the index says it is)."""
    files = part_files(folder, part)
    if files[0].name != WEIGHTS[part][0]:
        log.info("%s: reading %s", part, files[0].name)
    if len(files) == 1:
        return load_state_dict(files[0])
    weight_map = _index(files[0], files[1].suffix)
    state: dict[str, torch.Tensor] = {}
    for shard in files[1:]:
        tensors = load_state_dict(shard)
        listed = {k for k, v in weight_map.items() if v == shard.name}
        absent = sorted(listed - set(tensors))
        if absent:
            raise DiffusersWeightsError(
                f"{shard}: {len(absent)} tensors its index names are not in it ({absent[0]}, ...)"
            )
        unlisted = sorted(set(tensors) - listed)
        if unlisted:
            raise DiffusersWeightsError(f"{shard}: {len(unlisted)} tensors are not in its index ({unlisted[0]}, ...)")
        state.update(tensors)
    return state
