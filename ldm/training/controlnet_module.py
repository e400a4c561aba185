"""Lightning wrapper for training a ControlNet (Zhang et al. 2023) on a frozen text-to-image model.

The networks are the plain ones: the model's U-Net, VAE and text encoder (all frozen, in eval mode) and a
`ldm.models.controlnet.ControlNet` built from the U-Net after its weights are loaded, so it starts as a copy
of the U-Net's encoder with its zero convolutions (and the hint encoder's last convolution) at zero: at step 0
the controlled U-Net's output is the base model's exactly. The loss is the base's own (eps or v, the
parameterisation's `loss`) with the ControlNet's residuals added to the U-Net's skip connections and middle
block (ldm.models.controlnet.ControlledUNet, the same code sampling uses), and only the ControlNet trains.

Facts from lllyasviel/ControlNet kept here: the base is locked (its `sd_locked`; AdamW over the control model's
parameters alone), the control image is RGB in [0, 1], no EMA (`use_ema: False`), and half of the prompts are
replaced by "" (the paper, section 3.3: it makes the ControlNet read the control image's content when there is
no prompt, and trains it for guidance's unconditional side); its tutorial trains at lr 1e-5, batch 4.

The control image of each training image is made on the fly from the image itself by a preprocessor of
ldm.io.control_images (`controlnet.preprocess`), after any flip, so any captioned folder serves; or it is read
from `controlnet.control_root`, a folder holding a control image under each training image's relative path, or
with data.shards from each sample's `controlnet.control_key` file (KEY.control.png; ldm.data.shards).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm.core.errors import LdmError
from ldm.data.folder import load_rgb
from ldm.io.control_images import control_images
from ldm.models.controlnet import ControlledUNet, ControlNet
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.t2i_adapter import T2IAdapter, t2i_adapter_for
from ldm.training.config_checks import TrainConfigError
from ldm.training.controlnet_config import ControlNetSection
from ldm.training.ldm_module import LatentDiffusionModule

log = logging.getLogger(__name__)


class ControlImageError(LdmError, FileNotFoundError):
    """A training image without its control image in controlnet.control_root."""


class ControlNetModule(LatentDiffusionModule):
    """Trains a ControlNet on `model`, which stays frozen; `config["controlnet"]` says how (the config's section).
    Keyword arguments: LatentDiffusionModule's; the base's EMA, LoRA and scale-factor estimate do not apply."""

    STEP_SALT = 24680

    def __init__(self, model: LatentDiffusion, **kwargs: Any):
        if model.kind.task != "txt2img" or model.class_names is not None:
            raise TrainConfigError("controlnet.train needs a text-to-image model (conditioning_key crossattn)")
        # The ControlNet learns the base's latents at the base's scale: never re-estimated.
        kwargs.update(ema_decay=None, lora=None, gradient_checkpointing=False, estimate_scale_factor=False)
        super().__init__(model, **kwargs)
        model.requires_grad_(False)
        model.eval()
        self.control = dict((self.config or {}).get("controlnet") or ControlNetSection().__dict__)
        if self.control.get("kind") == "t2i_adapter":  # the smaller design: its features once per image
            kind, blocks = self.control.get("adapter_type", "full_adapter"), self.control.get("adapter_blocks", 2)
            self.controlnet: ControlNet | T2IAdapter = t2i_adapter_for(model.unet, model.downscale, kind, blocks)
        else:
            self.controlnet = ControlNet(model.unet, model.latent_channels, model.downscale)
        self.controlnet.requires_grad_(True)
        if self.control.get("export_diffusers") and isinstance(self.controlnet, ControlNet):  # refused before training
            self._check_diffusers_layout()
        log.info(
            "%s of %d parameters on a frozen base; control images: %s",
            type(self.controlnet).__name__,
            sum(p.numel() for p in self.controlnet.parameters()),
            self.control.get("control_root") or self.control["preprocess"],
        )

    def _check_diffusers_layout(self) -> None:
        from ldm.formats.controlnet_files import controlnet_config

        try:
            controlnet_config(self.controlnet, self.config["model"]["params"]["unet_config"]["params"])
        except LdmError as exc:
            raise TrainConfigError(f"controlnet.export_diffusers: {exc}") from None

    # ---- control images -----------------------------------------------------
    def hints(self, batch: dict) -> torch.Tensor:
        """The batch's control images, [B, 3, H, W] in [0, 1] at the images' size."""
        images = batch["image"].to(self.device)
        if "control" in batch:  # read with the image from its shard (controlnet.control_key)
            return batch["control"].to(self.device, torch.float32)
        root = self.control.get("control_root")
        if not root:
            return control_images(
                (images.float() + 1) / 2, self.control["preprocess"], self.control["low"], self.control["high"]
            )
        return torch.stack([self._read_hint(Path(root), key, images.shape[-2:]) for key in batch["key"]])

    def _read_hint(self, root: Path, key: str, size: torch.Size) -> torch.Tensor:
        name, flipped = key.removesuffix("#flip"), key.endswith("#flip")
        path = root / name
        if not path.is_file():
            raise ControlImageError(f"no control image for {name} in {root} (controlnet.control_root)")
        image = load_rgb(path).resize((int(size[-1]), int(size[-2])), Image.Resampling.BICUBIC)
        hint = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (hint.flip(-1) if flipped else hint).to(self.device)

    # ---- training -----------------------------------------------------------
    def loss(self, batch: dict, generator: torch.Generator | None = None, drop: bool = True) -> torch.Tensor:
        images = batch["image"].to(self.device)
        latents = self.latents(images, generator, batch.get("key"))
        captions = list(batch["caption"])
        if drop:
            captions = self.dropped_captions(captions, generator)
        context = self.encode_captions(captions)
        hints = self.hints(batch)
        if isinstance(self.controlnet, T2IAdapter):  # ControlledUNet takes an adapter's features in the hint's place
            hints = self.controlnet(hints)
        controlled = ControlledUNet(self.model.unet, [(self.controlnet, hints, 1.0, "balanced")])
        return self.model.parameterisation().loss(controlled, latents, context, generator)

    def configure_optimizers(self) -> Any:
        params = list(self.controlnet.parameters())  # the base is locked (the original's sd_locked)
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule(opt), "interval": "step"}}

    def train(self, mode: bool = True) -> ControlNetModule:
        super().train(mode)
        self.model.eval()  # the frozen base never trains (no dropout in it)
        return self

    # ---- export -------------------------------------------------------------
    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The ControlNet's weights, under our (the original layout's) names without the control_model. prefix."""
        return {k: v.detach() for k, v in self.controlnet.state_dict().items()}

    def sample_grid_images(self, prompts: list[str], **kwargs: Any) -> list[Image.Image]:
        return []  # a grid needs control images beside its prompts; the run's samples are left to `ldm txt2img`
