"""A training run from a resolved config: build model, data, Trainer; fit; export.

Run directory layout (`logging.run_dir`):

    config.yaml                 the resolved training config
    checkpoints/last.ckpt       Lightning checkpoint for exact resume (also step-NNNNNN.ckpt every N steps)
    csv/version_K/metrics.csv   losses (CSVLogger); tensorboard/version_K/ (TensorBoardLogger)
    samples/step-NNNNNN.png     sample grids
    run.lock                    while a run lives: its lock (ldm.training.run_lock), one training per folder
    model.safetensors, model.yaml   inference export (vae.safetensors, vae.yaml for autoencoder runs)
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from ldm.core.config import instantiate
from ldm.core.devices import training_precision
from ldm.core.errors import LdmError
from ldm.formats.derived import widen_unet_input
from ldm.io.checkpoint import CheckpointError, load_into, load_state_dict, weights_in_our_layout
from ldm.io.images import check_writable
from ldm.training.callbacks import ExportOnTrainEnd, ResumableStop, SampleGrid
from ldm.training.captions import CaptionSampling
from ldm.training.config import dump, is_autoencoder, is_clip, load_train_config
from ldm.training.config_checks import TrainConfigError
from ldm.training.data import ImageTextDataModule
from ldm.training.resume import (
    LAST,
    ResumeError,
    SafeCheckpointIO,
    check_resumable,
    check_same_data_order,
    read_checkpoint,
    resolve_resume,
)
from ldm.training.run_lock import RunFolderLock, is_rank_zero_process

log = logging.getLogger(__name__)

__all__ = ["LAST", "ExportExistsError", "ResumeError", "RunDirError", "RunDirExistsError", "TrainingStopped", "build_data", "build_module", "build_trainer",  # noqa: E501
           "config_for", "export_checkpoint", "read_checkpoint", "resolve_resume", "run", "train"]


class RunDirExistsError(LdmError, FileExistsError):
    """A new run asked to write into the folder of an earlier run."""


class RunDirError(LdmError, OSError):
    """A run folder that cannot be written."""


class ExportExistsError(LdmError, FileExistsError):
    """An export-only run asked to write over existing exports without --overwrite."""


class TrainingStopped(LdmError):
    """Training stopped by SIGINT/SIGTERM after writing last.ckpt; the exit status says which (130 / 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ---- initial weights ---------------------------------------------------------
def _part(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors under the first prefix present (stripped), or the whole state if it is already bare."""
    parts = ({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} for prefix in prefixes)
    return next((part for part in parts if part), state)


def _load_part(module: torch.nn.Module, path: str | os.PathLike, prefixes: tuple[str, ...], drop: tuple[str, ...] = ()) -> None:  # noqa: E501
    state = _part(load_state_dict(path), prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    try:
        load_into(module, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    log.info("initialised %s from %s", type(module).__name__, path)


VAE_PREFIXES = ("first_stage_model.", "vae.")
TEXT_PREFIXES = ("cond_stage_model.model.", "text_encoder.model.")
UNET_PREFIXES = ("model.diffusion_model.", "unet.")


def load_init_weights(model: torch.nn.Module, init: dict[str, Any], autoencoder: bool = False) -> None:
    """Load the `init:` section's local weight files: a whole checkpoint first, then parts over it."""
    if autoencoder:
        extra = [k for k in ("text_encoder", "unet") if init.get(k)]
        if extra:
            raise TrainConfigError(f"init.{extra[0]} does not apply to an autoencoder run (use init.vae)")
        for key in ("checkpoint", "vae"):
            if init.get(key):
                _load_part(model, init[key], VAE_PREFIXES, drop=("loss.",))
        return
    if init.get("checkpoint") and init.get("widen_input"):
        state = widen_unet_input(weights_in_our_layout(init["checkpoint"]), model.state_dict())
        try:
            load_into(model, state)
        except CheckpointError as exc:
            raise CheckpointError(f"{init['checkpoint']}: {exc}") from None
    elif init.get("checkpoint") and getattr(model, "guidance_embedded", False):
        # A distillation student made from a model without a guidance embedding: its new one starts as built.
        state = weights_in_our_layout(init["checkpoint"])
        own = {k: v for k, v in model.state_dict().items() if k.startswith("unet.guidance_embed.")}
        try:
            load_into(model, {**own, **state})
        except CheckpointError as exc:
            raise CheckpointError(f"{init['checkpoint']}: {exc}") from None
    elif init.get("checkpoint"):
        model.load_weights(init["checkpoint"])  # type: ignore[operator]
    elif init.get("widen_input"):
        raise TrainConfigError("init.widen_input needs init.checkpoint (the model whose U-Net is widened)")
    if init.get("vae"):
        _load_part(model.vae, init["vae"], VAE_PREFIXES, drop=("loss.",))  # type: ignore[arg-type]
    if init.get("text_encoder"):
        _load_part(model.text_encoder.model, init["text_encoder"], TEXT_PREFIXES, drop=("visual.",))  # type: ignore[union-attr]
    if init.get("unet"):
        _load_part(model.unet, init["unet"], UNET_PREFIXES)  # type: ignore[arg-type]


# ---- building blocks ----------------------------------------------------------
# The task the model's conditioning kind is made for (ldm.models.latent_diffusion.CONDITIONING) picks the module: text-
# to-image, inpainting (mask + masked image), x4 upscaling (low-res image + noise level); SDXL its own (its vector y).
MODULE_FOR_TASK = {
    "txt2img": ("ldm.training.ldm_module", "LatentDiffusionModule"),
    "inpaint": ("ldm.training.editing", "InpaintingModule"),
    "upscale": ("ldm.training.editing", "UpscalerModule"),
    "sdxl": ("ldm.training.sdxl_module", "SDXLModule"),
    "controlnet": ("ldm.training.controlnet_module", "ControlNetModule"),  # a ControlNet on the frozen model
}

def build_module(cfg: dict) -> pl.LightningModule:
    """The Lightning module for the config's model, with init weights loaded (before the EMA copy is made)."""
    from ldm.training.labels import with_classes

    cfg = with_classes(cfg)  # class names into the model node (a no-op without data.label_field)
    t = cfg["training"]
    model = instantiate(cfg["model"])
    if is_clip(cfg):
        from ldm.training.clip_module import ClipModule

        if any(cfg["init"].get(k) for k in ("text_encoder", "unet", "vae")):
            raise TrainConfigError("a CLIP run takes only init.checkpoint (whole open_clip weights)")
        if cfg["init"].get("checkpoint"):
            _load_part(model, cfg["init"]["checkpoint"], ())
        return ClipModule(model, lr=t["lr"], weight_decay=t["weight_decay"], warmup_steps=t["warmup_steps"],
                          betas=tuple(t["betas"]), seed=t["seed"], config=cfg)
    if is_autoencoder(cfg):
        from ldm.training.vae_module import AutoencoderModule

        load_init_weights(model, cfg["init"], autoencoder=True)
        return AutoencoderModule(
            model, lr=t["lr"], weight_decay=t["weight_decay"], betas=tuple(t["betas"]), warmup_steps=t["warmup_steps"],
            rec_loss=t["rec_loss"], kl_weight=t["kl_weight"], perceptual_weight=t["perceptual_weight"],
            lpips_vgg=t["lpips_vgg"], lpips_lin=t["lpips_lin"], disc_start=t["disc_start"], disc_weight=t["disc_weight"],  # noqa: E501
            disc_lr=t["disc_lr"], disc_layers=t["disc_layers"], disc_channels=t["disc_channels"],
            adaptive_disc_weight=t["adaptive_disc_weight"], grad_clip=t["grad_clip"], accumulate=t["accumulate"],
            seed=t["seed"], config=cfg)
    from ldm.models.latent_diffusion import LatentDiffusion
    if not isinstance(model, LatentDiffusion):
        raise TrainConfigError(f"model target {cfg['model']['target']!r} is neither a LatentDiffusion nor an AutoencoderKL")  # noqa: E501
    sdxl = hasattr(model.text_encoder, "micro_conditions")  # ldm.models.sdxl_text's: its own module
    module_name, class_name = MODULE_FOR_TASK["controlnet" if cfg["controlnet"]["train"] else "sdxl" if sdxl else model.kind.task]  # noqa: E501
    if model.class_names is not None and not cfg["controlnet"]["train"]:  # class labels (data.label_field) as y
        module_name, class_name = "ldm.training.label_module", "ClassConditionalModule"
    module_class = getattr(importlib.import_module(module_name), class_name)
    load_init_weights(model, cfg["init"])
    distilling = cfg["distill"]["teacher"] is not None
    sf = t["scale_factor"]
    kwargs = dict(lr=t["lr"], weight_decay=t["weight_decay"], betas=tuple(t["betas"]), warmup_steps=t["warmup_steps"],
                  ema_decay=t["ema_decay"], cond_dropout=t["cond_dropout"], gradient_checkpointing=t["gradient_checkpointing"],  # noqa: E501
                  compile=t["compile"], estimate_scale_factor=sf is None and not distilling, seed=t["seed"], text_cache=t["text_cache"],  # noqa: E501
                  latent_cache=t["latent_cache"], cache_dir=t["cache_dir"], lora=cfg["lora"], config=cfg)
    if distilling:
        from ldm.training.distill_module import build_distillation

        # The student starts as the teacher, scale_factor included (null, "estimate", keeps the teacher's too).
        module = build_distillation(cfg, model, kwargs)
        if isinstance(sf, (int, float)) and not isinstance(sf, bool):
            model.vae.scale_factor = float(sf)
        return module
    if isinstance(sf, (int, float)) and not isinstance(sf, bool):
        model.vae.scale_factor = float(sf)
    if model.class_names is not None:
        kwargs["label_dropout"] = t["label_dropout"]
    return module_class(model, **kwargs)


def build_data(cfg: dict) -> ImageTextDataModule:
    d = cfg["data"]
    return ImageTextDataModule(d["root"], d["size"], d["batch_size"], flip=d["flip"], center_crop=d["center_crop"],
                               num_workers=d["num_workers"], val_fraction=d["val_fraction"], val_root=d["val_root"],
                               val_batch_size=d["val_batch_size"], seed=cfg["training"]["seed"], weighted=d["weighted"],
                               captions=CaptionSampling(d["keyword_prob"], d["max_keywords"], d["style_prob"]),
                               max_unreadable=d["max_unreadable"], shards=d["shards"], remainder=d["remainder"],
                               caption_column=d["caption_column"], label_field=d["label_field"], classes=d["classes"],
                               control_key=cfg["controlnet"]["control_key"] if cfg["controlnet"]["train"] else None)


def build_loggers(cfg: dict) -> list[Logger]:
    lg, run_dir = cfg["logging"], Path(cfg["logging"]["run_dir"])
    loggers: list[Logger] = []
    if lg["csv"]:
        loggers.append(CSVLogger(run_dir, name="csv"))
    if lg["tensorboard"]:
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="tensorboard"))
        except ModuleNotFoundError:
            log.warning("tensorboard is not installed: TensorBoard logging off (pip install tensorboard)")
    return loggers


