"""Lightning wrapper for training a KL autoencoder (`ldm.models.vae.AutoencoderKL`).

Loss, as the reference's LPIPSWithDiscriminator (without its learned log-variance):
    sum_pixels(|x - x'| [+ perceptual_weight * LPIPS]) / B  +  kl_weight * KL / B
    [+ d_weight * disc_weight * hinge generator loss, once disc_start steps are done]
Pixel sums (not means) keep the reference's kl_weight (1e-6) meaningful.

With a discriminator there are two optimisers, stepped by hand (`automatic_optimization = False`),
so gradient clipping and accumulation are done here with Lightning's helpers rather than by the Trainer.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.io.images import tensor_to_pil
from ldm.models.vae import AutoencoderKL
from ldm.training.base import TrainingModule
from ldm.training.config import AutoencoderTraining as _D
from ldm.training.losses import LPIPS, PatchDiscriminator, adaptive_weight, hinge_d_loss

log = logging.getLogger(__name__)


class AutoencoderModule(TrainingModule):
    STEP_SALT = 54321

    def __init__(
        self,
        vae: AutoencoderKL,
        lr: float = _D.lr,
        weight_decay: float = _D.weight_decay,
        betas: tuple[float, float] = tuple(_D().betas),
        warmup_steps: int = _D.warmup_steps,
        rec_loss: str = _D.rec_loss,
        kl_weight: float = _D.kl_weight,
        perceptual_weight: float = _D.perceptual_weight,
        lpips_vgg: str | os.PathLike | None = _D.lpips_vgg,
        lpips_lin: str | os.PathLike | None = _D.lpips_lin,
        disc_start: int | None = _D.disc_start,
        disc_weight: float = _D.disc_weight,
        disc_lr: float | None = _D.disc_lr,
        disc_layers: int = _D.disc_layers,
        disc_channels: int = _D.disc_channels,
        adaptive_disc_weight: bool = _D.adaptive_disc_weight,
        grad_clip: float | None = _D.grad_clip,
        accumulate: int = _D.accumulate,
        seed: int = _D.seed,
        config: dict | None = None,
    ):
        """Defaults: `ldm.training.config.AutoencoderTraining`'s, the one set a YAML run gets too."""
        super().__init__(seed=seed, warmup_steps=warmup_steps, config=config)
        if rec_loss not in ("l1", "l2"):
            raise InvalidOptionError(f"rec_loss must be l1 or l2, got {rec_loss!r}")
        self.automatic_optimization = False
        self.vae = vae
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), tuple(float(b) for b in betas)
        self.rec_loss, self.kl_weight = rec_loss, float(kl_weight)
        self.grad_clip, self.accumulate = grad_clip, int(accumulate)
        if (lpips_vgg is None) != (lpips_lin is None):
            raise InvalidOptionError(
                "LPIPS needs both training.lpips_vgg (VGG16 weights) and training.lpips_lin (LPIPS lin weights)"
            )
        if lpips_vgg is not None and perceptual_weight > 0:
            self.lpips: LPIPS | None = LPIPS(lpips_vgg, lpips_lin)  # type: ignore[arg-type]
            self.perceptual_weight = float(perceptual_weight)
        else:
            self.lpips, self.perceptual_weight = None, 0.0
            log.info("perceptual loss off (no local LPIPS weights: set training.lpips_vgg and training.lpips_lin)")
        self.disc_start = None if disc_start is None else int(disc_start)
        self.disc = (
            PatchDiscriminator(vae.decoder.conv_out.out_channels, disc_channels, disc_layers)
            if disc_start is not None
            else None
        )
        self.disc_weight, self.disc_lr, self.adaptive = float(disc_weight), disc_lr, bool(adaptive_disc_weight)
        self._fixed: torch.Tensor | None = None  # images whose reconstructions the sample grids show

    def losses(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(nll, kl, reconstruction and logs): the autoencoder's losses without the adversarial term."""
        posterior = self.vae.encode(images)
        recon = self.vae.decode(posterior.sample(generator) if sample else posterior.mode())
        diff = recon - images
        pixel = diff.abs() if self.rec_loss == "l1" else diff.pow(2)
        per_image = pixel.sum(dim=(1, 2, 3))
        logs = {"rec": pixel.mean().detach()}
        if self.lpips is not None:
            p = self.lpips(images, recon)
            per_image = per_image + self.perceptual_weight * p * pixel[0].numel()  # LPIPS counted at every pixel
            logs["perceptual"] = p.mean().detach()
        nll = per_image.mean()
        kl = posterior.kl().mean()
        logs["kl"] = kl.detach()
        return nll, kl, {"recon": recon, **logs}

    def disc_active(self) -> bool:
        return self.disc is not None and self.global_step >= self.disc_start  # type: ignore[operator]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        if self._fixed is None:
            self._fixed = images[:8].detach().cpu().clone()
        opts = self.optimizers()
        opt_ae, opt_d = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        boundary = (self.batches_seen + 1) % self.accumulate == 0
        use_disc = self.disc_active()

        if self.disc is not None:
            self.toggle_optimizer(opt_ae)
        nll, kl, out = self.losses(images, self.step_generator())
        loss = nll + self.kl_weight * kl
        if use_disc:
            g_loss = -self.disc(out["recon"]).mean()
            d_weight = (
                adaptive_weight(nll, g_loss, self.vae.decoder.conv_out.weight)
                if self.adaptive
                else torch.tensor(1.0, device=self.device)
            )
            loss = loss + self.disc_weight * d_weight * g_loss
            self.log_dict({"train/g_loss": g_loss.detach(), "train/d_weight": d_weight}, batch_size=len(images))
        self.manual_backward(loss / self.accumulate)
        if boundary:
            self._clip(opt_ae)
            opt_ae.step()
            opt_ae.zero_grad(set_to_none=True)
            sched = self.lr_schedulers()
            (sched[0] if isinstance(sched, list) else sched).step()
        if self.disc is not None:
            self.untoggle_optimizer(opt_ae)

        if use_disc and opt_d is not None:
            self.toggle_optimizer(opt_d)
            d_loss = hinge_d_loss(self.disc(images.detach()), self.disc(out["recon"].detach()))
            self.manual_backward(d_loss / self.accumulate)
            if boundary:
                self._clip(opt_d)
                # Through the strategy (same precision/scaler handling) but not LightningOptimizer.step,
                # which would count a second global step per batch and halve what trainer.max_steps means.
                self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None, model=self)
                opt_d.zero_grad(set_to_none=True)
            self.untoggle_optimizer(opt_d)
            self.log("train/d_loss", d_loss.detach(), batch_size=len(images))

        self.batches_seen += 1
        self.log_dict(
            {"train/loss": loss.detach(), "train/rec": out["rec"], "train/kl": out["kl"]},
            prog_bar=True,
            batch_size=len(images),
        )
        if "perceptual" in out:
            self.log("train/perceptual", out["perceptual"], batch_size=len(images))

    def _clip(self, opt: Any) -> None:
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=float(self.grad_clip), gradient_clip_algorithm="norm")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        nll, kl, out = self.losses(batch["image"], sample=False)
        self.log_dict(
            {"val/rec": out["rec"], "val/loss": nll + self.kl_weight * kl},
            prog_bar=True,
            sync_dist=True,
            batch_size=len(batch["image"]),
        )

    def configure_optimizers(self) -> Any:
        params = [p for p in self.vae.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        sched = self.lr_schedule(opt)
        if self.disc is None:
            return {"optimizer": opt, "lr_scheduler": sched}
        opt_d = torch.optim.AdamW(
            self.disc.parameters(), lr=float(self.disc_lr or self.lr), weight_decay=self.weight_decay, betas=self.betas
        )
        return [opt, opt_d], [sched]

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return self.vae.state_dict()

    @torch.no_grad()
    def sample_grid_images(self, **ignored: Any) -> list[Image.Image]:
        """Originals and their reconstructions, interleaved, for the first training images seen."""
        if self._fixed is None:
            return []
        was_training = self.training
        self.eval()
        try:
            x = self._fixed.to(self.device)
            recon = self.vae.decode(self.vae.encode(x).mode())
        finally:
            self.train(was_training)
        pairs = torch.stack([x, recon.clamp(-1, 1)], dim=1).flatten(0, 1)
        return tensor_to_pil(pairs)
