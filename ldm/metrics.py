"""Metrics for judging generated images against real ones: feature extractors, distribution metrics, judges.

Distribution metrics compare feature sets of generated and real images:

- FID (Heusel et al. 2017): Fréchet distance between Gaussian fits,
  ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). Lower is better; biased upwards for small N.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over
  random subsets. Lower is better; ~0 (can be slightly negative) when both sets share a distribution.
- Precision / recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls reaching each
  point's k-th nearest neighbour; precision = share of generated points inside the real manifold
  (fidelity), recall = share of real points inside the generated manifold (coverage).

Features come from the image tower of our emoji CLIP, and from Inception-v3's pool layer when the
user supplies torchvision-format weights (never downloaded).

Prompt accuracy asks a judge which emoji name a generated image shows:

- nearest-real-neighbour judge (reported as the headline): the names of the real images (train AND
  held-out: the judge must know every emoji the prompts can name; it judges, it does not generate)
  whose CLIP image features are closest in cosine similarity; no training needed;
- zero-shot judge: CLIP text embeddings of all names against the image embedding.

CLIP score is 100 x the mean cosine similarity of generated-image and prompt embeddings.

Why not torchmetrics' FrechetInceptionDistance / KernelInceptionDistance (1.9, checked): with a custom
feature module its FID equals `frechet_distance` here to 4.5e-8 relative (300 x 64-d features), so nothing
is gained, and what differs counts against it: its default Inception extractor needs torch-fidelity (not
installed, and it downloads weights at run time, which a machine without network cannot); its KID draws its
subsets from torch's global RNG, so the figure moves between runs (1283.3 there, 1286.2 here with seed 0, on
the same features), where ours takes a seed; it runs the extractor itself on images per metric, where the
evaluation extracts features once and shares them between FID, KID, precision/recall and the judges; and it
is no dependency of this project.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldm.core.errors import LdmError

log = logging.getLogger(__name__)


class EvaluationError(LdmError, ValueError):
    """Base class for evaluation inputs that cannot be used."""


class FeatureShapeError(EvaluationError):
    """Feature sets that are not 2-D, differ in width, or are too small for the metric."""


class InceptionWeightsError(EvaluationError):
    """An Inception-v3 weights file that is missing or does not fit torchvision's architecture."""


# ----------------------------------------------------------------------------------------------
# Distribution metrics on feature matrices [N, D]
# ----------------------------------------------------------------------------------------------