def build_trainer(cfg: dict, extra_callbacks: list[pl.Callback] | None = None,
                  preloaded: dict[str, dict] | None = None) -> pl.Trainer:
    """The Trainer for a run; `preloaded` ({path: checkpoint}) is what resume reads instead of the file."""
    t, lg = cfg["training"], cfg["logging"]
    run_dir = Path(lg["run_dir"])
    # No version counter: last.ckpt is the one file --resume reads, and both this callback and ResumableStop
    # write it at the end of a run; with the counter the second write went to an unread last-v1.ckpt.
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step-{step:06d}", auto_insert_metric_name=False,  # noqa: E501
                                 every_n_train_steps=int(lg["checkpoint_every_n_steps"] or 0), save_top_k=-1,
                                 save_last=True, save_on_exception=True, enable_version_counter=False)
    sample_kwargs = {} if is_autoencoder(cfg) else {
        "prompts": list(lg["sample_prompts"] or []), "steps": lg["sample_steps"],
        "guidance_scale": lg["sample_scale"], "seed": lg["sample_seed"]}
    callbacks: list[pl.Callback] = [checkpoint, SampleGrid(run_dir / "samples", lg["sample_every_n_steps"], **sample_kwargs),  # noqa: E501
                                    ExportOnTrainEnd(run_dir, cfg), ResumableStop(run_dir / "checkpoints" / "last.ckpt", lg["checkpoint_every_n_steps"])]  # noqa: E501
    loggers = build_loggers(cfg)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    kwargs = dict(cfg["trainer"])
    kwargs["precision"] = training_precision(kwargs.get("precision", "32-true"), str(kwargs.get("accelerator", "auto")))
    if not (cfg["data"]["val_fraction"] or cfg["data"]["val_root"]):
        kwargs.setdefault("limit_val_batches", 0)  # no validation set: skip the (empty) validation loop
    if is_autoencoder(cfg) and t["disc_start"] is not None and _plain_ddp(kwargs):
        # Each of the two backward passes reaches only one of the networks; plain DDP refuses that.
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
        log.info("autoencoder with a discriminator: using strategy ddp_find_unused_parameters_true")
    if not is_autoencoder(cfg):  # the autoencoder steps its optimisers by hand and clips/accumulates itself
        kwargs["gradient_clip_val"] = t["grad_clip"]
        kwargs["accumulate_grad_batches"] = int(t["accumulate"])
    try:
        # SafeCheckpointIO: every checkpoint Lightning reads goes through the weights-only loader.
        return pl.Trainer(default_root_dir=run_dir, logger=loggers or False, plugins=[SafeCheckpointIO(preloaded)],
                          callbacks=callbacks + list(extra_callbacks or []), **kwargs)
    except (TypeError, ValueError, MisconfigurationException) as exc:  # what Lightning says of its own arguments
        raise TrainConfigError(f"trainer section: {str(exc).splitlines()[0]}") from None


