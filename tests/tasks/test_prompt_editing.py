"""A1111's prompt editing and alternation in sampling (issue 41): the text changes at the named step, through the one
denoiser composition, with cond and uncond still one batch per step and each distinct text encoded once."""

import numpy as np
import pytest
import torch
from factories import tiny_model

from ldm.models.long_prompts import encode_prompts
from ldm.models.prompt_schedule import CompositionError
from ldm.tasks.img2img import img2img
from ldm.tasks.txt2img import txt2img

STEPS = 4
FAST = {"steps": STEPS, "height": 16, "width": 16, "progress": False, "seed": 3}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def pixels(images):
    return np.asarray(images[0])


def run(model, prompt, **kwargs):
    """The images, and per step what the callback says the step's model call was conditioned on."""
    steps = []

    def record(info):
        steps.append((info["i"], info.get("prompts"), info.get("negative_prompts")))

    images = txt2img(model, prompt, callback=record, **{**FAST, **kwargs})
    return images, steps


class UNetCalls:
    """The U-Net's calls: each one's batch size and context."""

    def __init__(self, model):
        self.batches, self.contexts = [], []
        self.handle = model.unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        self.batches.append(args[0].shape[0])
        self.contexts.append(context)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_an_edit_is_neither_of_its_texts(model):
    # The tiny model's text matters most at high noise; 6 steps at scale 10 on 32 px make the late switch visible.
    settings = {**FAST, "steps": 6, "guidance_scale": 10.0, "height": 32, "width": 32}

    def made(prompt, **kwargs):
        predictions = []
        record = lambda info: predictions.append(info["denoised"])  # noqa: E731
        images = txt2img(model, prompt, callback=record, **settings, **kwargs)
        return pixels(images), predictions

    edited, edited_steps = made("[red:blue:0.5] heart", prompt_syntax="a1111")
    red, red_steps = made("red heart")
    blue, _ = made("blue heart")
    assert not np.array_equal(edited, red) and not np.array_equal(edited, blue)
    # 0.5 of 6 steps is step 3: steps 0-3 are red's run (the same predictions), steps 4 and 5 are not.
    for step in range(4):
        assert torch.allclose(edited_steps[step], red_steps[step], atol=1e-5)
    for step in (4, 5):
        assert not torch.allclose(edited_steps[step], red_steps[step], atol=1e-4)
    # Read as plain text the brackets are words: another image again, so the syntax was what changed it.
    assert not np.array_equal(made("[red:blue:0.5] heart")[0], edited)


def test_an_edit_that_never_switches_is_its_first_text_exactly(model):
    never = txt2img(model, "[red:blue:10] heart", prompt_editing=True, **FAST)  # 10 > 4 steps: red throughout
    assert np.array_equal(pixels(never), pixels(txt2img(model, "red heart", **FAST)))
    assert never.settings["prompt_editing"] is True and never.settings["long_prompts"] is False


def test_the_switch_is_at_the_named_step_and_one_batch_per_step(model):
    with UNetCalls(model) as calls:
        images, steps = run(model, "[red:blue:2] heart", negative_prompt="dark", prompt_editing=True)
    # The first text holds while step <= 2 (steps counted from 0, as the callback's i).
    assert [prompts for _, prompts, _ in steps] == [["red heart"]] * 3 + [["blue heart"]]
    assert [i for i, _, _ in steps] == list(range(STEPS))
    assert [negatives for _, _, negatives in steps] == [["dark"]] * STEPS
    # What the U-Net saw: one call per step, cond and uncond in one batch, the cond half the step's text.
    assert calls.batches == [2] * STEPS
    red, blue = model.encode_text(["red heart", "blue heart"])
    for step, context in enumerate(calls.contexts):
        expected = red if step <= 2 else blue
        assert torch.allclose(context[1], expected, atol=1e-6)
        assert not torch.allclose(context[1], blue if step <= 2 else red, atol=1e-3)
    # A fraction of the steps: 0.5 * 4 = step 2, the same switch.
    fraction, steps_again = run(model, "[red:blue:0.5] heart", negative_prompt="dark", prompt_editing=True)
    assert [prompts for _, prompts, _ in steps_again] == [p for _, p, _ in steps]
    assert np.array_equal(pixels(images), pixels(fraction))


def test_alternation_and_the_negative_prompt_change_per_step(model):
    _, steps = run(model, "a [cat|dog]", negative_prompt="[blurry|]dark", prompt_syntax="a1111", steps=5)
    # A1111's schedule starts at step 1 and its step count at 0: the first option holds for steps 0 and 1.
    assert [prompts[0] for _, prompts, _ in steps] == ["a cat", "a cat", "a dog", "a cat", "a dog"]
    assert [negatives[0] for _, _, negatives in steps] == ["blurrydark", "blurrydark", "dark", "blurrydark", "dark"]


def test_each_distinct_text_is_encoded_once(model, monkeypatch):
    encoded = []
    encode = model.encode_text

    def counting(texts):
        encoded.extend(texts)
        return encode(texts)

    monkeypatch.setattr(model, "encode_text", counting)
    run(model, "a [cat|dog|bird] [red:blue:5]", negative_prompt="[dark|]", prompt_editing=True, steps=12)
    # Texts: 3 animals x 2 colours, and 2 negatives; 12 steps would have been 24 encodings.
    assert len(encoded) == len(set(encoded)) == 8


