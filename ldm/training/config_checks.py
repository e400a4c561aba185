"""Value checks of a resolved training config: a value that would fail deep inside torch or Lightning is
refused here, with one line naming the key (ldm.training.config calls `check_values` after filling defaults)."""

from __future__ import annotations

import math
from typing import Any

from ldm.core.config import ConfigError, canonical_target


class TrainConfigError(ConfigError):
    """A training config that is missing, malformed or names unknown settings."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(cfg: dict, section: str, key: str, minimum: int, meaning: str = "") -> None:
    value = cfg[section][key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TrainConfigError(f"{section}.{key} must be an integer >= {minimum}{meaning}, got {value!r}")


def _number(
    cfg: dict, section: str, key: str, low: float, high: float, what: str, optional: bool = False
) -> float | None:
    """The setting as a float, refused unless it is a finite number in [low, high] (or null when optional)."""
    value = cfg[section][key]
    if value is None and optional:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise TrainConfigError(f"{section}.{key} must be {what}{' or null' if optional else ''}, got {value!r}")
    return float(value)


def check_values(cfg: dict, kind: str) -> None:
    """Refuse, with one line naming the key, values that would otherwise fail deep inside torch or Lightning
    (of the training keys, the run kind's own: its typed section holds no others)."""
    t, d = cfg["training"], cfg["data"]
    for key, minimum in (("seed", 0), ("warmup_steps", 0), ("accumulate", 1)):
        _integer(cfg, "training", key, minimum)
    _number(cfg, "training", "lr", 1e-12, math.inf, "a positive learning rate")
    _number(cfg, "training", "weight_decay", 0.0, math.inf, "a number >= 0")
    betas = t["betas"]
    if not (
        isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        raise TrainConfigError(f"training.betas must be two numbers in [0, 1), got {betas!r}")
    _number(cfg, "training", "grad_clip", 1e-12, math.inf, "a positive number", optional=True)
    if kind == "diffusion":
        _number(cfg, "training", "cond_dropout", 0.0, 1.0, "a probability in [0, 1]")
        _number(cfg, "training", "label_dropout", 0.0, 1.0, "a probability in [0, 1]")
        if _number(cfg, "training", "ema_decay", 0.0, 1.0, "in (0, 1)", optional=True) in (0.0, 1.0):
            raise TrainConfigError(f"training.ema_decay must be in (0, 1) or null, got {t['ema_decay']}")
        for key in ("text_cache", "latent_cache"):
            _integer(cfg, "training", key, 0, f" ({'captions' if key == 'text_cache' else 'images'} kept; 0: off)")
        if t["latent_cache"] and not d["center_crop"]:
            raise TrainConfigError(
                "training.latent_cache needs data.center_crop: true (a random crop is a new image every time)"
            )
        if t["cache_dir"] is not None:
            if not isinstance(t["cache_dir"], str) or not t["cache_dir"]:
                raise TrainConfigError(f"training.cache_dir must be a folder path or null, got {t['cache_dir']!r}")
            if not d["center_crop"]:
                raise TrainConfigError(
                    "training.cache_dir keeps VAE latents too, which needs data.center_crop: true "
                    "(a random crop is a new image every time)"
                )
        if not ((sf := t["scale_factor"]) is None or sf == "model" or (_is_number(sf) and sf > 0)):
            raise TrainConfigError(
                f"training.scale_factor must be 'model', null (estimate) or a positive number, got {sf!r}"
            )
    if kind == "autoencoder":
        for key in ("disc_layers", "disc_channels"):
            _integer(cfg, "training", key, 1)
        _number(cfg, "training", "disc_lr", 1e-12, math.inf, "a positive learning rate", optional=True)
        for key in ("kl_weight", "perceptual_weight", "disc_weight"):
            _number(cfg, "training", key, 0.0, math.inf, "a number >= 0")
        if t["disc_start"] is not None:
            _integer(cfg, "training", "disc_start", 0, " (the step the discriminator starts; null: none)")
        if t["rec_loss"] not in ("l1", "l2"):
            raise TrainConfigError(f"training.rec_loss must be l1 or l2, got {t['rec_loss']!r}")

    for key, minimum in (("size", 1), ("batch_size", 1), ("num_workers", 0), ("max_keywords", 1)):
        _integer(cfg, "data", key, minimum)
    if d["val_batch_size"] is not None:
        _integer(cfg, "data", "val_batch_size", 1)
    _integer(cfg, "data", "max_unreadable", 0, " (images that fail to decode, skipped with a warning)")
    if _number(cfg, "data", "val_fraction", 0.0, 1.0, "in [0, 1)") == 1.0:
        raise TrainConfigError(f"data.val_fraction must be in [0, 1), got {d['val_fraction']}")
    for key in ("keyword_prob", "style_prob"):
        _number(cfg, "data", key, 0.0, 1.0, "a probability in [0, 1]")
    _check_data_source(d)
    _check_labels(d)

    for key in ("checkpoint_every_n_steps", "sample_every_n_steps"):
        _integer(cfg, "logging", key, 0, " (0: off)")
    _integer(cfg, "logging", "sample_steps", 1)
    _integer(cfg, "logging", "sample_seed", 0)
    _number(cfg, "logging", "sample_scale", 0.0, math.inf, "a guidance scale >= 0")
    if not isinstance(cfg["logging"]["sample_prompts"] or [], list):
        raise TrainConfigError(
            f"logging.sample_prompts must be a list of prompts, got {cfg['logging']['sample_prompts']!r}"
        )

    _check_lora(cfg, kind)
    _check_distill(cfg, kind)
    _check_sdxl(cfg)
    _check_controlnet(cfg, kind)


def _check_sdxl(cfg: dict) -> None:
    """An SDXL run trains a LoRA on the U-Net, exported in kohya's layout (ldm.training.sdxl_module): no whole-model
    export, no text towers."""
    text = ((cfg["model"].get("params") or {}).get("cond_stage_config") or {}).get("target")
    if not isinstance(text, str) or canonical_target(text) != "ldm.models.sdxl_text.SDXLTextEncoders":
        return
    lora = cfg["lora"]
    if not lora["rank"]:
        raise TrainConfigError("an SDXL model trains a LoRA (set lora.rank): whole SDXL U-Net exports are not made")
    if "text" in lora["targets"] or lora.get("train_whole") or (cfg.get("distill") or {}).get("teacher") is not None:
        raise TrainConfigError(
            "an SDXL LoRA adapts the U-Net alone (both text encoders frozen): no lora.targets text, "
            "lora.train_whole or distill.teacher"
        )


def check_stage(stage: Any, key: str = "distill.stage") -> None:
    """A distillation stage: "guidance", or an even number of teacher steps that the stage halves."""
    if stage == "guidance":
        return
    if not isinstance(stage, int) or isinstance(stage, bool) or stage < 2 or stage % 2:
        raise TrainConfigError(f"{key} must be 'guidance' or an even number of teacher steps >= 2, got {stage!r}")


def _check_distill(cfg: dict, kind: str) -> None:
    dist = cfg["distill"]
    if dist["teacher"] is None:
        return
    if kind != "diffusion":
        raise TrainConfigError(f"distill.teacher applies to diffusion runs, not to this {kind} run")
    check_stage(dist["stage"])
    scales = dist["scale_range"]
    if not (
        isinstance(scales, list)
        and len(scales) == 2
        and all(_is_number(w) and w >= 0 for w in scales)
        and scales[0] <= scales[1]
    ):
        raise TrainConfigError(f"distill.scale_range must be [lo, hi] with 0 <= lo <= hi, got {scales!r}")
    stages = dist["stages"]
    if not isinstance(stages, list) or not stages:
        raise TrainConfigError(f"distill.stages must be a list of stages, got {stages!r}")
    for stage in stages:
        check_stage(stage, "distill.stages")
    if cfg["lora"]["rank"] and "unet.guidance_embed" not in (cfg["lora"]["train_whole"] or []):
        raise TrainConfigError(
            "a LoRA student trains its new guidance embedding whole: add unet.guidance_embed to lora.train_whole"
        )
    steps = dist["steps_per_stage"]
    counts = steps if isinstance(steps, list) else [steps]
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts) or (
        isinstance(steps, list) and len(steps) != len(stages)
    ):
        raise TrainConfigError(f"distill.steps_per_stage must be a positive integer, or one per stage, got {steps!r}")


def _check_data_source(d: dict) -> None:
    shards = d["shards"]
    if shards is not None:
        if not (isinstance(shards, str) and shards) and not (
            isinstance(shards, list) and shards and all(isinstance(s, str) and s for s in shards)
        ):
            raise TrainConfigError(
                f"data.shards must be a shard path or URL pattern, or a list of them, got {shards!r}"
            )
        if d["root"] is not None:
            raise TrainConfigError(
                "set data.root (a folder) or data.shards (WebDataset tars), not both "
                "(add data.root=null when the config names a folder)"
            )
        if d["val_fraction"]:
            raise TrainConfigError(
                "data.val_fraction needs a folder; with data.shards set data.val_fraction=0 "
                "(and validate on a folder with data.val_root)"
            )
        if d["weighted"]:
            raise TrainConfigError(
                "data.weighted reads a folder's captions.jsonl weights; it does not apply to data.shards"
            )
    if d["remainder"] not in ("drop", "wrap"):
        raise TrainConfigError(f"data.remainder must be drop or wrap, got {d['remainder']!r}")
    if d["caption_column"] is not None and not (isinstance(d["caption_column"], str) and d["caption_column"]):
        raise TrainConfigError(f"data.caption_column must be a column name or null, got {d['caption_column']!r}")


def _check_lora(cfg: dict, kind: str) -> None:
    lora = cfg["lora"]
    _integer(cfg, "lora", "rank", 0, " (0: off)")
    if not lora["rank"]:
        if cfg["init"].get("lora"):
            raise TrainConfigError(
                "init.lora starts a LoRA adapter from a file; set lora.rank (and its targets) to match it"
            )
        return
    if kind != "diffusion":
        raise TrainConfigError(f"lora.rank applies to diffusion runs, not to this {kind} run (set lora.rank=0)")
    _number(cfg, "lora", "alpha", 1e-12, math.inf, "a positive number", optional=True)
    if _number(cfg, "lora", "dropout", 0.0, 1.0, "a probability in [0, 1)") == 1.0:
        raise TrainConfigError("lora.dropout must be a probability in [0, 1), got 1.0")
    from ldm.adapters.lora_layers import GROUPS

    targets = lora["targets"]
    if not isinstance(targets, list) or not targets or any(t not in GROUPS for t in targets):
        raise TrainConfigError(f"lora.targets must be a list of {', '.join(GROUPS)}, got {targets!r}")
    if "text" in targets and cfg["training"]["text_cache"]:
        raise TrainConfigError(
            "lora.targets with text trains the text encoder, whose outputs training.text_cache "
            "would keep stale: set training.text_cache=0"
        )
    if "text" in targets and cfg["training"]["cache_dir"]:
        raise TrainConfigError(
            "lora.targets with text trains the text encoder, whose outputs training.cache_dir "
            "would keep stale: set training.cache_dir=null"
        )


def _check_labels(d: dict) -> None:
    classes = d["classes"]
    if classes is not None and (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise TrainConfigError(
            f"data.classes must be a list of distinct names (or null: read from the data), got {classes!r}"
        )
    if classes is not None and d["label_field"] is None:
        raise TrainConfigError("data.classes needs data.label_field (the captions.jsonl field that holds the class)")
    if d["label_field"] is not None and d["shards"] is not None:
        raise TrainConfigError("data.label_field needs a folder's captions.jsonl; it does not apply to data.shards")


def _check_controlnet(cfg: dict, kind: str) -> None:
    control = cfg["controlnet"]
    if not isinstance(control["train"], bool):
        raise TrainConfigError(f"controlnet.train must be true or false, got {control['train']!r}")
    if not control["train"]:
        return
    if not isinstance(control.get("export_diffusers", False), bool):
        raise TrainConfigError(
            f"controlnet.export_diffusers must be true or false, got {control['export_diffusers']!r}"
        )
    if control.get("kind", "controlnet") not in ("controlnet", "t2i_adapter"):
        raise TrainConfigError(f"controlnet.kind must be controlnet or t2i_adapter, got {control['kind']!r}")
    if kind != "diffusion":
        raise TrainConfigError(f"controlnet.train applies to diffusion runs, not to this {kind} run")
    if cfg["lora"]["rank"] or cfg["distill"]["teacher"] is not None:
        raise TrainConfigError(
            "controlnet.train trains a ControlNet on a frozen model: set lora.rank=0 and no distill.teacher"
        )
    from ldm.io.control_images import PREPROCESSORS

    if control["preprocess"] not in PREPROCESSORS:
        raise TrainConfigError(
            f"controlnet.preprocess must be one of {', '.join(PREPROCESSORS)}, got {control['preprocess']!r}"
        )
    if control["control_key"] is not None and cfg["data"]["shards"] is None:
        raise TrainConfigError(
            "controlnet.control_key reads control images from data.shards; a folder's are in controlnet.control_root"
        )
    if control["control_root"] is not None and cfg["data"]["shards"] is not None:
        raise TrainConfigError(
            "controlnet.control_root is a folder beside data.root; with data.shards carry each sample's control "
            "image in the shards (controlnet.control_key=control.png)"
        )
    low = _number(cfg, "controlnet", "low", 0.0, math.inf, "a threshold >= 0")
    high = _number(cfg, "controlnet", "high", 0.0, math.inf, "a threshold >= 0")
    if low > high:
        raise TrainConfigError(f"controlnet.low must not exceed controlnet.high, got {low} and {high}")
