"""Writing the derived model files that ldm.formats.derived reads: a training run's export shipped beside its base.

    ship_derived("inpaint", "runs/inpaint-snap")        # -> checkpoints/emoji/inpaint.safetensors + inpaint.yaml
    ship_derived("student", "runs/emoji-distill/halve-8")
    ship_part("runs/upscaler-vae")                        # the upscaler's autoencoder, shipped first

The shipped file keeps only what differs from the base (checkpoints/emoji/model.safetensors by default): a LoRA
run's adapter and whole tensors as they are; a full run's tensors minus those equal to the base's in fp16 (the
shared text tower, an unchanged autoencoder). The config beside it is the export's, with `base:` added. The
upscaler's autoencoder is shipped on its own (upscaler-vae.safetensors, trained first): the upscaler's config names
it under `parts:` and its file leaves it out, so that no tensor is stored twice. A distillation stage's
student.yaml gives the shipped student.yaml its name and sampling defaults (ldm.formats.variants).
scripts/ship_derived_model.py is the command-line caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from ldm.core.defaults import SHIPPED_MODELS, default_checkpoint_path
from ldm.core.errors import InvalidOptionError
from ldm.formats.derived import base_state, split_derived
from ldm.io.checkpoint import atomic_path, file_sha256, load_state_dict, save_state_dict, weights_in_our_layout

# Submodules a shipped model takes from a file of their own (ldm.formats.derived `parts:`), by task.
SHIPPED_PARTS = {"upscale": {"vae": "upscaler-vae.safetensors"}}
LICENSE = "CC-BY-SA-4.0"  # the training data's (OpenMoji is CC BY-SA 4.0; the photos CC BY-SA 3.0/4.0 at most)


@dataclass(frozen=True)
class Shipped:
    """What a ship wrote: the weights file and its config, how many tensors (`whole` of them not LoRA), the step."""

    weights: Path
    config: Path
    tensors: int
    whole: int
    step: str

    def __str__(self) -> str:
        size = self.weights.stat().st_size / 2**20
        return (
            f"shipped {self.weights} ({size:.1f} MiB, {self.tensors} tensors, {self.whole} whole, "
            f"step {self.step}) and {self.config}"
        )


def only_changes(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state` that the base does not already hold (same name, same fp16 values)."""

    def same(key: str) -> bool:
        b = base.get(key)
        return b is not None and b.shape == state[key].shape and torch.equal(b.half(), state[key].half())

    return {k: v for k, v in state.items() if not same(k)}


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def ship_part(export_dir: str | Path, base_file: str | Path | None = None) -> Shipped:
    """The upscaler's autoencoder (an export's vae.safetensors + vae.yaml) as upscaler-vae.* beside the base file
    (default: the shipped default model), fp16: the part that the upscaler's config names."""
    export = Path(export_dir)
    with safe_open(str(export / "vae.safetensors"), "pt") as f:
        step = (f.metadata() or {}).get("step", "unknown")
    out = Path(base_file or default_checkpoint_path()).with_name(SHIPPED_PARTS["upscale"]["vae"])
    metadata = {
        "recipe": "configs/emoji/upscaler-vae.yaml",
        "license": LICENSE,
        "step": step,
        "note": "the x4 upscaler's autoencoder (f=4, 8 latent channels)",
    }
    state = load_state_dict(export / "vae.safetensors")
    save_state_dict(state, out, metadata=metadata, float_dtype=torch.float16)
    _write_text(out.with_suffix(".yaml"), (export / "vae.yaml").read_text())
    return Shipped(out, out.with_suffix(".yaml"), len(state), len(state), step)


def _shipped_config(task: str, config: dict, export: Path, base_file: Path) -> dict:
    """The derived model's inference config: the export's model, its base, and the task's own sections."""
    shipped = {"model": config["model"], "base": base_file.name}
    if task == "upscale":
        # Trained on 32 px inputs (128 px crops); shipped for 64 -> 256 px, the default model's output in one
        # tile (the U-Net is convolutional; its attention sees 16x16 instead of 8x8 tokens).
        shipped["model"]["params"]["image_size"] = 64
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
    return shipped


def ship_derived(task: str, export_dir: str | Path, base_file: str | Path | None = None) -> Shipped:
    """A training run's export (lora.safetensors + lora.yaml, or model.safetensors + model.yaml) as the derived
    model of `task` (SHIPPED_MODELS: inpaint, upscale, student) beside `base_file` (default: the shipped default
    model), fp16, holding only what differs from the base (see the module docstring)."""
    if task not in SHIPPED_MODELS or task == "txt2img":
        raise InvalidOptionError(f"a derived model is one of {', '.join(t for t in SHIPPED_MODELS if t != 'txt2img')}")
    export = Path(export_dir)
    base = Path(base_file or default_checkpoint_path())
    lora = export / "lora.safetensors"
    weights = lora if lora.is_file() else export / "model.safetensors"
    config_file = export / ("lora.yaml" if lora.is_file() else "model.yaml")
    with safe_open(str(weights), "pt") as f:
        metadata = dict(f.metadata() or {})
    if lora.is_file():
        state = load_state_dict(weights)
        whole = len(split_derived(state)[0])
    else:
        full = weights_in_our_layout(weights)
        parts = {k: base.with_name(v) for k, v in SHIPPED_PARTS.get(task, {}).items()}
        state = only_changes(full, base_state(full, base, parts))
        whole = len(state)
    metadata.pop("ldm_config", None)  # the config beside the file names the base; the file alone is no model
    metadata.update(
        {
            "format": "pt",
            "source": str(export),
            "license": LICENSE,
            "base_model": base.name,
            "base_model_sha256": file_sha256(base),
            "step": metadata.get("step", "unknown"),
        }
    )
    out = base.with_name(f"{SHIPPED_MODELS[task]}.safetensors")
    save_state_dict(state, out, metadata=metadata, float_dtype=torch.float16)
    shipped = _shipped_config(task, yaml.safe_load(config_file.read_text()), export, base)
    _write_text(
        out.with_suffix(".yaml"),
        f"# The shipped {task} model: {out.name} holds only what differs from its base "
        "(ldm.formats.derived).\n" + yaml.safe_dump(shipped, sort_keys=False),
    )
    return Shipped(out, out.with_suffix(".yaml"), len(state), whole, metadata["step"])
