"""Training configs: one YAML with six sections, defaults filled in, dotted command-line overrides.

Schema (every key optional except `model` and `data.root`): the dataclasses below, one set of defaults.
The run kind follows from the model target (a `ldm.models.vae.AutoencoderKL` node trains an autoencoder,
`ldm.models.text_encoder.OpenCLIP` a CLIP, anything else a diffusion model), and picks the training section's type,
so each kind gets its own optimiser defaults (the autoencoder the reference's lr 4.5e-6 and betas (0.5, 0.9),
never the diffusion model's) and a key of another kind, or a misspelt one, is an error naming the closest.

    model:      the model node, as in inference configs ({target, params}).
    init:       local weights loaded before training, all optional:
                  checkpoint: whole-model weights (original SD or our key layout)
                  vae: autoencoder weights (a vae.safetensors export, or any checkpoint holding one)
                  text_encoder: open_clip text tower weights (e.g. clip.safetensors of ldm.training.clip)
                  unet: U-Net weights (bare, or inside a whole checkpoint)
                  widen_input: the U-Net's first convolution takes more input channels than the init weights'
                    (a text-to-image model fine-tuned into an inpainting one): the extra channels start at zero
                  lora: a LoRA run's lora.safetensors that the adapter (and its whole tensors) starts from
    training:   every kind: seed, lr, weight_decay, betas, warmup_steps, grad_clip, accumulate;
                diffusion (`DiffusionTraining`): ema_decay (null: no EMA), cond_dropout, gradient_checkpointing,
                compile, scale_factor ("model": keep the model's; null: estimate 1/std of the first batch's
                latents; a number), text_cache (keep up to N captions' text-encoder outputs in memory; 0: off),
                latent_cache (keep up to N images' VAE posteriors, a latent still drawn from each every step;
                only for fixed crops), cache_dir (both caches also on disk, unbounded, across epochs and runs;
                keyed by the encoders' weights; latents only for fixed crops), label_dropout (class-conditional
                models: the null label's probability);
                autoencoder (`AutoencoderTraining`): rec_loss (l1/l2), kl_weight, perceptual_weight, lpips_vgg,
                lpips_lin, disc_start (null: no discriminator), disc_weight, disc_lr, disc_layers, disc_channels,
                adaptive_disc_weight; CLIP (`ClipTraining`): the common keys with open_clip's defaults.
    data:       root, size, batch_size, flip, center_crop, num_workers, val_fraction, val_root, val_batch_size,
                weighted (draw images by the `weight` of captions.jsonl), keyword_prob, max_keywords and
                style_prob (caption sampling from captions.jsonl `keywords` / `style`, see ldm.training.captions),
                max_unreadable (images that fail to decode are skipped with a warning, up to this many),
                shards (WebDataset tars instead of root: "dir/{00000..00099}.tar", a list, or fsspec URLs; see
                ldm.training.shard_stream), remainder (drop/wrap: what an epoch does with the samples that do not
                fill a step on every rank), caption_column (the caption field of an imagefolder's metadata.jsonl
                or a shard's .json; default: a shard's .txt, else "caption" or "text"), label_field and classes
                (a class-conditional model: the captions.jsonl field, or "caption", whose value is each image's
                class; classes null: the values in the data, sorted; see ldm.training.labels).
    trainer:    keyword arguments of `lightning.Trainer` (max_steps, devices, num_nodes, strategy,
                precision, accelerator, log_every_n_steps, ...), passed through unchanged.
    logging:    run_dir, checkpoint_every_n_steps, sample_every_n_steps, sample_prompts, sample_steps,
                sample_scale, sample_seed, csv, tensorboard.
    lora:       rank (0: off, the whole U-Net trains), alpha, dropout, targets (attn, proj, ff, conv, text):
                diffusion runs only; the base is frozen and the adapter alone is exported (lora.safetensors).
    controlnet: train (false: off), preprocess (canny, lineart, scribble), low, high, control_root, control_key,
                export_diffusers: a ControlNet on the frozen model (controlnet.safetensors, fp16; diffusers' too).

Overrides are `section.key=value` with the value parsed as YAML (`trainer.max_steps=200`,
`training.lr=1e-5`, `logging.sample_prompts=[a, b]`, `training.ema_decay=null`).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ldm.core.config import canonical_target, closest
from ldm.training.config_checks import TrainConfigError, check_values
from ldm.training.controlnet_config import ControlNetSection

SECTIONS = ("model", "init", "training", "data", "trainer", "logging", "lora", "distill", "controlnet")


@dataclass
class InitSection:
    checkpoint: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    unet: str | None = None
    widen_input: bool = False
    lora: str | None = None  # a LoRA run's export (lora.safetensors): the adapter starts from it, not from zero


@dataclass
class TrainingSection:
    """What every kind of run takes. The optimiser defaults are each kind's own (its subclass below)."""

    seed: int = 0
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float | None = None  # the Trainer clips (diffusion, CLIP); the autoencoder clips itself
    accumulate: int = 1


