"""Ship a model derived from the default one (the inpainter, the upscaler) into checkpoints/emoji, fp16.

    ldm train --config configs/emoji/inpaint.yaml --resume --export-only --out runs/inpaint-snap
    python scripts/ship_derived_model.py inpaint runs/inpaint-snap
    python scripts/ship_derived_model.py student runs/emoji-distill/halve-8     # the 4-step student
    python scripts/ship_derived_model.py upscaler-vae runs/upscaler-vae         # the upscaler's autoencoder, first

A distillation stage's student.yaml gives the shipped student.yaml its name and sampling defaults (steps, trailing
spacing, guidance scale: ldm.formats.variants), with which `ldm txt2img` then uses it by default.

The shipped file keeps only what differs from checkpoints/emoji/model.safetensors (ldm.formats.derived): a LoRA run's
adapter and whole tensors as they are; a full run's tensors minus those equal to the base's in fp16 (the
shared text tower, an unchanged autoencoder). The config beside it is the export's, with `base:` added. The
upscaler's autoencoder is already shipped on its own (checkpoints/emoji/upscaler-vae.safetensors, trained first):
the upscaler's config names it under `parts:` and its file leaves it out, so that no tensor is stored twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from ldm.core.defaults import SHIPPED_MODELS, default_checkpoint_path
from ldm.formats.derived import base_state, split_derived
from ldm.io.checkpoint import file_sha256, load_state_dict, save_state_dict, weights_in_our_layout

# Submodules a shipped model takes from a file of their own (ldm.formats.derived `parts:`), by task.
SHIPPED_PARTS = {"upscale": {"vae": "upscaler-vae.safetensors"}}
LICENSE = "CC-BY-SA-4.0"  # the training data's (OpenMoji is CC BY-SA 4.0; the photos CC BY-SA 3.0/4.0 at most)


def only_changes(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state` that the base does not already hold (same name, same fp16 values)."""

    def same(key: str) -> bool:
        b = base.get(key)
        return b is not None and b.shape == state[key].shape and torch.equal(b.half(), state[key].half())

    return {k: v for k, v in state.items() if not same(k)}


def ship_part(export_dir: str) -> None:
    """The upscaler's autoencoder (an export's vae.safetensors + vae.yaml) as checkpoints/emoji/upscaler-vae.*, fp16:
    the part that the upscaler's config names and its U-Net trains over (configs/emoji/upscaler.yaml)."""
    export = Path(export_dir)
    with safe_open(str(export / "vae.safetensors"), "pt") as f:
        step = (f.metadata() or {}).get("step", "unknown")
    out = default_checkpoint_path().with_name(SHIPPED_PARTS["upscale"]["vae"])
    metadata = {
        "recipe": "configs/emoji/upscaler-vae.yaml",
        "license": LICENSE,
        "step": step,
        "note": "the x4 upscaler's autoencoder (f=4, 8 latent channels)",
    }
    save_state_dict(load_state_dict(export / "vae.safetensors"), out, metadata=metadata, float_dtype=torch.float16)
    out.with_suffix(".yaml").write_text((export / "vae.yaml").read_text())
    print(f"shipped {out} ({out.stat().st_size / 2**20:.1f} MiB, step {step}) and {out.with_suffix('.yaml')}")


def ship(task: str, export_dir: str) -> None:
    export = Path(export_dir)
    lora = export / "lora.safetensors"
    weights = lora if lora.is_file() else export / "model.safetensors"
    config_file = export / ("lora.yaml" if lora.is_file() else "model.yaml")
    with safe_open(str(weights), "pt") as f:
        metadata = dict(f.metadata() or {})
    base_file = default_checkpoint_path()
    if lora.is_file():
        state = load_state_dict(weights)
        kept = len(split_derived(state)[0])
    else:
        full = weights_in_our_layout(weights)
        parts = {k: base_file.with_name(v) for k, v in SHIPPED_PARTS.get(task, {}).items()}
        state = only_changes(full, base_state(full, base_file, parts))
        kept = len(state)
    metadata.pop("ldm_config", None)  # the config beside the file names the base; the file alone is no model
    metadata.update(
        {
            "format": "pt",
            "source": str(export),
            "license": LICENSE,
            "base_model": base_file.name,
            "base_model_sha256": file_sha256(base_file),
            "step": metadata.get("step", "unknown"),
        }
    )
    stem = SHIPPED_MODELS[task]
    out = base_file.with_name(f"{stem}.safetensors")
    save_state_dict(state, out, metadata=metadata, float_dtype=torch.float16)
    config = yaml.safe_load(config_file.read_text())
    if task == "upscale":
        # Trained on 32 px inputs (128 px crops); shipped for 64 -> 256 px, the default model's output in one
        # tile (the U-Net is convolutional; its attention sees 16x16 instead of 8x8 tokens).
        config["model"]["params"]["image_size"] = 64
    shipped = {"model": config["model"], "base": base_file.name}
    if task == "upscale":
        # The result shrunk x4 gives the input back (ldm.tasks.upscale); held-out photos gain 5 dB PSNR, 10 iterations
        # ~0.05 dB over 5. 20 steps: as good as 50 at PSNR (docs/edit-models.md); guidance 4 as in training.
        # eta 1 (fresh noise each DDIM step): +0.6 dB on held-out emoji and photos over eta 0, whose photos
        # carry more texture than the originals (high-frequency energy 1.3x theirs; eta 1: 0.8x).
        shipped["upscale"] = {"back_projection": 10}
        shipped["sampling"] = {"steps": 20, "guidance_scale": 4.0, "eta": 1.0}
    if SHIPPED_PARTS.get(task):
        shipped["parts"] = SHIPPED_PARTS[task]
    student = export / "student.yaml"  # a distillation stage's: the student's name and own sampling defaults
    if task == "student" and student.is_file():
        own = yaml.safe_load(student.read_text())
        shipped["sampling"] = own.get("sampling") or {}
        steps = shipped["sampling"].get("steps")
        shipped = {"name": f"emoji {steps}-step student" if steps else "emoji student", **shipped}
    out.with_suffix(".yaml").write_text(
        f"# The shipped {task} model: {out.name} holds only what differs from its base "
        "(ldm.formats.derived).\n" + yaml.safe_dump(shipped, sort_keys=False)
    )
    print(
        f"shipped {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(state)} tensors, {kept} whole, "
        f"step {metadata['step']}) and {out.with_suffix('.yaml')}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in {*SHIPPED_MODELS, "upscaler-vae"} or sys.argv[1] == "txt2img":
        raise SystemExit(
            "usage: python scripts/ship_derived_model.py {inpaint,upscale,student,upscaler-vae} EXPORT_DIR"
        )
    ship_part(sys.argv[2]) if sys.argv[1] == "upscaler-vae" else ship(sys.argv[1], sys.argv[2])
