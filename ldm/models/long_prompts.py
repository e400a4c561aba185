"""Prompts longer than the text encoder's 75 tokens, and `(word:1.2)` emphasis, the way AUTOMATIC1111 does them.

Both are off by default, so that SD results stay reference-exact: the reference code cuts a prompt at
77 tokens (start + 75 + end), and `ldm.models.text_encoder` warns when it does.

Chunking: the prompt's tokens are cut into chunks of 75. A chunk that fills up within 20 tokens of a
comma is cut after that comma instead, and the rest moves to the next chunk; the word `BREAK` ends a
chunk early. Each chunk becomes start + tokens + end + padding, is encoded on its own, and the
contexts are joined along the sequence: 2 chunks give a [batch, 154, width] context. A prompt of at
most 75 tokens gives one chunk with exactly the tokens of the plain tokenizer, so the same embedding.

Emphasis: `(text)` multiplies the weight of its tokens by 1.1, `[text]` divides it by 1.1, `(text:1.3)`
sets a factor of 1.3; brackets nest, `\\(` is a literal bracket. The encoder output is multiplied by
each token's weight, then rescaled so its mean is the unweighted output's mean. A1111 takes that mean
over the whole batch; here it is taken per prompt, so an image does not depend on the prompts it was
batched with (the same thing at batch size 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

CHUNK_TOKENS = 75  # the encoder's 77 positions less the start and end tokens
COMMA_BACKTRACK = 20  # A1111's default: how far back a full chunk may be cut at a comma
BREAK = -1.0  # the weight that marks a BREAK in a parsed prompt

# One piece of an emphasised prompt: an escape, a bracket, a weight that closes a round bracket, or text.
EMPHASIS_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def parse_emphasis(prompt: str) -> list[tuple[str, float]]:
    """Text pieces with their weights; a ("BREAK", BREAK) piece where the prompt says BREAK.

    >>> parse_emphasis("a (red:1.5) [apple]")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('apple', 0.9090909090909091)]
    """
    pieces: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in EMPHASIS_TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\"):
            pieces.append([text[1:] or "\\", 1.0])
        elif text == "(":
            open_round.append(len(pieces))
        elif text == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            try:
                scale(open_round.pop(), float(weight))
            except ValueError:  # "(a:1.2.3)": not a number, so plain text as A1111 keeps it
                pieces.append([text, 1.0])
        elif text == ")" and open_round:
            scale(open_round.pop(), 1.1)
        elif text == "]" and open_square:
            scale(open_square.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(BREAK_WORD.split(text)):
                if i > 0:
                    pieces.append(["BREAK", BREAK])
                pieces.append([part, 1.0])
    for start in open_round:  # an unclosed bracket still applies to the rest of the prompt
        scale(start, 1.1)
    for start in open_square:
        scale(start, 1 / 1.1)
    merged: list[list] = []
    for text, weight in pieces:
        if not text:
            continue
        if merged and merged[-1][1] == weight and weight != BREAK:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged] or [("", 1.0)]


@dataclass
class Chunk:
    tokens: list[int]  # CHUNK_TOKENS + 2 ids: start, prompt tokens, end, padding
    weights: list[float]


def chunk_prompt(
    pieces: list[tuple[str, float]],
    encode,
    start_id: int,
    end_id: int,
    pad_id: int,
    comma_id: int,
    chunk_tokens: int = CHUNK_TOKENS,
    backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """The chunks of one parsed prompt (`encode`: text -> token ids, without start and end tokens).

    Padding is one end token, then `pad_id` (0 for open_clip, as its tokenizer pads; SD 1.x pads with end).
    """
    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma
        fill = chunk_tokens - len(tokens)
        body = [start_id] + tokens + [end_id] + [pad_id] * fill
        chunks.append(Chunk(body, [1.0] + weights + [1.0] * (fill + 1)))
        tokens, weights, last_comma = [], [], -1

    for text, weight in pieces:
        if weight == BREAK:
            close()
            continue
        for token in encode(text):
            if token == comma_id:
                last_comma = len(tokens)
            elif (
                backtrack and len(tokens) == chunk_tokens and last_comma != -1 and len(tokens) - last_comma <= backtrack
            ):
                cut = last_comma + 1  # the comma stays in this chunk; what follows it moves on
                rest_tokens, rest_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = rest_tokens, rest_weights
            if len(tokens) == chunk_tokens:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close()
    return chunks


def emphasise(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """One chunk's encoder output [1, 77, width] times each token's weight, rescaled to its unweighted mean."""
    original_mean = z.mean()
    z = z * torch.tensor(weights, device=z.device, dtype=z.dtype)[None, :, None]
    if z.mean() != 0:  # an all-zero-mean output (an untrained final norm) has no mean to restore
        z = z * (original_mean / z.mean())
    return z


def prompt_chunks(vocab, prompt: str, chunking: bool = True, emphasis: bool = False) -> list[Chunk]:
    """One prompt's chunks for a tokenizer's `vocab` (ldm.models.text_encoder.Vocabulary); without chunking only the
    first (the prompt cut at 75 tokens), without emphasis brackets are plain text."""
    pieces = parse_emphasis(prompt) if emphasis else [(prompt, 1.0)]
    backtrack = COMMA_BACKTRACK if chunking else 0
    chunks = chunk_prompt(
        pieces, vocab.encode, vocab.start_id, vocab.end_id, vocab.pad_id, vocab.comma_id, backtrack=backtrack
    )
    return chunks if chunking else chunks[:1]


def encode_chunks(encoder, chunks: list[Chunk], emphasis: bool) -> torch.Tensor:
    """[1, 77 * len(chunks), width]: each chunk encoded on its own, weighted, and joined."""
    device = encoder.model.positional_embedding.device
    outputs = []
    for chunk in chunks:
        z = encoder.encode_tokens(torch.tensor([chunk.tokens], device=device))
        outputs.append(emphasise(z, chunk.weights) if emphasis else z)
    return torch.cat(outputs, dim=1)


def encode_prompts(encoder, prompts: list[str], chunking: bool = True, emphasis: bool = False) -> torch.Tensor:
    """Contexts of several prompts, padded with empty chunks to the longest one's chunk count (as A1111).

    `encoder` is an `ldm.models.text_encoder.FrozenTextEncoder` (SD 1.x's or 2.x's). Without chunking a prompt keeps its first
    75 tokens; without emphasis, brackets are plain text.
    """  # noqa: E501
    vocab = encoder.vocabulary()
    chunked = []
    for prompt in prompts:
        pieces = parse_emphasis(prompt) if emphasis else [(prompt, 1.0)]
        chunks = chunk_prompt(
            pieces,
            vocab.encode,
            vocab.start_id,
            vocab.end_id,
            vocab.pad_id,
            vocab.comma_id,
            backtrack=COMMA_BACKTRACK if chunking else 0,
        )
        chunked.append(chunks if chunking else chunks[:1])
    count = max(len(c) for c in chunked)
    empty = chunk_prompt([("", 1.0)], vocab.encode, vocab.start_id, vocab.end_id, vocab.pad_id, vocab.comma_id)[0]
    return torch.cat([encode_chunks(encoder, c + [empty] * (count - len(c)), emphasis) for c in chunked])


def pad_contexts(a: torch.Tensor, b: torch.Tensor, empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two contexts brought to one sequence length by appending the empty chunk's context [1, 77, width],
    so the conditional and unconditional halves of guidance can run as one batch."""

    def extend(x: torch.Tensor, length: int) -> torch.Tensor:
        missing = (length - x.shape[1]) // empty.shape[1]
        return torch.cat([x, empty.expand(x.shape[0], -1, -1).repeat(1, missing, 1)], dim=1) if missing else x

    length = max(a.shape[1], b.shape[1])
    return extend(a, length), extend(b, length)
