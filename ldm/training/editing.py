"""Training the conditional kinds: SD 2-style inpainting and x4-upscaler models.

Both are `LatentDiffusionModule`s that fill its `conditions` hook with the inputs inference builds
(by the same functions, `ldm.tasks.inpaint.masked_image_condition` and `ldm.tasks.upscale.low_res_condition`):
- `InpaintingModule`: concat [mask at latent size, latent of the masked image], with the
  mask from the batch ("mask") or a random one (boxes, brush strokes, outpainting borders,
  sometimes everything) drawn from `ldm.core.masks`;
- `UpscalerModule`: concat the low-res image (from the batch, "lr", or a bicubic shrink of the
  target), noise-augmented to a random level, and that level as `y`.

`WithMasks` and `WithLowRes` wrap any captioned-image dataset to add "mask" / "lr" per item in
the data-loader workers (the degradation pipeline runs on PIL images there, not on the GPU).
All randomness is seeded by (seed, position), so resumed runs repeat exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ldm.core.errors import LdmError
from ldm.core.masks import MASK_KINDS, random_mask
from ldm.data.degradations import Degradation
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.tasks.inpaint import inpaint, masked_image_condition
from ldm.tasks.upscale import low_res_condition, upscale
from ldm.training.ldm_module import LatentDiffusionModule


class EditingTrainingError(LdmError, ValueError):
    pass


def _tensor_to_pil(image: torch.Tensor) -> Image.Image:
    arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


class WithMasks(Dataset):
    """Adds a random inpainting mask "mask" [1, H, W] (1 = repaint) to each item of a dataset."""

    def __init__(self, dataset: Dataset, kinds: Sequence[str] = MASK_KINDS, full_prob: float = 0.25, seed: int = 0):
        self.dataset, self.kinds, self.full_prob, self.seed = dataset, tuple(kinds), full_prob, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        h, w = item["image"].shape[-2:]
        rng = np.random.default_rng([self.seed, index])
        item["mask"] = torch.from_numpy(random_mask(h, w, rng, self.kinds, full_prob=self.full_prob))[None]
        return item


class WithLowRes(Dataset):
    """Adds the degraded low-res input "lr" [3, H/f, W/f] in [-1, 1] to each item of a dataset."""

    def __init__(self, dataset: Dataset, degradation: Degradation | None = None, seed: int = 0):
        self.dataset, self.degradation, self.seed = dataset, degradation or Degradation(), seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        low, _ = self.degradation(_tensor_to_pil(item["image"]), np.random.default_rng([self.seed, index]))
        item["lr"] = torch.from_numpy(np.asarray(low, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        return item


class _EditingModule(LatentDiffusionModule):
    """Shared parts: per-batch seeds and sample grids made from a remembered training image."""

    _preview: dict | None = None  # first training batch's first item, the source of sample grids

    def _remember(self, **tensors: torch.Tensor) -> None:
        if self._preview is None:
            self._preview = {k: v[:1].detach().cpu() for k, v in tensors.items()}

    def _edit_previews(
        self, model: LatentDiffusion, prompts: list[str], steps: int, guidance_scale: float, seed: int
    ) -> list[Image.Image]:
        raise NotImplementedError

    @torch.no_grad()
    def sample_grid_images(
        self, prompts: list[str], steps: int = 20, guidance_scale: float = 5.0, seed: int = 0
    ) -> list[Image.Image]:
        """The remembered input, then one edit per prompt, with the EMA U-Net (txt2img cannot drive these U-Nets).

        The edits run on a view of the model with the EMA U-Net; the model itself is not changed."""
        if not prompts or self._preview is None:
            return []
        was_training = self.training
        self.eval()
        try:
            return self._edit_previews(
                self.model.with_unet(self.inference_unet()), list(prompts), steps, guidance_scale, seed
            )
        finally:
            self.train(was_training)

    def _rng_seed(self, batch: dict, tag: int) -> int:
        """Per-batch seed: from the training position while training, from the captions when evaluating
        (so validation sees the same masks / noise levels every time)."""
        if self.training:
            return self.position_seed(tag * 7_919_000_003)
        return (zlib.crc32("\n".join(batch["caption"]).encode()) + tag) % (2**63)


class InpaintingModule(_EditingModule):
    """Trains an inpainting U-Net (conditioning_key "hybrid": 4 + 1 + 4 input channels)."""

    def __init__(
        self, model: LatentDiffusion, mask_kinds: Sequence[str] = MASK_KINDS, full_mask_prob: float = 0.25, **kwargs
    ):
        if model.kind.task != "inpaint":
            raise EditingTrainingError(
                f"InpaintingModule needs an inpainting model (conditioning_key hybrid), got {model.conditioning_key!r}"
            )
        super().__init__(model, **kwargs)
        self.mask_kinds, self.full_mask_prob = tuple(mask_kinds), float(full_mask_prob)

    def masks(self, batch: dict) -> torch.Tensor:
        """[B, 1, H, W] binary masks: the batch's own, or random ones."""
        if "mask" in batch:
            return (batch["mask"].to(self.device).float() >= 0.5).float()
        b, _, h, w = batch["image"].shape
        rng = np.random.default_rng(self._rng_seed(batch, 1))
        masks = [random_mask(h, w, rng, self.mask_kinds, full_prob=self.full_mask_prob) for _ in range(b)]
        return torch.from_numpy(np.stack(masks))[:, None].to(self.device)

    def concat_condition(self, batch: dict, latents: torch.Tensor) -> torch.Tensor:
        images = batch["image"].to(self.device)
        m = self.masks(batch)
        if m.shape[-2:] != images.shape[-2:]:
            raise EditingTrainingError(f"masks are {tuple(m.shape[-2:])} but images {tuple(images.shape[-2:])}")
        self._remember(image=images)
        with torch.no_grad():
            # Exactly what inference feeds: hole greyed out, posterior mode, nearest-resized mask.
            return masked_image_condition(self.model, images, m, dtype=latents.dtype)

    def conditions(self, batch: dict, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"concat": self.concat_condition(batch, latents)}

    def _edit_previews(
        self, model: LatentDiffusion, prompts: list[str], steps: int, guidance_scale: float, seed: int
    ) -> list[Image.Image]:

        image = _tensor_to_pil(self._preview["image"][0])
        w, h = image.size
        mask = np.zeros((h, w), np.float32)
        mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 1  # a centre hole: the model must invent the middle
        holed = Image.fromarray((np.asarray(image) * (1 - mask[..., None])).astype(np.uint8))
        out = inpaint(
            model, image, mask, prompts, seed=seed, steps=steps, guidance_scale=guidance_scale, progress=False
        )
        return [holed] + out