def _as_float64(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    # float64 throughout: the FID trace term subtracts nearly equal large numbers.
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise FeatureShapeError(f"{name} must be a [N, D] matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise FeatureShapeError(f"{name} contains NaN or infinite values")
    return a


def _check_pair(a: np.ndarray, b: np.ndarray, min_rows: int) -> None:
    if a.shape[1] != b.shape[1]:
        raise FeatureShapeError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < min_rows or len(b) < min_rows:
        raise FeatureShapeError(f"need at least {min_rows} rows in each feature set, got {len(a)} and {len(b)}")


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of a feature matrix."""
    f = _as_float64(features, "features")
    if len(f) < 2:
        raise FeatureShapeError(f"need at least 2 rows for a covariance, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix via eigh (negative rounding noise clipped)."""
    sym = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1-mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2).

    S1 S2 is not symmetric, so a general sqrtm can return complex rounding noise. Instead use
    Tr((S1 S2)^1/2) = Tr((R S2 R)^1/2) with R = S1^1/2 (similar matrices, same eigenvalues): R S2 R is
    symmetric PSD, so its eigenvalues are real and the trace is the sum of their square roots.
    """
    root = sqrtm_psd(sigma1)
    inner = root @ sigma2 @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # a distance; tiny negatives are rounding


def frechet_distance(features1: torch.Tensor | np.ndarray, features2: torch.Tensor | np.ndarray) -> float:
    """FID-style Fréchet distance between Gaussian fits of two feature sets."""
    a, b = _as_float64(features1, "features1"), _as_float64(features2, "features2")
    _check_pair(a, b, 2)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate: within-set kernel means exclude the diagonal (i = j) terms."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean()
    )


def kernel_inception_distance(
    features1: torch.Tensor | np.ndarray,
    features2: torch.Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: (mean, std) of unbiased MMD^2 over `subsets` random subsets of min(subset_size, N1, N2) rows each."""
    a, b = _as_float64(features1, "features1"), _as_float64(features2, "features2")
    _check_pair(a, b, 2)
    if subsets < 1 or subset_size < 2:
        raise EvaluationError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _pairwise_distances(x: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    # Chunked so a few thousand x a few thousand stays small; float64 so ties on the radius are exact.
    return torch.cat([torch.cdist(x[i : i + chunk], y) for i in range(0, len(x), chunk)])


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the row itself, at distance 0, is skipped)."""
    d = _pairwise_distances(features, features)
    return d.kthvalue(k + 1, dim=1).values


def precision_recall(
    real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN hyperspheres."""
    r = torch.from_numpy(_as_float64(real, "real"))
    f = torch.from_numpy(_as_float64(fake, "fake"))
    _check_pair(r.numpy(), f.numpy(), k + 1)
    if k < 1:
        raise EvaluationError(f"k must be at least 1, got {k}")
    real_radii, fake_radii = knn_radii(r, k), knn_radii(f, k)
    d = _pairwise_distances(f, r)  # [fake, real]
    precision = (d <= real_radii[None, :]).any(dim=1).double().mean().item()
    recall = (d.T <= fake_radii[None, :]).any(dim=1).double().mean().item()
    return precision, recall


# ----------------------------------------------------------------------------------------------
# Feature extractors: images [B, 3, H, W] in [-1, 1] -> features [B, D]
# ----------------------------------------------------------------------------------------------


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _clip_image_size(clip: torch.nn.Module) -> int:
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class ClipFeatures:
    """L2-normalised image embeddings of an open_clip model (our emoji CLIP takes [-1, 1] pixels, as trained)."""

    def __init__(self, clip: torch.nn.Module, batch_size: int = 256):
        self.clip = clip.eval()
        self.size = _clip_image_size(clip)
        self.batch_size = batch_size
        self.name = "clip"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        out = [
            self.clip.encode_image(_resize(images[i : i + self.batch_size].to(device), self.size), normalize=True)
            .float()
            .cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        from ldm.models.clip import encode_text_trimmed, tokenize

        device = next(self.clip.parameters()).device
        tokens = tokenize(list(texts), self.clip.context_length)
        return torch.cat(
            [
                encode_text_trimmed(self.clip, tokens[i : i + batch_size].to(device)).float().cpu()
                for i in range(0, len(tokens), batch_size)
            ]
        )


class InceptionFeatures:
    """2048-d pool features of torchvision's Inception-v3 from a local weights file.

    torchvision's ImageNet weights were ported from TF and expect inputs in [-1, 1] (that is what its
    transform_input=True produces from ImageNet-normalised input), so [-1, 1] pixels go in directly,
    resized to 299 px. These are NOT the pytorch-fid/TF-FID Inception weights: values are comparable
    across our runs, not with published FIDs.
    """

    def __init__(self, weights: str | os.PathLike, batch_size: int = 32, device: str | torch.device = "cpu"):
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise InceptionWeightsError(f"Inception-v3 weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as exc:  # not a (safe) torch file
            raise InceptionWeightsError(f"cannot read Inception-v3 weights {path}: {str(exc).splitlines()[0]}") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InceptionWeightsError(f"{path} does not hold a state dict")
        aux = any(k.startswith("AuxLogits.") for k in state)
        net = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InceptionWeightsError(
                f"{path} does not fit torchvision's inception_v3: {str(exc).splitlines()[0]}"
            ) from exc
        self.classifier = net.fc  # kept apart: the ImageNet logits of a pool vector, for the Inception Score
        net.fc = torch.nn.Identity()  # the pooled 2048-d vector, as FID uses
        self.net = net.eval().to(device)
        self.batch_size = batch_size
        self.name = "inception"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        return torch.cat(
            [
                self.net(_resize(images[i : i + self.batch_size].to(device), 299)).float().cpu()
                for i in range(0, len(images), self.batch_size)
            ]
        )

    @torch.no_grad()
    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's logits of pool features from __call__ (one pass serves FID and the Inception Score)."""
        device = next(self.classifier.parameters()).device
        return self.classifier(features.to(device)).float().cpu()


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) from classifier logits [N, classes], as (mean, std) over splits:

        IS = exp(E_x KL(p(y | x) || p(y))),  p(y) = mean over the split of p(y | x).

    It is 1 when every image gets the same prediction (or every prediction is uniform) and the number of
    classes k when predictions are one-hot and the k classes are used equally: confident and diverse.
    The published protocol uses 10 splits of 5,000 images; fewer images per split bias it downwards.
    """
    log_p = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)
    if log_p.ndim != 2 or len(log_p) < splits or splits < 1:
        raise FeatureShapeError(
            f"inception_score needs [N, classes] logits with N >= splits >= 1, got {tuple(log_p.shape)} "
            f"and splits={splits}"
        )
    scores = []
    for part in torch.tensor_split(log_p, splits):  # exactly `splits` parts, sizes differing by at most one
        log_marginal = torch.logsumexp(part, dim=0) - math.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# Prompt accuracy judges and CLIP score
# ----------------------------------------------------------------------------------------------


class NearestNeighbourJudge:
    """Ranks class names by the best cosine similarity of any real image of that class to the query.

    With one image per name, this is plain nearest-neighbour retrieval over all real images; with one
    per design, a name scores by its closest design.
    """

    def __init__(self, gallery: torch.Tensor, labels: Sequence[str]):
        if len(gallery) != len(labels) or len(labels) == 0:
            raise EvaluationError(
                f"judge gallery needs one label per feature row, got {len(gallery)} rows and {len(labels)} labels"
            )
        self.classes: list[str] = sorted(set(labels))
        index = {c: i for i, c in enumerate(self.classes)}
        self.label_index = torch.tensor([index[c] for c in labels])
        self.gallery = F.normalize(gallery.float(), dim=-1)

    def class_scores(self, features: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """[B, classes] scores; exclude[b] is a gallery row query b may not match (its own image, leave-one-out), or -1."""  # noqa: E501
        sim = F.normalize(features.float(), dim=-1) @ self.gallery.T  # [B, gallery]
        if exclude is not None:
            rows = torch.nonzero(exclude >= 0).flatten()
            sim[rows, exclude[rows]] = -math.inf
        scores = torch.full((len(sim), len(self.classes)), -math.inf)
        return scores.scatter_reduce(1, self.label_index.expand_as(sim), sim, reduce="amax")


class ZeroShotJudge:
    """Ranks class names by cosine similarity of their CLIP text embedding with the image embedding."""

    def __init__(self, text_features: torch.Tensor, classes: Sequence[str]):
        if len(text_features) != len(classes):
            raise EvaluationError(f"{len(text_features)} text embeddings for {len(classes)} classes")
        self.classes = list(classes)
        self.text = F.normalize(text_features.float(), dim=-1)

    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1) @ self.text.T


def topk_accuracy(
    scores: torch.Tensor, classes: Sequence[str], targets: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Share of rows whose target name is among the k best-scored classes, for each k."""
    index = {c: i for i, c in enumerate(classes)}
    missing = [t for t in targets if t not in index]
    if missing:
        raise EvaluationError(f"{len(missing)} prompts are not judge classes, e.g. {missing[0]!r}")
    target = torch.tensor([index[t] for t in targets])
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    return {k: (top[:, : min(k, kmax)] == target[:, None]).any(dim=1).float().mean().item() for k in ks}


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """100 x mean cosine similarity of paired image and text embeddings."""
    if image_features.shape != text_features.shape:
        raise FeatureShapeError(
            f"image and text embeddings differ in shape: {tuple(image_features.shape)} vs {tuple(text_features.shape)}"
        )
    return 100.0 * F.cosine_similarity(image_features.float(), text_features.float(), dim=-1).mean().item()
