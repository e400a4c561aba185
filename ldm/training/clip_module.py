"""Lightning wrapper for contrastive training of a small open_clip CLIP (the emoji text encoder and judge).

Loss: open_clip's `ClipLoss`, the symmetric cross-entropy over the batch's image-text similarities.
A caption drawn twice in one batch (one emoji in two styles) needs no special target: its two text
features are identical, so splitting the target between them gives the same loss and gradients.
The in-batch accuracy logged beside it counts any image of the right caption as a hit.
"""

from __future__ import annotations

import math
from typing import Any

import open_clip
import torch

from ldm.training.base import TrainingModule
from ldm.training.config import ClipTraining as _D

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp: keeps the temperature from collapsing


def clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As open_clip's trainer: no weight decay on gains, biases, norms and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor: linear warm-up to 1, then a cosine to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class ClipModule(TrainingModule):
    def __init__(
        self,
        clip: open_clip.CLIP,
        lr: float = _D.lr,
        weight_decay: float = _D.weight_decay,
        warmup_steps: int = _D.warmup_steps,
        betas: tuple[float, float] = tuple(_D().betas),
        seed: int = _D.seed,
        config: dict | None = None,
    ):
        """Defaults: `ldm.training.config.ClipTraining`'s, the one set a YAML run gets too."""
        super().__init__(seed=seed, warmup_steps=warmup_steps, config=config)
        self.clip = clip
        self.lr, self.weight_decay, self.betas = float(lr), float(weight_decay), betas
        self.loss_fn = open_clip.loss.ClipLoss()

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from ldm.models.clip import encode_text_trimmed

        tokens = open_clip.tokenize(list(batch["caption"]), context_length=self.clip.context_length).to(self.device)
        image_features = self.clip.encode_image(batch["image"], normalize=True)
        text_features = encode_text_trimmed(self.clip, tokens)
        loss = self.loss_fn(image_features.float(), text_features.float(), self.clip.logit_scale.exp())
        with torch.no_grad():
            hits = (image_features.float() @ text_features.float().T).argmax(dim=1)
            top1 = torch.tensor([batch["caption"][int(j)] == c for j, c in zip(hits, batch["caption"])]).float().mean()
        return loss, top1

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, top1 = self.loss(batch)
        self.batches_seen += 1
        self.log_dict(
            {"train/loss": loss, "train/i2t_top1": top1, "train/logit_scale": self.clip.logit_scale.exp()},
            prog_bar=True,
            batch_size=len(batch["caption"]),
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, top1 = self.loss(batch)
        self.log_dict(
            {"val/loss": loss, "val/i2t_top1": top1}, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"])
        )
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(clip_param_groups(self.clip, self.weight_decay), lr=self.lr, betas=self.betas, eps=1e-6)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule(opt), "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """Warm-up (training.warmup_steps, or a twentieth of the run) then a cosine to 0 at the last step."""
        total = int(self.trainer.max_steps) if self._trainer is not None and self.trainer.max_steps > 0 else 10_000
        return warmup_cosine(step, total, self.warmup_steps or max(1, total // 20))

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.clip.state_dict().items()}

    def sample_grid_images(self, **ignored: Any) -> list:
        return []  # a contrastive model draws nothing; its figures are the retrieval accuracies
