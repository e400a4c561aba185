"""Training configs: one YAML with six sections, defaults filled in, dotted command-line overrides.

Schema (every key optional except `model` and `data.root`; defaults in `DEFAULTS`):

    model:      the model node, as in inference configs ({target, params}); a
                `ldm.vae.AutoencoderKL` node trains an autoencoder instead of a diffusion model.
    init:       local weights loaded before training, all optional:
                  checkpoint: whole-model weights (original SD or our key layout)
                  vae: autoencoder weights (a vae.safetensors export, or any checkpoint holding one)
                  text_encoder: open_clip text tower weights (e.g. clip.safetensors of ldm.training.clip)
                  unet: U-Net weights (bare, or inside a whole checkpoint)
    training:   optimisation: seed, lr, weight_decay, betas, warmup_steps, ema_decay (null: no EMA),
                cond_dropout, grad_clip, accumulate, gradient_checkpointing, compile, scale_factor
                ("model": keep the model's; null: estimate 1/std of the first batch's latents; a number),
                text_cache (keep up to N captions' text-encoder outputs in memory; 0: off), latent_cache (keep up
                to N images' VAE posteriors, a latent still drawn from each every step; only for fixed crops),
                and for autoencoders: rec_loss (l1/l2), kl_weight, perceptual_weight, lpips_vgg, lpips_lin,
                disc_start (null: no discriminator), disc_weight, disc_lr, disc_layers, disc_channels,
                adaptive_disc_weight.
    data:       root, size, batch_size, flip, center_crop, num_workers, val_fraction, val_root, val_batch_size,
                weighted (draw images by the `weight` of captions.jsonl), keyword_prob, max_keywords and
                style_prob (caption sampling from captions.jsonl `keywords` / `style`, see ldm.training.captions),
                max_unreadable (images that fail to decode are skipped with a warning, up to this many).
    trainer:    keyword arguments of `lightning.Trainer` (max_steps, devices, num_nodes, strategy,
                precision, accelerator, log_every_n_steps, ...), passed through unchanged.
    logging:    run_dir, checkpoint_every_n_steps, sample_every_n_steps, sample_prompts, sample_steps,
                sample_scale, sample_seed, csv, tensorboard.

Overrides are `section.key=value` with the value parsed as YAML (`trainer.max_steps=200`,
`training.lr=1e-5`, `logging.sample_prompts=[a, b]`, `training.ema_decay=null`).
"""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ldm.config import ConfigError

SECTIONS = ("model", "init", "training", "data", "trainer", "logging")

DEFAULTS: dict[str, dict[str, Any]] = {
    "init": {"checkpoint": None, "vae": None, "text_encoder": None, "unet": None},
    "training": {
        "seed": 0,
        "lr": 1.0e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "warmup_steps": 0,
        "ema_decay": 0.9999,
        "cond_dropout": 0.1,
        "grad_clip": None,
        "accumulate": 1,
        "gradient_checkpointing": False,
        "compile": False,
        "scale_factor": "model",
        "text_cache": 0,
        "latent_cache": 0,
        # autoencoder runs only
        "rec_loss": "l1",
        "kl_weight": 1.0e-6,
        "perceptual_weight": 1.0,
        "lpips_vgg": None,
        "lpips_lin": None,
        "disc_start": None,
        "disc_weight": 0.5,
        "disc_lr": None,
        "disc_layers": 3,
        "disc_channels": 64,
        "adaptive_disc_weight": True,
    },
    "data": {
        "root": None,
        "size": 256,
        "batch_size": 4,
        "flip": False,
        "center_crop": True,
        "num_workers": 0,
        "val_fraction": 0.0,
        "val_root": None,
        "val_batch_size": None,
        "weighted": False,
        "keyword_prob": 0.0,
        "max_keywords": 3,
        "style_prob": 0.0,
        "max_unreadable": 10,
    },
    "trainer": {
        "max_steps": 1000,
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
        "log_every_n_steps": 10,
    },
    "logging": {
        "run_dir": "runs/train",
        "checkpoint_every_n_steps": 500,
        "sample_every_n_steps": 500,
        "sample_prompts": [],
        "sample_steps": 20,
        "sample_scale": 5.0,
        "sample_seed": 0,
        "csv": True,
        "tensorboard": True,
    },
}

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


