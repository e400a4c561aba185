"""Training on an SDXL model (in practice a LoRA on its U-Net): the U-Net's inputs built as SDXL was trained.

What differs from SD's text-to-image training (ldm.training.ldm_module), as sgm's training pipeline builds its
batches (generative-models, sgm.data and GeneralConditioner):

- both text towers stay frozen and give the context (their states joined along the width) and bigG's pooled output;
- the vector `y` holds, after the pooled output, each image's own micro-conditioning: its size before it was
  scaled (original_size, height and width), where its crop's corner lay in the scaled image (crop, top and left),
  and the size trained at (target_size); a refiner's aesthetic score is its default 6.0, as the data holds none.
  Images without those fields (WebDataset shards) count as uncropped at the trained size;
- a dropped caption (training.cond_dropout) becomes the empty prompt, which the base model's conditioner turns into
  a zero context and pooled output (sgm's force_uc_zero_embeddings, ldm.models.sdxl_text.zero_empty_negative): what
  guidance's unconditional side is at sampling time.

Text contexts are not cached here (training.text_cache, cache_dir): the pooled output would have to be cached beside
them; the VAE's posteriors are, as for SD.
"""

from __future__ import annotations

from typing import Any

import torch

from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.sdxl_conditioning import MicroConditions, batch_vector
from ldm.training.config_checks import TrainConfigError
from ldm.training.ldm_module import LatentDiffusionModule


def image_conditions(batch: dict, images: torch.Tensor) -> list[MicroConditions]:
    """Each training image's micro-conditioning numbers, from the fields ldm.data.folder's items carry."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    count = len(images)
    originals = batch["original_size"].tolist() if "original_size" in batch else [size] * count
    crops = batch["crop"].tolist() if "crop" in batch else [(0, 0)] * count
    return [MicroConditions(tuple(o), size, tuple(c)) for o, c in zip(originals, crops)]


class SDXLModule(LatentDiffusionModule):
    """Trains an SDXL U-Net (module doc); everything else is LatentDiffusionModule's. The config's checks
    (ldm.training.config_checks) have made sure it trains a LoRA on the U-Net alone."""

    def __init__(self, model: LatentDiffusion, **kwargs: Any):
        if model.kind.task != "txt2img":
            raise TrainConfigError(f"SDXL training is for text-to-image models; this one is an {model.kind.task} model")
        super().__init__(model, **kwargs)

    def sdxl_inputs(self, captions: list[str], batch: dict, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, y) of a batch: the frozen towers' outputs of the captions and each image's vector."""
        encoders = self.model.text_encoder
        with torch.no_grad():
            context, pooled = encoders.encode(captions)
        if encoders.zero_empty_negative:
            empty = torch.tensor([not caption for caption in captions], device=context.device)
            context = torch.where(empty[:, None, None], torch.zeros_like(context), context)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        conditions = image_conditions(batch, images)
        return context, batch_vector(pooled, conditions, encoders.micro_conditions, encoders.micro_embed_dim)

    def loss(self, batch: dict, generator: torch.Generator | None = None, drop: bool = True) -> torch.Tensor:
        images = batch["image"].to(self.device)
        latents = self.latents(images, generator, batch.get("key"))
        captions = list(batch["caption"])
        if drop:
            captions = self.dropped_captions(captions, generator)
        context, y = self.sdxl_inputs(captions, batch, images)
        return self.model.parameterisation().loss(self._unet_fn, latents, context, generator, y=y)
