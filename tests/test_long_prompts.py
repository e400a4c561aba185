"""Long prompts in 75-token chunks and (word:1.2) emphasis, as AUTOMATIC1111 does them; the cut is said."""

import logging

import pytest
import torch
from factories import TINY_TEXT

from ldm.models.long_prompts import BREAK, chunk_prompt, encode_prompts, pad_contexts, parse_emphasis
from ldm.models.text_encoder import FrozenOpenCLIPEmbedder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    encoder = FrozenOpenCLIPEmbedder(TINY_TEXT, layer="penultimate")
    with torch.no_grad():  # a trained final norm has a bias, so the output's mean is not ~0 as at init
        encoder.model.ln_final.bias.normal_(0.5, 0.2)
    return encoder


def test_emphasis_syntax():
    assert parse_emphasis("a (red:1.5) apple") == [("a ", 1.0), ("red", 1.5), (" apple", 1.0)]
    assert parse_emphasis("(red)") == [("red", pytest.approx(1.1))]
    assert parse_emphasis("((red))") == [("red", pytest.approx(1.21))]
    assert parse_emphasis("[red]") == [("red", pytest.approx(1 / 1.1))]
    assert parse_emphasis("((red:2) hat)") == [("red", pytest.approx(2.2)), (" hat", pytest.approx(1.1))]
    assert parse_emphasis(r"\(literal\) text") == [("(literal) text", 1.0)]
    assert parse_emphasis("(unclosed red") == [("unclosed red", pytest.approx(1.1))]
    assert parse_emphasis("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", BREAK), ("a dog", 1.0)]
    assert parse_emphasis("") == [("", 1.0)]


def ids(encoder, text):
    return encoder.vocabulary().encode(text)


def chunks_of(encoder, prompt, emphasis=False):
    v = encoder.vocabulary()
    pieces = parse_emphasis(prompt) if emphasis else [(prompt, 1.0)]
    return chunk_prompt(pieces, v.encode, v.start_id, v.end_id, v.pad_id, v.comma_id)


@pytest.mark.parametrize("count, expected", [(1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_prompts_are_cut_into_75_token_chunks(encoder, count, expected):
    assert len(ids(encoder, "cat")) == 1
    chunks = chunks_of(encoder, " ".join(["cat"] * count))
    assert len(chunks) == expected
    v = encoder.vocabulary()
    for i, chunk in enumerate(chunks):
        assert len(chunk.tokens) == 77 and chunk.tokens[0] == v.start_id
        body = chunk.tokens[1 : chunk.tokens.index(v.end_id)]
        assert len(body) == min(75, count - 75 * i)
        assert all(t == v.pad_id for t in chunk.tokens[chunk.tokens.index(v.end_id) + 1 :])


def test_a_full_chunk_is_cut_after_a_comma_within_20_tokens(encoder):
    v = encoder.vocabulary()
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    first, second = chunks_of(encoder, prompt)
    body = first.tokens[1 : first.tokens.index(v.end_id)]
    assert len(body) == 71 and body[-1] == v.comma_id  # 70 cats and the comma; the dogs move on together
    assert second.tokens[1:11] == ids(encoder, " ".join(["dog"] * 10)) and second.tokens[11] == v.end_id
    # A comma further back than 20 tokens is not used: the chunk is cut at 75 tokens.
    far = " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 40)
    first = chunks_of(encoder, far)[0]
    assert first.tokens.index(v.end_id) == 76


def test_break_starts_a_new_chunk(encoder):
    assert len(chunks_of(encoder, "a cat BREAK a dog", emphasis=True)) == 2


def test_a_short_prompt_gives_the_plain_embedding(encoder):
    prompt = "a red apple, studio light, (not emphasised)"
    plain = encoder([prompt])
    assert torch.equal(encode_prompts(encoder, [prompt], chunking=True), plain)
    assert torch.equal(encode_prompts(encoder, [prompt], chunking=False), plain)


def test_long_prompt_context_and_truncation(encoder):
    prompt = " ".join(["cat"] * 100)
    context = encode_prompts(encoder, [prompt], chunking=True)
    assert context.shape == (1, 154, 32)
    assert torch.equal(context[:, :77], encoder([" ".join(["cat"] * 75)]))
    assert torch.equal(context[:, 77:], encoder([" ".join(["cat"] * 25)]))
    assert torch.equal(encode_prompts(encoder, [prompt], chunking=False), encoder([prompt]))
    # Prompts of different lengths in one batch: the shorter one is padded with the empty chunk.
    both = encode_prompts(encoder, [prompt, "dog"], chunking=True)
    assert both.shape == (2, 154, 32)
    assert torch.equal(both[1:, :77], encoder(["dog"])) and torch.equal(both[1:, 77:], encoder([""]))


def test_emphasis_restores_the_mean(encoder):
    plain = encode_prompts(encoder, ["a red apple"], emphasis=False)
    weighted = encode_prompts(encoder, ["a (red:1.5) apple"], emphasis=True)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5, abs=1e-7)
    assert not torch.allclose(weighted, plain)
    # Weight 1 everywhere is the plain embedding.
    assert torch.allclose(encode_prompts(encoder, ["(a red apple:1)"], emphasis=True), plain, atol=1e-6)


def test_pad_contexts_appends_empty_chunks(encoder):
    empty = encoder([""])
    a, b = encode_prompts(encoder, [" ".join(["cat"] * 160)]), encoder(["dog"])
    a2, b2 = pad_contexts(a, b, empty)
    assert a2.shape == b2.shape == (1, 231, 32) and torch.equal(a2, a)
    assert torch.equal(b2[:, 77:154], empty) and torch.equal(b2[:, 154:], empty)


def test_a_cut_prompt_is_said_once(encoder, caplog):
    prompt = " ".join(["cat"] * 80) + " with a hat"
    with caplog.at_level(logging.WARNING, logger="ldm.models.text_encoder"):
        encoder([prompt])
        encoder([prompt])
        encoder(["a short prompt"])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "prompt of 83 tokens cut at 75" in messages[0] and "with a hat" in messages[0]
