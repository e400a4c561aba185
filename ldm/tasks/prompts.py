"""What the prompts become: both sides of guidance for a batch of prompts and negative prompts (text contexts, SDXL's
vector, class labels), checked as the command line checks them, for every task (ldm.tasks.base composes them)."""

from __future__ import annotations

from typing import Any

import torch

from ldm.core.errors import InvalidOptionError
from ldm.core.limits import check_prompt_length
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.sampling.options import SamplingOptions


class PromptError(InvalidOptionError):
    pass


def check_texts(texts: Any, what: str) -> list[str]:
    """A prompt argument (one str, or a list or tuple of them) as a list; anything else is a PromptError naming it."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise PromptError(f"{what} must be a str or a list of str, got {type(texts).__name__}")
    for text in texts:
        if not isinstance(text, str):
            raise PromptError(f"{what} must be a str or a list of str, got a list holding {type(text).__name__}")
    return list(texts)


def prompt_lists(prompt: str | list[str], negative_prompt: str | list[str]) -> tuple[list[str], list[str]]:
    prompts = check_texts(prompt, "prompt")
    if not prompts:
        raise PromptError("no prompts given")
    negatives = check_texts(negative_prompt, "negative prompt")
    if isinstance(negative_prompt, str):
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise PromptError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    check_prompt_texts(prompts, negatives)
    return prompts, negatives


def check_prompt_texts(prompts: list[str], negative_prompts: list[str]) -> None:
    """Each prompt (already a str, see check_texts) is at most ldm.core.limits.MAX_PROMPT_CHARS characters: longer ones
    are refused before any parsing or encoding, which grow with the length."""
    for name, texts in (("prompt", prompts), ("negative prompt", negative_prompts)):
        for text in texts:
            check_prompt_length(text, name)


def prompt_conditions(
    model: LatentDiffusion,
    prompts: list[str],
    negative_prompts: list[str],
    options: SamplingOptions | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[dict, dict]:
    """Cross-attention contexts for the prompts and for the unconditional side of guidance.

    The negative prompt replaces the empty prompt as the unconditional embedding. With the options'
    long_prompts or emphasis (ldm.models.long_prompts), prompts are read the A1111 way; the two sides are then
    brought to one length with empty chunks, so guidance still runs them as one batch.
    """
    prompts, negative_prompts = check_texts(prompts, "prompt"), check_texts(negative_prompts, "negative prompt")
    check_prompt_texts(prompts, negative_prompts)
    if getattr(model, "guidance_embedded", False) and any(negative_prompts):
        raise PromptError(
            "this guidance-distilled model takes no negative prompt (it was distilled with the empty "
            "prompt as the unconditional side); use the full model for negative prompts "
            '(ldm txt2img --model full, load_model(variant="full"))'
        )
    if getattr(model, "text_encoder", True) is None:  # a label-only model: no context on either side
        if any(prompts) or any(negative_prompts):
            raise PromptError("this class-conditional model takes no text; give an empty prompt and a label")
        return {}, {}
    if hasattr(getattr(model, "text_encoder", None), "micro_conditions"):  # SDXL: context and vector y too
        return _sdxl_conditions(model, prompts, negative_prompts, options, size)
    if options is None or not (options.long_prompts or options.emphasis):
        context = model.encode_text(prompts + negative_prompts)
        return {"context": context[: len(prompts)]}, {"context": context[len(prompts) :]}
    from ldm.models.long_prompts import encode_prompts, pad_contexts

    def encode(texts: list[str]) -> torch.Tensor:
        return encode_prompts(model.text_encoder, texts, chunking=options.long_prompts, emphasis=options.emphasis)

    cond, uncond = pad_contexts(encode(prompts), encode(negative_prompts), encode([""]))
    return {"context": cond}, {"context": uncond}


def _sdxl_conditions(
    model: LatentDiffusion,
    prompts: list[str],
    negative_prompts: list[str],
    options: SamplingOptions | None,
    size: tuple[int, int] | None,
) -> tuple[dict, dict]:
    """SDXL's both sides of guidance for images of `size` (height, width; None: the model's default size)."""
    from ldm.models.sdxl_conditioning import sdxl_conditions

    height, width = size or (model.default_image_size, model.default_image_size)
    chunked = options is not None and (options.long_prompts or options.emphasis)
    flags = {"chunking": options.long_prompts, "emphasis": options.emphasis} if chunked else {}
    return sdxl_conditions(model.text_encoder, prompts, negative_prompts, height, width, **flags)


def label_conditions(model: LatentDiffusion, labels: str | list[str | None] | None, count: int) -> tuple[dict, dict]:
    """The class label `y` of each side of guidance: the labels' indices, and the null label unconditionally.

    Classifier-free guidance on labels (Ho & Salimans 2022) then mixes D(x; label) and D(x; null label) as it
    mixes prompts. labels: one name for the whole batch, one per image, or None (the null label: no label).
    A model without class names takes no label ({} both sides)."""
    if getattr(model, "class_names", None) is None:
        if labels is not None and (isinstance(labels, str) or any(label is not None for label in labels)):
            model.class_labels([labels] if isinstance(labels, str) else list(labels))  # raises: takes no label
        return {}, {}
    labels = [labels] * count if labels is None or isinstance(labels, str) else list(labels)
    if len(labels) != count:
        raise PromptError(f"{len(labels)} labels for {count} images")
    return {"y": model.class_labels(labels)}, {"y": model.class_labels([None] * count)}
