"""`ldm convert --merge-lora`: bake one or more LoRAs into a full checkpoint file.

The base is loaded as any model is (its config given or detected, weights read safely), each LoRA is
merged at its weight (ldm.adapters.lora.merge_lora: W += weight * alpha / rank * up @ down, in float32), and the
result is written atomically as one safetensors file in the original SD key layout. The file carries its
config (`ldm_config`, so it loads without a YAML) and the list of merged LoRAs with their hashes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ldm.adapters.lora import merge_lora
from ldm.core.errors import LdmError
from ldm.formats.detect import CONFIG_KEY, resolve_config
from ldm.formats.load import load_model
from ldm.io.checkpoint import save_state_dict

log = logging.getLogger(__name__)


class MergeError(LdmError, ValueError):
    """A merge that cannot be done as asked (an output that exists, nothing to merge)."""


def merge_loras_into_file(
    src: str | Path,
    dst: str | Path,
    loras: list[tuple[str, float]],
    config: str | Path | None = None,
    prediction: str | None = None,
    overwrite: bool = False,
    float_dtype: torch.dtype | None = None,
) -> Path:
    """Write `dst`: the model of `src` with `loras` [(file, weight), ...] merged in, in that order."""
    dst = Path(dst)
    if not loras:
        raise MergeError("nothing to merge: give --merge-lora FILE[:WEIGHT]")
    if dst.suffix != ".safetensors":
        raise MergeError(f"the output must end in .safetensors (the only format written), got {dst.name}")
    if dst.exists() and not overwrite:
        raise MergeError(f"{dst} already exists (--overwrite replaces it)")
    cfg = resolve_config(config, src, prediction)
    model = load_model(cfg, src, device="cpu", prediction=prediction)
    for path, weight in loras:
        merge_lora(model, path, weight)
        log.info("merged %s at weight %g", path, weight)
    merged = [{k: entry[k] for k in ("file", "sha256", "weight")} for entry in model.identity.get("loras", [])]
    metadata = {
        "format": "pt",
        CONFIG_KEY: json.dumps({"model": cfg["model"]}),
        "merged_from": Path(src).name,
        "merged_loras": json.dumps(merged),
    }
    save_state_dict(model.original_state_dict(), dst, metadata=metadata, float_dtype=float_dtype)
    log.info("wrote %s (%d LoRA(s) merged into %s)", dst, len(loras), Path(src).name)
    return dst
