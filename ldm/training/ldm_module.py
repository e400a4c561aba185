"""Lightning wrapper for training the U-Net of a `LatentDiffusion` model (text-to-image).

The wrapper is thin: the networks are the plain modules of `ldm.models.latent_diffusion`, the loss is
`ldm.diffusion.parameterisation.diffusion_loss`; precision, gradient clipping and accumulation, devices and
strategies are the Trainer's. What lives here: the frozen VAE/text encoder, latent scaling
(and its one-time estimate), conditioning dropout for classifier-free guidance, the optimiser
with warm-up, and an EMA of the U-Net.

Randomness (posterior sample, noise, timesteps, dropped prompts) comes from a generator seeded
by (seed, batch counter, rank), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image

from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.vae import DiagonalGaussianDistribution
from ldm.training.base import TrainingModule
from ldm.training.config import DiffusionTraining as _D
from ldm.training.disk_cache import DiskCache, module_fingerprint, text_encoder_fingerprint
from ldm.training.ema import make_ema

log = logging.getLogger(__name__)


class LatentDiffusionModule(TrainingModule):
    """Trains `model.unet`; `model.vae` and `model.text_encoder` stay frozen.

    Subclasses for inpainting or upscaling override `conditions`, the U-Net's extra inputs (concat, y).
    """

    STEP_SALT = 12345

    def __init__(
        self,
        model: LatentDiffusion,
        lr: float = _D.lr,
        weight_decay: float = _D.weight_decay,
        betas: tuple[float, float] = tuple(_D().betas),
        warmup_steps: int = _D.warmup_steps,
        ema_decay: float | None = _D.ema_decay,
        cond_dropout: float = _D.cond_dropout,
        gradient_checkpointing: bool = _D.gradient_checkpointing,
        compile: bool = _D.compile,
        estimate_scale_factor: bool = False,
        seed: int = _D.seed,
        text_cache: int = _D.text_cache,
        latent_cache: int = _D.latent_cache,
        cache_dir: str | None = _D.cache_dir,
        lora: dict | None = None,
        config: dict | None = None,
    ):
        """Defaults: `ldm.training.config.DiffusionTraining`'s, the one set a YAML run gets too.

        lora: the config's `lora:` section ({rank, alpha, dropout, targets}); with a rank, only low-rank
        adapters train (ldm.adapters.lora.add_lora freezes everything else) and there is no EMA: the adapter is small
        and its fine-tunes short, and an EMA copy of the whole U-Net would double its memory.
        """
        super().__init__(seed=seed, warmup_steps=warmup_steps, config=config)
        self.model = model
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), tuple(float(b) for b in betas)
        self.cond_dropout = float(cond_dropout)
        self.needs_scale_factor = bool(estimate_scale_factor)
        # The text encoder is frozen, so a caption's context never changes: small captioned sets (a few
        # thousand captions, seen every epoch) skip the encoder after the first epoch. Not saved in checkpoints.
        self.text_cache_size = int(text_cache)
        self._text_cache: dict[str, torch.Tensor] = {}
        # Likewise the frozen VAE's posterior of an image: its moments (mean, log-variance) are kept per image
        # key, and each step still draws a fresh latent from them, so training sees the same distribution.
        self.latent_cache_size = int(latent_cache)
        self._latent_cache: dict[str, torch.Tensor] = {}
        # Both also on disk with cache_dir (ldm.training.disk_cache): they then outlive the process (restarts,
        # later runs). Opened at first use, so the fingerprints hash the weights training actually encodes with.
        self.cache_dir = cache_dir
        self._disk: dict[str, DiskCache] = {}
        frozen = [model.vae] + ([model.text_encoder] if model.text_encoder is not None else [])  # label-only: no text
        for p in [p for network in frozen for p in network.parameters()]:
            p.requires_grad_(False)
        model.unet.requires_grad_(True)
        if gradient_checkpointing:
            model.unet.set_gradient_checkpointing(True)
        self.lora = dict(lora) if lora and lora.get("rank") else None
        if self.lora is not None:
            from ldm.adapters.lora import add_lora

            names = add_lora(model, self.lora["targets"], self.lora["rank"], self.lora["alpha"], self.lora["dropout"])
            for path in self.lora.get("train_whole") or ():
                model.get_submodule(path).requires_grad_(True)  # a wrong path fails here, in one line
            start = ((config or {}).get("init") or {}).get("lora")
            if start:  # e.g. the stage before of a distillation: the adapter goes on from there
                from ldm.formats.derived import load_adapter

                load_adapter(model, start)
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info(
                "LoRA rank %d on %d modules (%s): %d trainable parameters; the base is frozen, no EMA",
                self.lora["rank"],
                len(names),
                ", ".join(self.lora["targets"]),
                trained,
            )
            ema_decay = None
        self.ema = make_ema(model.unet, ema_decay) if ema_decay is not None else None
        # Compiled forward kept outside the module tree, so state-dict keys stay those of the plain U-Net.
        object.__setattr__(self, "_unet_fn", torch.compile(model.unet) if compile else model.unet)

    # ---- conditioning hook -------------------------------------------------
    def conditions(self, batch: dict, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """The U-Net's inputs beside the noisy latent and the text: "concat" (channels concatenated to it: the
        inpainting mask + masked image, the upscaler's low-res image) and "y" (the upscaler's noise level).
        None of them for text-to-image. Built by the same code as at inference (ldm.tasks.inpaint, ldm.tasks.upscale)."""
        return {}

    def drop_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """True where the prompt is replaced by "" (probability cond_dropout), teaching the unconditional model."""
        return (
            torch.rand(batch_size, generator=generator, device=generator.device if generator else "cpu")
            < self.cond_dropout
        )

    def disk_cache(self, kind: str) -> DiskCache | None:
        """The on-disk cache of "text" contexts or "latent" posterior moments; None without cache_dir."""
        if not self.cache_dir:
            return None
        if kind not in self._disk:
            fingerprint = (
                text_encoder_fingerprint(self.model.text_encoder)
                if kind == "text"
                else module_fingerprint(self.model.vae)
            )
            self._disk[kind] = DiskCache(self.cache_dir, kind, fingerprint)
            log.info("%s cache on disk: %s", kind, self._disk[kind].folder)
        return self._disk[kind]

    def _cached(
        self, kind: str, memory: dict[str, torch.Tensor], size: int, keys: list[str], encode: Any
    ) -> dict[str, torch.Tensor]:
        """Each distinct key's tensor: from memory, else from disk, else encode(missing keys) (then stored in
        both). Memory keeps up to `size` entries; the disk keeps all."""
        distinct = list(dict.fromkeys(keys))
        found = {k: memory[k] for k in distinct if k in memory}
        disk = self.disk_cache(kind)
        if disk is not None:
            found.update(disk.read([k for k in distinct if k not in found], self.device))
        missing = [k for k in distinct if k not in found]
        if missing:
            fresh = encode(missing)
            if disk is not None:
                disk.write(fresh)
            found.update(fresh)
        for key in distinct:
            if key not in memory and len(memory) < size:
                memory[key] = found[key]
        return found

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Cross-attention contexts for captions, each distinct caption through the encoder once when cached."""
        if not self.text_cache_size and not self.cache_dir:
            return self.model.encode_text(captions)
        found = self._cached(
            "text",
            self._text_cache,
            self.text_cache_size,
            captions,
            lambda missing: dict(zip(missing, self.model.encode_text(missing))),
        )
        return torch.stack([found[c] for c in captions])

    def dropped_captions(self, captions: list[str], generator: torch.Generator | None = None) -> list[str]:
        mask = self.drop_mask(len(captions), generator).tolist()
        return ["" if drop else caption for caption, drop in zip(captions, mask)]

    # ---- training -----------------------------------------------------------
    @torch.no_grad()
    def _estimate_scale_factor(self, z: torch.Tensor) -> None:
        # Like the reference's scale_by_std: 1/std of the first batch's latents, over all ranks.
        stats = torch.stack([z.float().mean(), z.float().pow(2).mean()])
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="mean")
        std = (stats[1] - stats[0] ** 2).clamp_min(1e-12).sqrt()
        self.model.vae.scale_factor = float(1.0 / std)
        self.needs_scale_factor = False
        log.info("estimated scale_factor = %.5f (1/std of the first batch's latents)", self.model.vae.scale_factor)

    def posterior(self, images: torch.Tensor, keys: list[str] | None = None) -> DiagonalGaussianDistribution:
        """q(z|x) of a batch; with the latent cache, each distinct image key through the encoder once. On disk
        the key holds the image's size too, since another data.size makes another image of the same file."""
        if not (self.latent_cache_size or self.cache_dir) or keys is None:
            return self.model.vae.encode(images)
        if self.cache_dir:
            keys = [f"{k}@{images.shape[-2]}x{images.shape[-1]}" for k in keys]
        index = {k: i for i, k in reversed(list(enumerate(keys)))}

        def encode(missing: list[str]) -> dict[str, torch.Tensor]:
            rows = [index[k] for k in missing]
            return dict(zip(missing, self.model.vae.encode(images[rows]).moments))

        found = self._cached("latent", self._latent_cache, self.latent_cache_size, keys, encode)
        return DiagonalGaussianDistribution(torch.stack([found[k] for k in keys]))

    def latents(
        self, images: torch.Tensor, generator: torch.Generator | None = None, keys: list[str] | None = None
    ) -> torch.Tensor:
        with torch.no_grad():
            z = self.posterior(images, keys).sample(generator)
            if self.needs_scale_factor:
                self._estimate_scale_factor(z)
            return z * self.model.vae.scale_factor

    def loss(self, batch: dict, generator: torch.Generator | None = None, drop: bool = True) -> torch.Tensor:
        images = batch["image"].to(self.device)
        latents = self.latents(images, generator, batch.get("key"))
        captions = list(batch["caption"])
        if drop:
            captions = self.dropped_captions(captions, generator)
        context = self.encode_captions(captions)
        # The parameterisation the samplers' denoiser uses too (model.denoiser()): one schedule, one target.
        return self.model.parameterisation().loss(
            self._unet_fn, latents, context, generator, **self.conditions(batch, latents)
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, self.step_generator())
        self.batches_seen += 1
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Fixed noise per validation batch, so the curve compares like with like across evaluations.
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss = self.loss(batch, g, drop=False)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"]))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after each real optimiser step (not per accumulated micro-batch), and before callbacks'
        # on_train_batch_end, so a checkpoint taken at this step already holds this step's EMA.
        if self.ema is not None:
            self.ema.update_parameters(self.model.unet)

    def configure_optimizers(self) -> Any:
        # The U-Net's weights, or with LoRA the adapters (on the U-Net and, with target text, the text encoder).
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule(opt), "interval": "step"}}

    def train(self, mode: bool = True) -> LatentDiffusionModule:
        super().train(mode)
        self.model.vae.eval()  # frozen parts stay in eval mode (no dropout) while the U-Net trains
        if self.ema is not None:
            self.ema.eval()
        return self

    # ---- checkpoints --------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "scale_factor": self.model.vae.scale_factor,
            "needs_scale_factor": self.needs_scale_factor,
            **super().checkpoint_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ldm", {})
        if "scale_factor" in state:
            self.model.vae.scale_factor = float(state["scale_factor"])
            self.needs_scale_factor = bool(state["needs_scale_factor"])

    # ---- inference with the EMA weights -------------------------------------
    def inference_unet(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model.unet

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights (our key layout) with the EMA U-Net in place of the trained one."""
        state = self.model.state_dict()
        unet = self.inference_unet().state_dict()
        return {k: (unet[k[len("unet.") :]] if k.startswith("unet.") else v) for k, v in state.items()}

    @torch.no_grad()
    def sample_grid_images(
        self, prompts: list[str], steps: int = 20, guidance_scale: float = 5.0, seed: int = 0
    ) -> list[Image.Image]:
        """Images for prompts with the EMA U-Net (a view of the model with it; the model itself is not changed)."""
        from ldm.tasks.txt2img import txt2img

        if not prompts:
            return []
        was_training = self.training
        self.eval()
        try:
            return txt2img(
                self.model.with_unet(self.inference_unet()),
                prompts,
                seed=seed,
                steps=steps,
                guidance_scale=guidance_scale,
                progress=False,
            )
        finally:
            self.train(was_training)
