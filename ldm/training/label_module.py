"""Training a class-conditional U-Net: the image's class as the U-Net's label `y`, with label dropout.

Classifier-free guidance (Ho & Salimans 2022) needs one network for p(x | class) and p(x): with
probability `label_dropout` a training image's label is replaced by the null label (the last row of the
U-Net's label embedding, ldm.training.labels), so at sampling time

    D_w(x; c) = D(x; null) + w * (D(x; c) - D(x; null))

mixes the label's prediction with the null label's (ldm.tasks.prompts.label_conditions). With a text encoder the
caption is dropped as well, independently (training.cond_dropout), so the model learns text alone, label
alone, both and neither; a label-only model (cond_stage_config: null, no U-Net context_dim) sees no text.
"""

from __future__ import annotations

import torch
from PIL import Image

from ldm.models.latent_diffusion import LatentDiffusion
from ldm.training.config import DiffusionTraining as _D
from ldm.training.labels import LabelError
from ldm.training.ldm_module import LatentDiffusionModule

LABEL_SALT = 424_242  # the label dropout's own draws, apart from the step's noise and caption dropout
GRID_CLASSES = 8  # the sample grid shows the first classes, one image each


class ClassConditionalModule(LatentDiffusionModule):
    """A text-to-image module whose batches carry "label" (class indices) and whose U-Net takes them as `y`."""

    def __init__(self, model: LatentDiffusion, label_dropout: float = _D.label_dropout, **kwargs):
        if model.class_names is None or model.kind.task != "txt2img":
            raise LabelError(
                "ClassConditionalModule needs a text-to-image model with class_names (set data.label_field)"
            )
        super().__init__(model, **kwargs)
        self.label_dropout = float(label_dropout)
        self._drop_labels = True

    def encode_captions(self, captions: list[str]) -> torch.Tensor | None:
        if self.model.text_encoder is None:  # a label-only model: no cross-attention context
            return None
        return super().encode_captions(captions)

    def loss(self, batch: dict, generator: torch.Generator | None = None, drop: bool = True) -> torch.Tensor:
        self._drop_labels = drop  # validation (drop=False) sees every label
        return super().loss(batch, generator, drop)

    def labels(self, batch: dict) -> torch.Tensor:
        """The batch's class indices, each replaced by the null label with probability label_dropout (training)."""
        if "label" not in batch:
            raise LabelError("the batch has no class labels: set data.label_field (and data.classes) for this model")
        labels = torch.as_tensor(batch["label"], device=self.device).long()
        if self._drop_labels and self.label_dropout > 0:
            g = torch.Generator(device=self.device).manual_seed(self.position_seed(LABEL_SALT))
            dropped = torch.rand(labels.shape, generator=g, device=self.device) < self.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.model.null_class), labels)
        return labels

    def conditions(self, batch: dict, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().conditions(batch, latents), "y": self.labels(batch)}

    @torch.no_grad()
    def sample_grid_images(
        self, prompts: list[str], steps: int = 20, guidance_scale: float = 5.0, seed: int = 0
    ) -> list[Image.Image]:
        """One image per class (the first GRID_CLASSES) with the EMA U-Net; with text, class i gets prompt i
        of `prompts` (cycled), without text the empty prompt."""
        from ldm.tasks.txt2img import txt2img

        names = self.model.class_names[:GRID_CLASSES]
        texts = [
            prompts[i % len(prompts)] if prompts and self.model.text_encoder is not None else ""
            for i in range(len(names))
        ]
        was_training = self.training
        self.eval()
        try:
            return txt2img(
                self.model.with_unet(self.inference_unet()),
                texts,
                seed=seed,
                steps=steps,
                guidance_scale=guidance_scale,
                progress=False,
                label=names,
            )
        finally:
            self.train(was_training)
