"""Classes on the 2-D toy: labelled data, a noise-aware classifier, and a class-conditional toy diffusion.

The eight-Gaussians data has a class per mixture component, which makes both guidances measurable:
a held-out classifier, trained apart on clean points, says how often a sample lands in the class asked for.
- classifier guidance: an unconditional ToyDiffusion plus a ToyClassifier trained on x_t at every noise
  level (ldm.sampling.classifier_guidance.ClassifierGuidedDenoiser);
- classifier-free guidance: ConditionalToyDiffusion learns eps(x_t, t, y) with labels dropped to a null
  class at rate `label_dropout`, so one network is both the conditional and the unconditional model
  (ldm.sampling.denoisers.CFGDenoiser with cond {"y": y}, uncond {"y": null}).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ldm.diffusion.parameterisation import diffusion_loss
from ldm.diffusion.schedules import get_sigmas
from ldm.sampling.classifier_guidance import ClassifierGuidedDenoiser
from ldm.sampling.denoisers import CFGDenoiser, Denoiser
from ldm.sampling.options import SamplingOptions, sample
from ldm.toys.points import ClippedDenoiser, ToyDataError, ToyDiffusion, ToyMLP, make_data, single_thread

GAUSSIAN_CLASSES = 8


def labelled_gaussians(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The "gaussians" toy data and each point's component (0..7, counter-clockwise from the +x axis).

    The components sit at angles k * pi / 4 with std 0.05 before scaling, so the nearest angle is the label."""
    points = make_data("gaussians", n, seed=seed)
    angle = torch.atan2(points[:, 1], points[:, 0])
    labels = torch.round(angle / (math.pi / 4)).long() % GAUSSIAN_CLASSES
    return points, labels


class ToyClassifier(nn.Module):
    """log p(y | x, sigma) up to a constant: an MLP on (x / sqrt(1 + sigma^2), log(sigma) / 4).

    It sees x as the network does (the variance-preserving x_t) and the noise level, so one classifier serves
    every step of a sampler. Called as classifier(x, sigma) with x in sigma space, sigma [B]."""

    def __init__(self, num_classes: int, hidden: int = 128, layers: int = 3):
        super().__init__()
        dims = [3] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.dtype)
        x_vp = x / (1 + sigma[:, None] ** 2).sqrt()
        return self.net(torch.cat([x_vp, sigma.clamp(min=1e-4).log()[:, None] / 4], dim=1))


def train_classifier(
    points: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor | None,
    steps: int = 1000,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 256,
) -> ToyClassifier:
    """Cross-entropy on x = x0 + sigma * eps with sigma at a uniform timestep of the schedule (noise-aware), or
    on clean points (sigma = 0) when alphas_cumprod is None: the held-out judge of clean samples."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classifier = ToyClassifier(int(labels.max()) + 1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    sigmas = None if alphas_cumprod is None else ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    with single_thread():
        for _ in range(steps):
            idx = torch.randint(0, len(points), (batch_size,), generator=generator)
            if sigmas is None:
                sigma = torch.zeros(batch_size)
            else:
                sigma = sigmas[torch.randint(0, len(sigmas), (batch_size,), generator=generator)].float()
            x = points[idx] + sigma[:, None] * torch.randn(batch_size, 2, generator=generator)
            loss = nn.functional.cross_entropy(classifier(x, sigma), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def class_accuracy(judge: ToyClassifier, points: torch.Tensor, labels: torch.Tensor) -> float:
    """How often the judge (a clean-data classifier) puts a sample in the class it was asked for."""
    return float((judge(points, torch.zeros(len(points))).argmax(1) == labels).float().mean())


class ConditionalToyMLP(ToyMLP):
    """ToyMLP with a class embedding added to the time embedding; class `num_classes` (or y None) is "no label"."""

    def __init__(
        self, num_classes: int, hidden: int = 128, layers: int = 3, time_dim: int = 32, num_timesteps: int = 1000
    ):
        super().__init__(hidden, layers, time_dim, num_timesteps)
        self.num_classes = num_classes
        self.label_embed = nn.Embedding(num_classes + 1, time_dim)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        y = torch.full((x.shape[0],), self.num_classes, device=x.device) if y is None else y.long()
        return self.net(torch.cat([x, self.embed(t) + self.label_embed(y)], 1))


@dataclass
class ConditionalToyDiffusion(ToyDiffusion):
    """A ToyDiffusion that learns eps(x_t, t, y), with each label replaced by the null class at rate label_dropout."""

    labels: torch.Tensor | None = None
    num_classes: int = GAUSSIAN_CLASSES
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels is None or len(self.labels) != len(self.data):
            raise ToyDataError("a conditional toy model needs one label per data point")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ToyDataError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        torch.manual_seed(self.seed)
        self.net = ConditionalToyMLP(self.num_classes, self.hidden, num_timesteps=self.num_timesteps)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def train_step(self) -> float:
        idx = torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator)
        drop = torch.rand(self.batch_size, generator=self.generator) < self.label_dropout
        y = torch.where(drop, torch.full_like(self.labels[idx], self.null_label), self.labels[idx])
        loss = diffusion_loss(self.net, self.data[idx], None, self.alphas_cumprod, "eps", generator=self.generator, y=y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def cfg_denoiser(self, y: torch.Tensor, scale: float) -> CFGDenoiser:
        """Classifier-free guidance on labels: D_null + scale * (D_y - D_null); scale 0 is unconditional."""
        return CFGDenoiser(self.denoiser(), {"y": y}, {"y": torch.full_like(y, self.null_label)}, scale)


def sample_with(
    toy: ToyDiffusion,
    denoiser: Denoiser,
    n: int,
    steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    clip: float | None = 4.0,
    **sampler_options,
) -> torch.Tensor:
    """[n, 2] samples of `toy`'s schedule through any denoiser over its network (guided, wrapped), as toy.sample does."""  # noqa: E501
    sigmas = get_sigmas(toy.alphas_cumprod, steps, spacing="trailing")
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    denoiser = denoiser if clip is None else ClippedDenoiser(denoiser, clip)
    with single_thread():
        return sample(
            denoiser,
            x,
            sigmas,
            SamplingOptions(steps=steps, sampler=sampler, extra=dict(sampler_options)),
            torch.Generator().manual_seed(seed + 1),
            progress=False,
        )


def classifier_guided(
    toy: ToyDiffusion, classifier: Callable, y: torch.Tensor, scale: float, inner: Denoiser | None = None
) -> ClassifierGuidedDenoiser:
    """Classifier guidance over the toy's denoiser, or over `inner` (e.g. a label CFGDenoiser, to combine both)."""
    return ClassifierGuidedDenoiser(inner if inner is not None else toy.denoiser(), classifier, y, scale)
