"""Training hooks for inpainting and upscaler models: conditioning layout, reproducibility, a learning step."""

import numpy as np
import pytest
import torch
from factories import tiny_inpaint_model, tiny_model, tiny_upscaler_model

from ldm.data.degradations import Degradation
from ldm.training.editing import EditingTrainingError, InpaintingModule, UpscalerModule, WithLowRes, WithMasks


class Images(torch.utils.data.Dataset):
    def __init__(self, n=2, size=16):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "caption": f"picture {i}"}


def batch_of(dataset):
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def train_steps(module, batch, steps=2):
    opt = torch.optim.AdamW(module.model.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        g = torch.Generator().manual_seed(0)  # the same noise each step: the loss must fall
        loss = module.loss(dict(batch), g, drop=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_inpainting_module_conditions_like_inference_and_learns():
    module = InpaintingModule(tiny_inpaint_model(), ema_decay=None, full_mask_prob=0.0)
    batch = batch_of(WithMasks(Images(), seed=3))
    assert batch["mask"].shape == (2, 1, 16, 16) and 0 < batch["mask"].mean() < 1
    latents = module.model.encode_image(batch["image"])
    c = module.concat_condition(batch, latents)
    assert c.shape == (2, 5, 8, 8)
    assert torch.equal(c[:, :1], torch.nn.functional.interpolate(batch["mask"], size=(8, 8)))
    expected = module.model.encode_image(batch["image"] * (batch["mask"] < 0.5))
    assert torch.allclose(c[:, 1:], expected, atol=1e-5)
    # Without masks in the batch, random ones: reproducible for a training position, new for the next.
    plain = batch_of(Images())
    module.train()
    a, b = module.masks(plain), module.masks(plain)
    module.batches_seen += 1
    assert torch.equal(a, b) and not torch.equal(a, module.masks(plain))
    losses = train_steps(module, batch)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    grid = module.sample_grid_images(["a", "b"], steps=2)  # txt2img could not drive this U-Net
    assert [g.size for g in grid] == [(16, 16)] * 3 and module.training


def test_upscaler_module_noise_augments_low_res_and_learns():
    module = UpscalerModule(tiny_upscaler_model(), ema_decay=None)
    data = WithLowRes(Images(size=32), Degradation(blur_prob=1, noise_prob=1, jpeg_prob=1), seed=1)
    assert torch.equal(data[1]["lr"], data[1]["lr"]) and data[1]["lr"].shape == (3, 8, 8)
    batch = batch_of(data)
    latents = torch.zeros(2, 4, 8, 8)
    y = module.label_condition(batch)
    c = module.concat_condition(batch, latents)
    assert c.shape == (2, 3, 8, 8) and y.shape == (2,)
    assert ((0 <= y) & (y < 350)).all() and y[0] != y[1]
    ab = module.model.low_scale.alphas_cumprod[y][:, None, None, None]
    eps = (c - ab.sqrt() * batch["lr"]) / (1 - ab).sqrt()  # the concat is the lr noised to level y
    assert 0.5 < eps.std() < 1.5
    with pytest.raises(EditingTrainingError, match="must be 1/4 of the image size"):
        module.concat_condition(dict(batch), torch.zeros(2, 4, 16, 16))
    losses = train_steps(module, batch)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    grid = module.sample_grid_images(["a"], steps=2)
    assert [g.size for g in grid] == [(32, 32)] * 2


def test_wrong_model_kind_is_refused():
    with pytest.raises(EditingTrainingError, match="needs an inpainting model"):
        InpaintingModule(tiny_model(), ema_decay=None)
    with pytest.raises(EditingTrainingError, match="needs an upscaler model"):
        UpscalerModule(tiny_inpaint_model(), ema_decay=None)