@dataclass
class DiffusionTraining(TrainingSection):
    ema_decay: float | None = 0.9999
    cond_dropout: float = 0.1
    gradient_checkpointing: bool = False
    compile: bool = False
    scale_factor: float | str | None = "model"
    text_cache: int = 0
    latent_cache: int = 0
    label_dropout: float = 0.1
    cache_dir: str | None = None  # both caches also on disk there (ldm.training.disk_cache); null: memory only


@dataclass
class AutoencoderTraining(TrainingSection):
    lr: float = 4.5e-6  # the reference's (LDM's autoencoder configs), with its Adam betas
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    rec_loss: str = "l1"
    kl_weight: float = 1.0e-6
    perceptual_weight: float = 1.0
    lpips_vgg: str | None = None
    lpips_lin: str | None = None
    disc_start: int | None = None
    disc_weight: float = 0.5
    disc_lr: float | None = None
    disc_layers: int = 3
    disc_channels: int = 64
    adaptive_disc_weight: bool = True


@dataclass
class ClipTraining(TrainingSection):
    lr: float = 1.0e-3  # open_clip's recipe for small models
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])


@dataclass
class DataSection:
    root: str | None = None
    size: int = 256
    batch_size: int = 4
    flip: bool = False
    center_crop: bool = True
    num_workers: int = 0
    val_fraction: float = 0.0
    val_root: str | None = None
    val_batch_size: int | None = None
    weighted: bool = False
    keyword_prob: float = 0.0
    max_keywords: int = 3
    style_prob: float = 0.0
    max_unreadable: int = 10
    shards: str | list[str] | None = None
    remainder: str = "drop"
    caption_column: str | None = None
    label_field: str | None = None
    classes: list[str] | None = None


@dataclass
class LoggingSection:
    run_dir: str = "runs/train"
    checkpoint_every_n_steps: int = 500
    sample_every_n_steps: int = 500
    sample_prompts: list[str] = field(default_factory=list)
    sample_steps: int = 20
    sample_scale: float = 5.0
    sample_seed: int = 0
    csv: bool = True
    tensorboard: bool = True


@dataclass
class LoraSection:
    """Fine-tune with low-rank adapters (ldm.adapters.lora) instead of the whole U-Net: rank 0 is off. The base stays
    frozen, only the adapter trains and is exported (lora.safetensors); targets are ldm.adapters.lora_layers.GROUPS."""

    rank: int = 0
    alpha: float | None = None  # None: the rank (scale 1)
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn"])
    # Modules trained whole beside the adapters and exported with them, by path (e.g. unet.input_blocks.0.0,
    # the first convolution an inpainting model widens: its new channels have no base weights to adapt).
    train_whole: list[str] = field(default_factory=list)


@dataclass
class DistillSection:
    """Guided progressive distillation (ldm.diffusion.distillation, ldm.training.distill_module): off while teacher is null.
    The student is the `model:` node (its U-Net with `guidance_embed: true`) and starts as a copy of the teacher."""  # noqa: E501

    teacher: str | None = (
        None  # the teacher's weights (model.safetensors of a run, or checkpoints/emoji/model.safetensors)
    )
    teacher_config: str | None = None  # its inference config; null: the .yaml beside the weights
    stage: str | int = "guidance"  # "guidance" (stage 1: w becomes an input), or N: halve N teacher steps into N / 2
    scale_range: list[float] = field(default_factory=lambda: [1.0, 8.0])  # w ~ U[lo, hi] per example
    # What `ldm distill` runs one after the other, each in <run_dir>/<stage>, each stage's teacher the one before.
    stages: list[str | int] = field(default_factory=lambda: ["guidance", 16, 8, 4, 2])
    steps_per_stage: int | list[int] = 2000


# Lightning's own defaults except these; any other Trainer keyword passes through for Lightning to check.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_steps": 1000,
    "accelerator": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",
    "precision": "32-true",
    "log_every_n_steps": 10,
}

TRAINING_FOR_KIND = {"diffusion": DiffusionTraining, "autoencoder": AutoencoderTraining, "clip": ClipTraining}
SECTION_TYPES = {
    "init": InitSection,
    "data": DataSection,
    "logging": LoggingSection,
    "lora": LoraSection,
    "distill": DistillSection,
    "controlnet": ControlNetSection,
}


def section_defaults(section: type) -> dict[str, Any]:
    """A section's keys with their defaults, as plain YAML-able values."""
    return asdict(section())


def _defaults() -> dict[str, dict[str, Any]]:
    """The defaults of a diffusion run, section by section (what `DEFAULTS` has always shown)."""
    out = {name: section_defaults(cls) for name, cls in SECTION_TYPES.items()}
    return {
        "init": out["init"],
        "training": section_defaults(DiffusionTraining),
        "data": out["data"],
        "trainer": dict(TRAINER_DEFAULTS),
        "logging": out["logging"],
        "lora": out["lora"],
        "distill": out["distill"],
        "controlnet": out["controlnet"],
    }


DEFAULTS: dict[str, dict[str, Any]] = _defaults()