def _plain_ddp(trainer_kwargs: dict) -> bool:
    """Whether the Trainer will run plain DDP: asked for by name, or chosen by "auto" for several processes."""
    strategy = trainer_kwargs.get("strategy", "auto")
    if strategy == "ddp":
        return True
    devices = trainer_kwargs.get("devices", "auto")
    processes = devices if isinstance(devices, int) else len(devices) if isinstance(devices, (list, tuple)) else 1
    return strategy == "auto" and (processes > 1 or int(trainer_kwargs.get("num_nodes", 1) or 1) > 1)


# ---- resume and export ---------------------------------------------------------
def config_for(config_path: str | os.PathLike | None, overrides: list[str],
               resume: str | None) -> tuple[dict, dict | None]:
    """The run's config (the YAML given, or else the one stored in the checkpoint resumed from), and that
    checkpoint when it had to be read for it (so it is read once)."""
    if config_path is not None:
        return load_train_config(config_path, overrides), None
    if resume is None or str(resume) == LAST:
        raise TrainConfigError("give a training config (--config), or --resume with a checkpoint path or run directory")
    ckpt = read_checkpoint(resolve_resume(resume, None))  # type: ignore[arg-type]
    stored = (ckpt.get("ldm") or {}).get("config")
    if not isinstance(stored, dict):
        raise TrainConfigError(f"{resume} holds no training config; give --config")
    return load_train_config(None, overrides, base=stored), ckpt