class TrainConfigError(ConfigError):
    """A training config that is missing, malformed or names unknown settings."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; learning rates are written that way, so read them as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
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


def resolve(cfg: dict) -> dict:
    """Check sections and keys, fill in defaults; returns a new dict."""
    if not isinstance(cfg, dict):
        raise TrainConfigError("a training config must be a mapping of sections")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise TrainConfigError(f"unknown config section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if not isinstance(cfg.get("model"), dict) or "target" not in cfg["model"]:
        raise TrainConfigError("the training config needs a 'model' node with a 'target'")
    out = {"model": copy.deepcopy(cfg["model"])}
    for section, defaults in DEFAULTS.items():
        given = cfg.get(section) or {}
        if not isinstance(given, dict):
            raise TrainConfigError(f"section {section!r} must be a mapping, got {type(given).__name__}")
        if section != "trainer":  # trainer keys are Lightning's to check
            bad = sorted(set(given) - set(defaults))
            if bad:
                raise TrainConfigError(f"unknown key(s) in {section}: {', '.join(bad)}; known: {', '.join(sorted(defaults))}")
        out[section] = {**copy.deepcopy(defaults), **copy.deepcopy(given)}
    for key, where in OWNED_TRAINER_KEYS.items():
        if key in out["trainer"]:
            raise TrainConfigError(f"trainer.{key} is set by the training code; use {where} instead")
    _check_values(out)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(cfg: dict, section: str, key: str, minimum: int, meaning: str = "") -> None:
    value = cfg[section][key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TrainConfigError(f"{section}.{key} must be an integer >= {minimum}{meaning}, got {value!r}")


def _number(cfg: dict, section: str, key: str, low: float, high: float, what: str, optional: bool = False) -> float | None:
    """The setting as a float, refused unless it is a finite number in [low, high] (or null when optional)."""
    value = cfg[section][key]
    if value is None and optional:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise TrainConfigError(f"{section}.{key} must be {what}{' or null' if optional else ''}, got {value!r}")
    return float(value)


def _check_values(cfg: dict) -> None:
    """Refuse, with one line naming the key, values that would otherwise fail deep inside torch or Lightning."""
    t, d = cfg["training"], cfg["data"]
    for key in ("seed", "warmup_steps", "disc_layers", "disc_channels"):
        _integer(cfg, "training", key, 1 if key in ("disc_layers", "disc_channels") else 0)
    _integer(cfg, "training", "accumulate", 1)
    _number(cfg, "training", "lr", 1e-12, math.inf, "a positive learning rate")
    _number(cfg, "training", "disc_lr", 1e-12, math.inf, "a positive learning rate", optional=True)
    _number(cfg, "training", "weight_decay", 0.0, math.inf, "a number >= 0")
    betas = t["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)):
        raise TrainConfigError(f"training.betas must be two numbers in [0, 1), got {betas!r}")
    _number(cfg, "training", "cond_dropout", 0.0, 1.0, "a probability in [0, 1]")
    if _number(cfg, "training", "ema_decay", 0.0, 1.0, "in (0, 1)", optional=True) in (0.0, 1.0):
        raise TrainConfigError(f"training.ema_decay must be in (0, 1) or null, got {t['ema_decay']}")
    _number(cfg, "training", "grad_clip", 1e-12, math.inf, "a positive number", optional=True)
    for key in ("kl_weight", "perceptual_weight", "disc_weight"):
        _number(cfg, "training", key, 0.0, math.inf, "a number >= 0")
    if t["disc_start"] is not None:
        _integer(cfg, "training", "disc_start", 0, " (the step the discriminator starts; null: none)")
    for key in ("text_cache", "latent_cache"):
        _integer(cfg, "training", key, 0, f" ({'captions' if key == 'text_cache' else 'images'} kept; 0: off)")
    if t["latent_cache"] and not d["center_crop"]:
        raise TrainConfigError("training.latent_cache needs data.center_crop: true (a random crop is a new image every time)")
    if t["rec_loss"] not in ("l1", "l2"):
        raise TrainConfigError(f"training.rec_loss must be l1 or l2, got {t['rec_loss']!r}")
    sf = t["scale_factor"]
    if not (sf is None or sf == "model" or (_is_number(sf) and sf > 0)):
        raise TrainConfigError(f"training.scale_factor must be 'model', null (estimate) or a positive number, got {sf!r}")

    for key, minimum in (("size", 1), ("batch_size", 1), ("num_workers", 0), ("max_keywords", 1)):
        _integer(cfg, "data", key, minimum)
    if d["val_batch_size"] is not None:
        _integer(cfg, "data", "val_batch_size", 1)
    _integer(cfg, "data", "max_unreadable", 0, " (images that fail to decode, skipped with a warning)")
    if _number(cfg, "data", "val_fraction", 0.0, 1.0, "in [0, 1)") == 1.0:
        raise TrainConfigError(f"data.val_fraction must be in [0, 1), got {d['val_fraction']}")
    for key in ("keyword_prob", "style_prob"):
        _number(cfg, "data", key, 0.0, 1.0, "a probability in [0, 1]")

    for key in ("checkpoint_every_n_steps", "sample_every_n_steps"):
        _integer(cfg, "logging", key, 0, " (0: off)")
    _integer(cfg, "logging", "sample_steps", 1)
    _integer(cfg, "logging", "sample_seed", 0)
    _number(cfg, "logging", "sample_scale", 0.0, math.inf, "a guidance scale >= 0")
    if not isinstance(cfg["logging"]["sample_prompts"] or [], list):
        raise TrainConfigError(f"logging.sample_prompts must be a list of prompts, got {cfg['logging']['sample_prompts']!r}")


def load_train_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                      base: dict | None = None) -> dict:
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
    return resolve(apply_overrides(cfg or {}, list(overrides)))


def is_autoencoder(cfg: dict) -> bool:
    """Whether the run trains an autoencoder (model target is a VAE) rather than a diffusion model."""
    return cfg["model"]["target"] in ("ldm.vae.AutoencoderKL", "ldm.models.autoencoder.AutoencoderKL")


def is_clip(cfg: dict) -> bool:
    """Whether the run trains a contrastive CLIP (text encoder or judge) rather than a generative model."""
    return cfg["model"]["target"] == "ldm.text_encoder.OpenCLIP"


def dump(cfg: dict, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
