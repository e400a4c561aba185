"""What the prompts become: both sides of guidance for a batch of prompts and negative prompts (text contexts, SDXL's
vector, class labels), checked as the command line checks them, for every task (ldm.tasks.base composes them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ldm.core.errors import InvalidOptionError
from ldm.core.limits import check_prompt_length
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions
from ldm.models.prompt_schedule import check_no_composition, texts_by_step
from ldm.sampling.denoisers import StepConditions
from ldm.tasks.base import Conditioning

if TYPE_CHECKING:  # only named in annotations: SDXL's module is imported where it is used
    from ldm.models.sdxl_conditioning import MicroConditions


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


def check_prompt_model(model: LatentDiffusion, prompts: list[str], negative_prompts: list[str]) -> bool:
    """Refuse prompts the model cannot take (a negative prompt for a guidance-distilled student, text for a label-only
    model); False where the model has no text encoder (no context on either side)."""
    if getattr(model, "guidance_embedded", False) and any(negative_prompts):
        raise PromptError(
            "this guidance-distilled model takes no negative prompt (it was distilled with the empty "
            "prompt as the unconditional side); use the full model for negative prompts "
            '(ldm txt2img --model full, load_model(variant="full"))'
        )
    if getattr(model, "text_encoder", True) is None:  # a label-only model: no context on either side
        if any(prompts) or any(negative_prompts):
            raise PromptError("this class-conditional model takes no text; give an empty prompt and a label")
        return False
    return True


def is_sdxl(model: LatentDiffusion) -> bool:
    return hasattr(getattr(model, "text_encoder", None), "micro_conditions")


def prompt_conditions(
    model: LatentDiffusion,
    prompts: list[str],
    negative_prompts: list[str],
    prompting: PromptOptions | None = None,
    size: tuple[int, int] | None = None,
    micro: tuple[MicroConditions, MicroConditions] | None = None,
) -> tuple[dict, dict]:
    """Cross-attention contexts for the prompts and for the unconditional side of guidance, as written (prompt
    editing is `prompt_conditioning`'s).

    The negative prompt replaces the empty prompt as the unconditional embedding. With `prompting`'s
    long_prompts or emphasis (ldm.models.long_prompts), prompts are read the A1111 way; the two sides are then
    brought to one length with empty chunks, so guidance still runs them as one batch.
    """
    prompts, negative_prompts = check_texts(prompts, "prompt"), check_texts(negative_prompts, "negative prompt")
    check_prompt_texts(prompts, negative_prompts)
    if not check_prompt_model(model, prompts, negative_prompts):
        return {}, {}
    if is_sdxl(model):  # SDXL: context and vector y too
        return _sdxl_conditions(model, prompts, negative_prompts, prompting, size, micro)
    if prompting is None or not (prompting.long_prompts or prompting.emphasis):
        context = model.encode_text(prompts + negative_prompts)
        return {"context": context[: len(prompts)]}, {"context": context[len(prompts) :]}
    from ldm.models.long_prompts import encode_prompts, pad_contexts

    def encode(texts: list[str]) -> torch.Tensor:
        return encode_prompts(model.text_encoder, texts, chunking=prompting.long_prompts, emphasis=prompting.emphasis)

    cond, uncond = pad_contexts(encode(prompts), encode(negative_prompts), encode([""]))
    return {"context": cond}, {"context": uncond}


def _sdxl_conditions(
    model: LatentDiffusion,
    prompts: list[str],
    negative_prompts: list[str],
    prompting: PromptOptions | None,
    size: tuple[int, int] | None,
    micro: tuple[MicroConditions, MicroConditions] | None = None,
) -> tuple[dict, dict]:
    """SDXL's both sides of guidance for images of `size` (height, width; None: the model's default size), with the
    micro-conditionings' (conditional, unconditional) numbers `micro` (None: the references' defaults for the size)."""
    from ldm.models.sdxl_conditioning import sdxl_conditions

    height, width = size or (model.default_image_size, model.default_image_size)
    chunked = prompting is not None and (prompting.long_prompts or prompting.emphasis)
    flags = {"chunking": prompting.long_prompts, "emphasis": prompting.emphasis} if chunked else {}
    if micro is not None:
        flags["micro"] = micro
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


def prompt_conditioning(
    model: LatentDiffusion,
    prompts: list[str],
    negative_prompts: list[str],
    prompting: PromptOptions | None,
    steps: int,
    size: tuple[int, int] | None = None,
    hires_steps: int | None = None,
    micro: tuple[MicroConditions, MicroConditions] | None = None,
) -> Conditioning:
    """Both sides of guidance for the prompts, over a run of `steps` sampling steps (or a hires-fix pass of
    `hires_steps` after them: ldm.models.prompt_schedule.texts_by_step).

    With `prompting.prompt_editing`, prompts and negative prompts may change their text during sampling
    ([from:to:when], [a|b]): each distinct text is encoded once, and each step's batch of contexts, cond and uncond
    as one batch as always, is chosen per step (Conditioning.steps). Prompts that do not change are the plain
    conditioning of `prompt_conditions`, exactly. micro: an SDXL model's micro-conditionings (`prompt_conditions`).
    """
    prompts, negative_prompts = check_texts(prompts, "prompt"), check_texts(negative_prompts, "negative prompt")
    if prompting is None or not prompting.prompt_editing:
        return Conditioning(*prompt_conditions(model, prompts, negative_prompts, prompting, size, micro))
    check_prompt_texts(prompts, negative_prompts)
    for prompt in prompts:  # the negative prompt is one text in A1111 too: AND there is text
        check_no_composition(prompt)
    count = steps if hires_steps is None else hires_steps
    rows = [texts_by_step(text, steps, hires_steps) for text in prompts + negative_prompts]
    if all(len(set(row)) == 1 for row in rows):  # nothing changes during sampling: the text as it renders
        fixed = [row[0] for row in rows]
        fixed_prompts, fixed_negatives = fixed[: len(prompts)], fixed[len(prompts) :]
        return Conditioning(*prompt_conditions(model, fixed_prompts, fixed_negatives, prompting, size, micro))
    if not check_prompt_model(model, prompts, negative_prompts):
        return Conditioning({}, {})
    if is_sdxl(model):
        raise PromptError("prompt editing is not supported for SDXL models yet")
    texts = sorted({text for row in rows for text in row})
    contexts = encode_texts(model, texts, prompting)  # each distinct text once
    index = {text: i for i, text in enumerate(texts)}
    keys: dict[tuple[int, ...], int] = {}
    at_step = []
    for step in range(count):
        key = tuple(index[row[step]] for row in rows)
        at_step.append(keys.setdefault(key, len(keys)))
    conditions, labels = [], []
    for key in keys:
        cond_rows, uncond_rows = list(key[: len(prompts)]), list(key[len(prompts) :])
        conditions.append(({"context": contexts[cond_rows]}, {"context": contexts[uncond_rows]}))
        labels.append(
            {
                "prompts": [texts[i] for i in key[: len(prompts)]],
                "negative_prompts": [texts[i] for i in key[len(prompts) :]],
            }
        )
    cond, uncond = conditions[at_step[0]]
    return Conditioning(cond, uncond, steps=StepConditions(tuple(conditions), tuple(at_step), tuple(labels)))


def encode_texts(model: LatentDiffusion, texts: list[str], prompting: PromptOptions) -> torch.Tensor:
    """[len(texts), tokens, width]: the texts' contexts, brought to one length (long prompts: with empty chunks)."""
    if not (prompting.long_prompts or prompting.emphasis):
        return model.encode_text(texts)
    from ldm.models.long_prompts import encode_prompts

    return encode_prompts(model.text_encoder, texts, chunking=prompting.long_prompts, emphasis=prompting.emphasis)