def export_checkpoint(cfg: dict, checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      loaded: dict | None = None, overwrite: bool = False) -> tuple[Path, Path]:
    """Inference export from a Lightning checkpoint, without training (`ldm train --export-only`).

    Exports already in out_dir (a finished run's own, or an earlier export) are refused unless `overwrite`."""
    from ldm.training.export import export_module, export_names
    from ldm.training.labels import with_classes

    cfg = with_classes(cfg)  # a class-conditional run's names, as its training run wrote them into model.yaml
    ckpt = loaded if loaded is not None else read_checkpoint(checkpoint)
    module = build_module(cfg)
    check_resumable(ckpt, module, checkpoint)
    out = Path(out_dir or cfg["logging"]["run_dir"])
    existing = next((out / name for name in export_names(module) if (out / name).exists()), None)
    if existing is not None and not overwrite:
        raise ExportExistsError(f"{existing} already exists (--overwrite replaces it)")
    module.load_state_dict(ckpt["state_dict"], strict=True)
    module.on_load_checkpoint(ckpt)
    return export_module(module, cfg, out, step=ckpt.get("global_step"))


def check_new_run_dir(run_dir: Path, overwrite: bool = False) -> None:
    """A new run must not write into an earlier run's folder: its exports would be overwritten, and a later
    --resume would pick up the earlier run's last.ckpt. `overwrite` removes the earlier checkpoints instead."""
    exports = ("model.safetensors", "vae.safetensors", "lora.safetensors", "controlnet.safetensors")
    earlier = [p for p in (run_dir / "checkpoints", *(run_dir / name for name in exports))
               if p.exists() and (p.is_file() or any(p.iterdir()))]
    if not earlier:
        return
    if not overwrite:
        raise RunDirExistsError(f"{run_dir} already holds a run ({earlier[0].name}); continue it with --resume, "
                                "start over with --overwrite, or choose another logging.run_dir")
    log.warning("--overwrite: removing the earlier run's checkpoints in %s", run_dir)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _stop_callback(trainer: pl.Trainer) -> ResumableStop | None:
    return next((c for c in trainer.callbacks if isinstance(c, ResumableStop)), None)  # type: ignore[attr-defined]


