"""Checkpoint conversion: pickled `.ckpt`/`.pt` (or `.safetensors`) -> `.safetensors`, tensors unchanged.

The input is read with weights_only=True (ldm.io.checkpoint.torch_load_weights_only), so a pickle that
would run code raises instead; the output is written atomically (a crash leaves no partial file).
Every tensor keeps its name, dtype and values. What may be dropped on request: the EMA copies
(`model_ema.*`) and the noise-schedule buffers (`betas`, `alphas_cumprod`, ...), which ldm derives from
the config anyway. Non-tensor entries of a pickle (`global_step`, optimiser state) are not carried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ldm.core.errors import LdmError
from ldm.formats.detect import PREDICTION_KEY, check_prediction
from ldm.io.checkpoint import SCHEDULE_BUFFERS, CheckpointError, load_state_dict, save_state_dict

log = logging.getLogger(__name__)

READABLE = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
EMA_PREFIX = "model_ema."


class ConvertError(LdmError, ValueError):
    """A conversion that cannot be done as asked (bad paths, an output that exists)."""


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote."""

    path: Path
    kept: int  # tensors written
    dropped: dict[str, int]  # "EMA" / "schedule buffers" -> tensors left out
    metadata: dict[str, str]


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, with each one whose storage an earlier entry already uses copied apart: safetensors
    refuses shared storage, which pickles keep (tied weights, slices of one buffer). Values are unchanged."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen and value.numel() else value
        seen.add(storage)
    return out


def _metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    ema: bool = True,
    schedule: bool = True,
    prediction: str | None = None,
    overwrite: bool = False,
) -> Converted:
    """Write the tensors of `src` to `dst` (.safetensors), optionally without EMA copies or schedule buffers.

    `prediction` ("eps" or "v") is recorded as the `prediction` metadata that ldm.formats.detect reads, so an
    SD 2.x 768-v file converted with prediction="v" loads later without the option. A safetensors input's
    own metadata is kept.
    """
    src, dst = Path(src), Path(dst)
    check_prediction(prediction)
    if src.suffix not in READABLE:
        raise ConvertError(f"cannot read {src}: use one of {', '.join(READABLE)}")
    if dst.suffix != ".safetensors":
        raise ConvertError(f"the output must end in .safetensors (the only format written), got {dst.name}")
    if dst.exists() and not overwrite:
        raise ConvertError(f"{dst} already exists (--overwrite replaces it)")
    state = load_state_dict(src)  # weights_only for pickles: a payload raises CheckpointError here
    if not state:
        raise CheckpointError(f"{src} holds no tensors")
    dropped = {}
    if not ema:
        dropped["EMA"] = sum(k.startswith(EMA_PREFIX) for k in state)
        state = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    if not schedule:
        dropped["schedule buffers"] = sum(k in SCHEDULE_BUFFERS for k in state)
        state = {k: v for k, v in state.items() if k not in SCHEDULE_BUFFERS}
    metadata = {**_metadata(src), "format": "pt", "converted_from": src.name}
    if prediction is not None:
        metadata[PREDICTION_KEY] = prediction
    save_state_dict(_unshared(state), dst, metadata=metadata)
    log.info(
        "wrote %s: %d tensors%s", dst, len(state), "".join(f", {n} {what} left out" for what, n in dropped.items() if n)
    )
    return Converted(dst, len(state), dropped, metadata)
