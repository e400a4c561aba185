"""Classifier guidance and classifier-free guidance on labels, measured on the eight-Gaussians toy.

A held-out judge (trained apart, on other clean points) says how often a sample lands in the class asked for;
with eight equally used classes, unguided sampling agrees about 1/8 of the time."""

import pytest
import torch

from ldm.sampling.classifier_guidance import ClassifierGuidedDenoiser, classifier_log_prob_grad
from ldm.sampling.denoisers import InvalidGuidanceError
from ldm.toys.classes import (
    GAUSSIAN_CLASSES,
    ConditionalToyDiffusion,
    class_accuracy,
    classifier_guided,
    labelled_gaussians,
    sample_with,
    train_classifier,
)
from ldm.toys.points import ToyDataError, ToyDiffusion, nearest_distance

N = 400
TARGETS = torch.arange(N) % GAUSSIAN_CLASSES


@pytest.fixture(scope="module")
def data():
    return labelled_gaussians(2000, seed=0)


@pytest.fixture(scope="module")
def judge():
    points, labels = labelled_gaussians(2000, seed=7)
    return train_classifier(points, labels, None, steps=200, seed=2)


@pytest.fixture(scope="module")
def unconditional(data):
    toy = ToyDiffusion(data[0], seed=0)
    toy.train(800)
    return toy


def test_labels_are_the_mixture_components(data, judge):
    points, labels = data
    assert torch.bincount(labels).min() > 150  # all eight used about equally
    centres = torch.stack([points[labels == k].mean(0) for k in range(GAUSSIAN_CLASSES)])
    angles = torch.atan2(centres[:, 1], centres[:, 0]) % (2 * torch.pi)
    assert torch.all(angles[1:] > angles[:-1])  # counter-clockwise
    assert class_accuracy(judge, points, labels) > 0.99


def test_the_guidance_term_is_sigma_squared_times_the_log_prob_gradient():
    """A linear classifier logits = W x has grad_x log p(y | x) = W_y - sum_k p_k W_k, known in closed form."""
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    linear = lambda x, sigma: x @ w.T
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    sigma = torch.full((5,), 2.0, dtype=torch.float64)
    expected = w[y] - torch.softmax(x @ w.T, dim=1) @ w
    torch.testing.assert_close(classifier_log_prob_grad(linear, x, sigma, y), expected)
    zero = lambda x, sigma: torch.zeros_like(x)
    torch.testing.assert_close(ClassifierGuidedDenoiser(zero, linear, y, scale=3.0)(x, sigma), 3.0 * 4.0 * expected)
    assert torch.equal(ClassifierGuidedDenoiser(zero, linear, y, scale=0.0)(x, sigma), torch.zeros_like(x))
    with pytest.raises(InvalidGuidanceError):
        ClassifierGuidedDenoiser(zero, linear, y, scale=-1.0)


def test_classifier_guidance_moves_samples_toward_the_class(data, judge, unconditional):
    classifier = train_classifier(*data, unconditional.alphas_cumprod, steps=600, seed=1)
    samples = {
        s: sample_with(unconditional, classifier_guided(unconditional, classifier, TARGETS, s), N)
        for s in (0.0, 0.5, 2.0)
    }
    accuracy = {s: class_accuracy(judge, points, TARGETS) for s, points in samples.items()}
    assert accuracy[0.0] < 0.25, accuracy  # unguided: about chance, 1/8
    assert accuracy[0.0] < accuracy[0.5] < accuracy[2.0], accuracy
    assert accuracy[2.0] > 0.9, accuracy
    # Guided samples stay on the data, no farther from it than the unguided ones: not pushed off into empty space.
    distance = {s: float(nearest_distance(points, data[0]).mean()) for s, points in samples.items()}
    assert distance[2.0] <= distance[0.0], distance


def test_the_class_conditional_model_follows_its_label_under_guidance(data, judge):
    toy = ConditionalToyDiffusion(data[0], labels=data[1], seed=0, label_dropout=0.1)
    toy.train(800)
    unguided = class_accuracy(judge, sample_with(toy, toy.cfg_denoiser(TARGETS, 0.0), N), TARGETS)  # the null label
    conditional = class_accuracy(judge, sample_with(toy, toy.cfg_denoiser(TARGETS, 1.0), N), TARGETS)
    guided = class_accuracy(judge, sample_with(toy, toy.cfg_denoiser(TARGETS, 3.0), N), TARGETS)
    assert unguided < 0.25 and conditional > 0.8 and guided >= conditional and guided > 0.95, (
        unguided,
        conditional,
        guided,
    )
    # Classifier guidance wraps the label CFG like any denoiser: over the unconditional (null-label) half it
    # alone steers toward the targets.
    classifier = train_classifier(*data, toy.alphas_cumprod, steps=400, seed=3)
    combined = classifier_guided(toy, classifier, TARGETS, 2.0, inner=toy.cfg_denoiser(TARGETS, 0.0))
    assert class_accuracy(judge, sample_with(toy, combined, N), TARGETS) > 0.8
    with pytest.raises(ToyDataError):
        ConditionalToyDiffusion(data[0], labels=data[1][:10])