def train(cfg: dict, resume: str | os.PathLike | None = None, extra_callbacks: list[pl.Callback] | None = None,
          overwrite: bool = False, checkpoint: dict | None = None) -> tuple[pl.LightningModule, pl.Trainer]:
    """Fit from scratch (or from `resume`: `last`, a run directory, or a .ckpt) and export at the end.

    `checkpoint` is the resumed file's content when the caller has already read it. A run stopped by
    Ctrl-C or SIGTERM raises TrainingStopped once last.ckpt is written.
    """
    from ldm.training.labels import with_classes

    cfg = with_classes(cfg)  # fixed before config.yaml and the checkpoints record it, so inference knows the names
    ckpt_path = resolve_resume(resume, cfg)
    run_dir = Path(cfg["logging"]["run_dir"])
    # Both are by design here: the VAE/text encoder are frozen in eval mode, and the autoencoder's
    # checkpoints hold the state after its (manual) optimiser steps, like every automatic-optimisation run.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    pl.seed_everything(int(cfg["training"]["seed"]), workers=True, verbose=False)
    if ckpt_path is not None and checkpoint is None:
        checkpoint = read_checkpoint(ckpt_path)  # first: a bad file is reported before any work
    # Found before the model is built and the data read, not when the first checkpoint is due.
    check_writable(run_dir, RunDirError, f"the run folder {run_dir} (logging.run_dir)")
    # One live training per folder (ldm.training.run_lock): held until this function returns, or the process ends.
    lock = RunFolderLock(run_dir).acquire() if is_rank_zero_process() else None
    try:
        data = build_data(cfg)  # data errors are cheaper to report than after building a large model
        data.setup()  # scans the folders now: a missing or empty one is said before anything is written
        module = build_module(cfg)
        if ckpt_path is not None:
            check_resumable(checkpoint, module, ckpt_path)  # type: ignore[arg-type]
        trainer = build_trainer(cfg, extra_callbacks, preloaded={str(ckpt_path): checkpoint} if ckpt_path else None)
        if ckpt_path is not None:
            check_same_data_order(checkpoint, cfg, trainer.world_size, ckpt_path)  # type: ignore[arg-type]
        if trainer.is_global_zero:  # other ranks start once rank 0 has begun writing here
            if ckpt_path is None:
                check_new_run_dir(run_dir, overwrite)
            dump(cfg, run_dir / "config.yaml")
        if ckpt_path is not None:
            log.info("resuming from %s", ckpt_path)
        try:
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        except SIGTERMException:
            stop = _stop_callback(trainer)
            signum = stop.signum if stop is not None else signal.SIGTERM
            raise TrainingStopped(f"stopped by {signal.Signals(signum).name} at step {trainer.global_step}; "
                                  f"last.ckpt is saved, continue with --resume", signum) from None
        finally:  # Ctrl-C's handler goes also when an earlier callback's on_exception raised (a full disk)
            if (stop := _stop_callback(trainer)) is not None:
                stop._restore()
        return module, trainer
    finally:
        if lock is not None:
            lock.release()


def run(config_path: str | os.PathLike | None, overrides: list[str] | None = None, resume: str | None = None,
        export_only: bool = False, out_dir: str | os.PathLike | None = None, overwrite: bool = False) -> int:
    """What `ldm train` does."""
    overrides = list(overrides or [])
    cfg, ckpt = config_for(config_path, overrides, resume)
    if export_only:
        path = resolve_resume(resume or LAST, cfg)
        weights, config = export_checkpoint(cfg, path, out_dir, loaded=ckpt,  # type: ignore[arg-type]
                                            overwrite=overwrite)
        log.info("exported %s and %s", weights, config)
        return 0
    train(cfg, resume, overwrite=overwrite, checkpoint=ckpt)
    return 0