# Trainer arguments this code sets from the sections above; setting them twice would disagree.
OWNED_TRAINER_KEYS = {
    "callbacks": "logging.*",
    "logger": "logging.csv / logging.tensorboard",
    "default_root_dir": "logging.run_dir",
    "gradient_clip_val": "training.grad_clip",
    "accumulate_grad_batches": "training.accumulate",
    "enable_checkpointing": "logging.checkpoint_every_n_steps",
    "plugins": "nothing (checkpoints are read by the weights-only loader; other plugins are not supported)",
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; learning rates are written that way, so read them as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise TrainConfigError(f"override {text!r} is not of the form section.key=value")
    path = key.strip().split(".")
    if path[0] not in SECTIONS:
        raise TrainConfigError(f"override {text!r}: unknown section {path[0]!r}; known: {', '.join(SECTIONS)}")
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"override {text!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from exc
    return path, value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        path, value = parse_override(text)
        node = cfg
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise TrainConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return cfg


def run_kind(cfg: dict) -> str:
    """ "diffusion", "autoencoder" or "clip", from the model node's target."""
    if is_clip(cfg):
        return "clip"
    return "autoencoder" if is_autoencoder(cfg) else "diffusion"


def _section(name: str, cls: type, given: dict, kind: str, stored: bool) -> dict[str, Any]:
    """The section as `cls` types it: given keys over the defaults; an unknown key is an error naming the closest."""
    known = [f.name for f in fields(cls)]
    given = dict(given)
    if stored and name == "training":
        # Checkpoints written before the training section was typed per kind hold every kind's keys, filled in
        # with defaults: the ones of other kinds never reached this kind's module, so they are dropped.
        others = {f.name for c in TRAINING_FOR_KIND.values() for f in fields(c)} - set(known)
        given = {k: v for k, v in given.items() if k not in others}
    for key in given:
        if key not in known:
            owners = [k for k, c in TRAINING_FOR_KIND.items() if key in {f.name for f in fields(c)}]
            where = f" (a setting of {owners[0]} runs, not of this {kind} run)" if name == "training" and owners else ""
            raise TrainConfigError(
                f"unknown key {key!r} in {name}{where}{closest(key, known)} (known: {', '.join(sorted(known))})"
            )
    values = asdict(cls(**copy.deepcopy(given)))
    if isinstance(values.get("betas"), tuple):  # anything else is left for check_values to name
        values["betas"] = list(values["betas"])
    return values


def resolve(cfg: dict, stored: bool = False) -> dict:
    """Check sections and keys, fill in defaults (the run kind's own training defaults); returns a new dict.

    `stored`: the config comes from a checkpoint (resume), whose training section may predate the typed sections.
    """
    if not isinstance(cfg, dict):
        raise TrainConfigError("a training config must be a mapping of sections")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise TrainConfigError(
            f"unknown config section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
            f"{closest(unknown[0], list(SECTIONS))}"
        )
    if not isinstance(cfg.get("model"), dict) or "target" not in cfg["model"]:
        raise TrainConfigError("the training config needs a 'model' node with a 'target'")
    kind = run_kind(cfg)
    out: dict[str, Any] = {"model": copy.deepcopy(cfg["model"])}
    types = {**SECTION_TYPES, "training": TRAINING_FOR_KIND[kind]}
    for section in ("init", "training", "data", "trainer", "logging", "lora", "distill", "controlnet"):
        given = cfg.get(section) or {}
        if not isinstance(given, dict):
            raise TrainConfigError(f"section {section!r} must be a mapping, got {type(given).__name__}")
        if section == "trainer":  # trainer keys are Lightning's to check
            out[section] = {**copy.deepcopy(TRAINER_DEFAULTS), **copy.deepcopy(given)}
        else:
            out[section] = _section(section, types[section], given, kind, stored)
    for key, where in OWNED_TRAINER_KEYS.items():
        if key in out["trainer"]:
            raise TrainConfigError(f"trainer.{key} is set by the training code; use {where} instead")
    check_values(out, kind)
    return out


def training_section(cfg: dict) -> TrainingSection:
    """The resolved config's training section as its typed dataclass."""
    return TRAINING_FOR_KIND[run_kind(cfg)](**copy.deepcopy(cfg["training"]))


def load_train_config(
    path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> dict:
    """Read a training YAML (or start from `base`), apply overrides, validate and fill in defaults.

    Relative paths in `data.root`, `data.val_root` and `init.*` are taken relative to the working directory.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"training config not found: {path}")
        try:
            cfg = _yaml(path.read_text())
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from exc
    elif base is not None:
        cfg = base
    else:
        raise TrainConfigError("give a training config (--config) or a checkpoint to resume from")
    return resolve(apply_overrides(cfg or {}, list(overrides)), stored=path is None)


def is_autoencoder(cfg: dict) -> bool:
    """Whether the run trains an autoencoder (model target is a VAE) rather than a diffusion model."""
    return canonical_target(cfg["model"]["target"]) in (
        "ldm.models.vae.AutoencoderKL",
        "ldm.models.autoencoder.AutoencoderKL",
    )


def is_clip(cfg: dict) -> bool:
    """Whether the run trains a contrastive CLIP (text encoder or judge) rather than a generative model."""
    return canonical_target(cfg["model"]["target"]) == "ldm.models.text_encoder.OpenCLIP"


def dump(cfg: dict, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