def test_editing_combines_with_emphasis_break_and_long_prompts(model):
    long = ", ".join(f"word{i}" for i in range(30))  # 114 tokens: two chunks
    with UNetCalls(model) as calls:
        _, steps = run(model, f"[(red:1.5):blue:1] heart BREAK {long} [a|b]", prompt_syntax="a1111")
    # BREAK ends the first chunk, the long rest takes two more; the uncond half padded to the same length.
    assert {tuple(c.shape[:2]) for c in calls.contexts} == {(2, 3 * 77)}
    texts = [prompts[0] for _, prompts, _ in steps]
    assert texts[0] == f"(red:1.5) heart BREAK {long} a" and texts[2] == f"blue heart BREAK {long} b"
    # Step 0's context is its text read with emphasis and chunks; without the weight it would be another.
    weighted = encode_prompts(model.text_encoder, [texts[0]], chunking=True, emphasis=True)[0]
    unweighted = encode_prompts(model.text_encoder, [texts[0].replace("(red:1.5)", "red")], emphasis=True)[0]
    assert torch.allclose(calls.contexts[0][1], weighted, atol=1e-6)
    assert not torch.allclose(calls.contexts[0][1], unweighted, atol=1e-4)


def test_img2img_counts_steps_from_its_first(model):
    from PIL import Image

    steps = []
    image = Image.new("RGB", (16, 16), "red")
    img2img(
        model,
        image,
        "[red:blue:1] heart",
        strength=0.5,
        steps=STEPS,
        progress=False,
        prompt_editing=True,
        callback=lambda info: steps.append(info["prompts"][0]),
    )
    # strength 0.5 runs 2 of the 4 steps; as in A1111, its own count from 0 meets the schedule of all 4.
    assert steps == ["red heart", "red heart"]


def test_composable_diffusion_is_refused_in_one_line(model):
    with pytest.raises(CompositionError, match="AND"):
        txt2img(model, "a cat AND a dog", prompt_syntax="a1111", **FAST)
    txt2img(model, "a cat AND a dog", **FAST)  # plain syntax: AND is a word
    txt2img(model, "a cat", negative_prompt="dog AND cat", prompt_syntax="a1111", **FAST)  # as A1111: text there


def test_a_second_order_sampler_reads_the_text_of_each_calls_noise_level(model):
    with UNetCalls(model) as calls:
        _, steps = run(model, "[red:blue:1] heart", prompt_editing=True, sampler="heun")
    red, blue = model.encode_text(["red heart", "blue heart"])
    # Heun: steps 0-2 call at sigma_i and at sigma_(i+1), the last step (to sigma 0) once. Steps 0 and 1 are red;
    # the end point of step 1 is at step 2's level, so blue, as are steps 2 and 3.
    expected = [red, red, red, blue, blue, blue, blue]
    assert len(calls.contexts) == len(expected)
    for context, text in zip(calls.contexts, expected):
        assert torch.allclose(context[1], text, atol=1e-6)
    assert [prompts for _, prompts, _ in steps] == [["red heart"]] * 2 + [["blue heart"]] * 2


@pytest.mark.parametrize("when", ["1.5", "6"])
def test_an_edit_addressing_the_hires_pass_switches_there_and_not_in_the_first(model, when):
    from ldm.tasks.hires import HiresOptions

    # First pass 4 steps; the hires pass runs all of its 4 (the last 4 of a grid of 8 at strength 0.5, as A1111's).
    # "1.5" is halfway through those 4 (step 2), "6" the hires pass's step 6 - 4 = 2: red for its steps 0 to 2,
    # blue at 3, as A1111's hires pass.
    hires = HiresOptions(scale=2, steps=4, strength=0.5, upscaler="latent")
    with UNetCalls(model) as calls:
        made, steps = run(model, f"[red:blue:{when}] heart", negative_prompt="dark", prompt_editing=True, hires=hires)
    red, blue = model.encode_text(["red heart", "blue heart"])
    assert made[0].size == (32, 32) and len(calls.contexts) == 4 + 4
    # The first pass never switches (the `when` is past its 4 steps): red's plain conditioning, unlabelled.
    assert [prompts for _, prompts, _ in steps[:4]] == [None] * 4
    for context in calls.contexts[:4]:
        assert torch.allclose(context[1], red, atol=1e-6)
    # The hires pass counts its steps from its first one run and switches after its step 2.
    expected = [["red heart"]] * 3 + [["blue heart"]]
    assert [(i, prompts) for i, prompts, _ in steps[4:]] == list(enumerate(expected))
    for context, text in zip(calls.contexts[4:], [red, red, red, blue]):
        assert torch.allclose(context[1], text, atol=1e-6)
    # The switch changed the image: red throughout makes another, and an edit past both passes is red exactly.
    red_only = txt2img(model, "red heart", negative_prompt="dark", hires=hires, **FAST)
    assert not np.array_equal(pixels(made), pixels(red_only))
    never = txt2img(model, "[red:blue:13] heart", negative_prompt="dark", prompt_editing=True, hires=hires, **FAST)
    assert np.array_equal(pixels(never), pixels(red_only))