class UpscalerModule(_EditingModule):
    """Trains an x4-upscaler U-Net (conditioning_key "hybrid-adm": 4 + 3 input channels, noise-level label)."""

    def __init__(self, model: LatentDiffusion, **kwargs):
        if model.kind.task != "upscale" or model.low_scale is None:
            raise EditingTrainingError(
                "UpscalerModule needs an upscaler model (conditioning_key hybrid-adm with a "
                f"low_scale_config), got {model.conditioning_key!r}"
            )
        super().__init__(model, **kwargs)

    def low_res(self, batch: dict) -> torch.Tensor:
        if "lr" in batch:
            return batch["lr"].to(self.device).float()
        images = batch["image"].to(self.device).float()
        f = self.model.downscale
        return F.interpolate(images, scale_factor=1 / f, mode="bicubic", antialias=True).clamp(-1, 1)

    def _low_res_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """{"concat", "y"} of `ldm.tasks.upscale.low_res_condition` at a level drawn from the batch's seed (the same
        draw however often it is asked for; the batch itself is not written to)."""
        g = torch.Generator(device=self.device).manual_seed(self._rng_seed(batch, 2))
        low = self.low_res(batch)
        self._remember(lr=low)
        return low_res_condition(self.model, low, None, generator=g)

    def label_condition(self, batch: dict) -> torch.Tensor:
        return self._low_res_inputs(batch)["y"]

    def concat_condition(self, batch: dict, latents: torch.Tensor) -> torch.Tensor:
        return self.conditions(batch, latents)["concat"]

    def conditions(self, batch: dict, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self._low_res_inputs(batch)
        low = inputs["concat"]
        if low.shape[-2:] != latents.shape[-2:]:
            raise EditingTrainingError(
                f"low-res images are {tuple(low.shape[-2:])} but latents "
                f"{tuple(latents.shape[-2:])}: the low-res input must be 1/{self.model.downscale} "
                "of the image size"
            )
        return {"concat": low.to(latents.dtype), "y": inputs["y"]}

    def _edit_previews(
        self, model: LatentDiffusion, prompts: list[str], steps: int, guidance_scale: float, seed: int
    ) -> list[Image.Image]:

        low = _tensor_to_pil(self._preview["lr"][0])
        f = self.model.downscale
        bicubic = low.resize((low.width * f, low.height * f), Image.Resampling.BICUBIC)  # the baseline to beat
        return [bicubic] + upscale(
            model, low, prompts, seed=seed, steps=steps, guidance_scale=guidance_scale, progress=False
        )
