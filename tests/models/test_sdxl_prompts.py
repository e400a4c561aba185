"""SDXL prompts read the A1111 way (issue 39): 75-token chunks and (word:1.2) emphasis in both text towers, and
clip skip, with test_sdxl's tiny towers (the same random weights as its diffusers pipeline).

A1111 (modules/sd_hijack_clip.py, run per tower by SDXL's conditioner) encodes each chunk on its own, joins the
chunks along the sequence, weights each chunk's states and rescales them to their unweighted mean, and takes the
pooled output from the first chunk, before emphasis. diffusers has no long prompts or emphasis; where it has an
equivalent (the plain 77-token path, `clip_skip`) ours must equal it.
"""

from __future__ import annotations

import pytest
import test_sdxl
import torch
from test_sdxl import CLIP_L, CONTEXT, POOLED, PROMPTS, TOLERANCE, rel_err

from ldm.core.errors import InvalidOptionError
from ldm.models.long_prompts import emphasise
from ldm.models.prompt_options import PromptOptions
from ldm.models.sdxl_conditioning import sdxl_conditions

unets, text_towers, tiny_sdxl = test_sdxl.unets, test_sdxl.text_towers, test_sdxl.tiny_sdxl
CATS = 100  # "cat" is one token: 100 of them are a chunk of 75 and one of 25


@pytest.fixture
def base(text_towers):
    encoders = text_towers[0]["base"]
    yield encoders
    encoders.set_clip_skip(2)  # SDXL's own read-out, whatever a test set


def test_one_chunk_without_emphasis_is_the_plain_path_exactly(base):
    plain_context, plain_pooled = base.encode(PROMPTS)
    for chunking, emphasis in ((True, False), (False, True), (True, True)):
        context, pooled = base.encode(PROMPTS, chunking=chunking, emphasis=emphasis)
        assert torch.equal(context, plain_context) and torch.equal(pooled, plain_pooled), (chunking, emphasis)
    weighted_one, _ = base.encode(["a photo of a (cat:1.0)", "Hello,   WORLD 123, don't stop"], emphasis=True)
    assert torch.equal(weighted_one, plain_context)  # a weight of 1.0 changes nothing


def test_a_long_prompt_gives_two_chunks_in_both_towers_and_the_first_chunks_pooled_output(base):
    long = " ".join(["cat"] * CATS)
    context, pooled = base.encode([long, "a dog"], chunking=True)
    assert context.shape == (2, 154, CONTEXT) and pooled.shape == (2, POOLED)
    first, first_pooled = base.encode([" ".join(["cat"] * 75)])
    second, _ = base.encode([" ".join(["cat"] * (CATS - 75))])
    empty, _ = base.encode([""])
    assert rel_err(context[:1, :77], first) <= TOLERANCE and rel_err(context[:1, 77:], second) <= TOLERANCE
    assert rel_err(pooled[:1], first_pooled) <= TOLERANCE
    assert rel_err(context[1:, 77:], empty) <= TOLERANCE  # the shorter prompt padded with an empty chunk
    cut, _ = base.encode([long])  # without chunking the prompt is cut at 75 tokens: the first chunk alone
    assert cut.shape == (1, 77, CONTEXT) and rel_err(cut, first) <= TOLERANCE


def test_emphasis_weights_each_towers_states_and_leaves_the_pooled_output(base):
    weighted, pooled = base.encode(["a (cat:1.5) on [a mat]"], emphasis=True)
    plain, plain_pooled = base.encode(["a cat on a mat"])
    assert torch.equal(pooled, plain_pooled) and not torch.equal(weighted, plain)
    weights = [1.0, 1.0, 1.5, 1.0, 1 / 1.1, 1 / 1.1] + [1.0] * 71  # start, a, cat, on, a, mat, end, padding
    for tower in (slice(0, CLIP_L), slice(CLIP_L, CONTEXT)):  # each tower rescaled to its own mean
        expected = emphasise(plain[..., tower], weights)
        assert rel_err(weighted[..., tower], expected) <= TOLERANCE


def test_both_sides_of_guidance_share_one_length_and_the_empty_negative_stays_zero(base):
    long = " ".join(["cat"] * CATS)
    cond, uncond = sdxl_conditions(base, [long], [""], 64, 64, chunking=True, emphasis=True)
    assert cond["context"].shape == uncond["context"].shape == (1, 154, CONTEXT)
    assert not uncond["context"].any() and not uncond["y"][:, :POOLED].any()
    _, negative = sdxl_conditions(base, [long], ["blurry"], 64, 64, chunking=True)
    assert negative["context"].shape == (1, 154, CONTEXT) and negative["context"].any()


def test_clip_skip_reads_the_same_layer_as_diffusers_in_both_towers(base, text_towers):
    """diffusers' clip_skip counts from the penultimate block: theirs 1 is our 3 (hidden_states[-3] of both)."""
    pipe = text_towers[1]
    assert base.clip_skip == 2  # SDXL's own: the penultimate block
    default, default_pooled = base.encode(PROMPTS)
    base.set_clip_skip(2)
    assert torch.equal(base.encode(PROMPTS)[0], default)
    base.set_clip_skip(3)
    context, pooled = base.encode(PROMPTS)
    with torch.no_grad():
        theirs, _, their_pooled, _ = pipe.encode_prompt(
            PROMPTS, device=torch.device("cpu"), do_classifier_free_guidance=False, clip_skip=1
        )
    assert rel_err(context, theirs) <= TOLERANCE and rel_err(context, default) > 100 * TOLERANCE
    assert torch.equal(pooled, default_pooled) and rel_err(pooled, their_pooled) <= TOLERANCE
    base.set_clip_skip(1)  # the last block, still before the final norm
    assert base.encode(PROMPTS)[0].shape == (2, 77, CONTEXT)
    with pytest.raises(InvalidOptionError, match="between 1 and 3"):
        base.set_clip_skip(4)


def test_sdxl_txt2img_takes_long_prompts_and_emphasis(tiny_sdxl):
    from ldm.tasks.prompts import prompt_conditions
    from ldm.tasks.sdxl_refiner import sdxl_txt2img

    model, _ = tiny_sdxl
    long = "a (red:1.3) " + " ".join(["cat"] * CATS)
    prompting = PromptOptions(long_prompts=True, emphasis=True)
    cond, uncond = prompt_conditions(model, [long], [""], prompting, size=(16, 16))
    assert cond["context"].shape == uncond["context"].shape == (1, 154, CONTEXT)
    latents = sdxl_txt2img(model, long, height=16, width=16, steps=2, long_prompts=True, emphasis=True,
                           progress=False, output="latent")  # fmt: skip
    cut = sdxl_txt2img(model, long, height=16, width=16, steps=2, progress=False, output="latent")
    assert latents.shape == cut.shape and torch.isfinite(latents).all() and not torch.equal(latents, cut)


def sampling_options(**kwargs):
    from ldm.sampling.options import SamplingOptions

    return SamplingOptions(steps=2, **kwargs)


def test_a_walk_between_prompts_of_other_chunk_counts(tiny_sdxl):
    """The two ends of a walk may have one chunk and two: they are brought to one length, as in a batch."""
    from ldm.tasks.walk import walk_frames

    model, _ = tiny_sdxl
    long = " ".join(["cat"] * CATS)
    options, prompting = sampling_options(), PromptOptions(long_prompts=True, emphasis=True)
    walk = walk_frames(model, "a (dog:1.2)", long, frames=2, height=16, width=16, options=options,
                       prompt_options=prompting, progress=False)  # fmt: skip
    assert len(walk.images) == 2 and walk.images[0].size == (16, 16)
