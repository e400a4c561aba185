"""Frozen OpenCLIP text tower giving the U-Net its cross-attention context.

The network is open_clip's own CLIP model (visual tower removed), so its state dict is the
`cond_stage_model.model.*` part of an SD 2.x checkpoint. Nothing is downloaded: weights
come from a local file or from the surrounding checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
from torch import nn

from ldm.errors import LdmError, InvalidOptionError

LAYERS = {"last": 0, "penultimate": 1}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocabulary:
    """What prompt chunking needs of a tokenizer (ldm.long_prompts)."""
    encode: Callable[[str], list[int]]  # text -> ids, without start and end
    start_id: int
    end_id: int
    pad_id: int
    comma_id: int


class UnknownTextEncoderError(LdmError, ValueError):
    pass


def open_clip_config(arch: str | dict) -> dict:
    """The open_clip model config for an architecture name, a path to a config JSON, or the dict itself."""
    if isinstance(arch, dict):
        return dict(arch)
    if arch.endswith(".json") or os.path.sep in arch:
        path = Path(arch)
        if not path.is_file():
            raise UnknownTextEncoderError(f"text encoder config file not found: {path}")
        return json.loads(path.read_text())
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise UnknownTextEncoderError(f"unknown open_clip architecture {arch!r} (give a name open_clip knows or a config .json path)")
    return cfg


def open_clip_model(arch: str | dict, **ignored) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP (both towers) for an architecture name, config path or dict: what
    `ldm train` trains as a text encoder or judge (config target `ldm.text_encoder.OpenCLIP`)."""
    return open_clip.model.CLIP(**open_clip_config(arch))


_warned: set[str] = set()  # each cut prompt is said once, not at every step or batch


def _cut_part(prompt: str, kept: int) -> str:
    """The words of a prompt past its first `kept` tokens, for the warning."""
    words = prompt.split()
    for i in range(len(words), 0, -1):
        if len(open_clip.tokenizer._tokenizer.encode(" ".join(words[:i]))) <= kept:
            return " ".join(words[i:])
    return prompt


class FrozenOpenCLIPEmbedder(nn.Module):
    """prompts -> [batch, 77, width] hidden states of the chosen layer, after ln_final (as SD 2.x)."""

    def __init__(self, arch: str | dict = "ViT-H-14", layer: str = "penultimate", max_length: int = 77,
                 freeze: bool = True, weights: str | None = None, **ignored):
        super().__init__()
        if layer not in LAYERS:
            raise InvalidOptionError(f"unknown text encoder layer {layer!r}; known: {', '.join(LAYERS)}")
        cfg = open_clip_config(arch)
        model = open_clip.model.CLIP(**cfg)
        del model.visual  # SD only needs the text tower; keeps memory and the key set as in the checkpoints
        self.model = model
        self.layer_idx = LAYERS[layer]
        self.max_length = max_length
        self.width = cfg["text_cfg"]["width"]
        if weights is not None:
            from ldm.checkpoint import load_state_dict  # local import: checkpoint imports nothing from here

            state = load_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith("visual.")}
            self.model.load_state_dict(state, strict=True)
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenOpenCLIPEmbedder":
        # A frozen encoder stays in eval mode even inside a model put in training mode.
        return super().train(False)

    def vocabulary(self) -> Vocabulary:
        bpe = open_clip.tokenizer._tokenizer
        return Vocabulary(bpe.encode, bpe.sot_token_id, bpe.eot_token_id, 0, bpe.encoder[",</w>"])

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids, cut at max_length as the reference code does: said in the log, since the cut part
        of a prompt has no effect (ldm.long_prompts chunks long prompts instead)."""
        tokens = open_clip.tokenize(prompts, context_length=self.max_length)
        for prompt, row in zip(prompts, tokens):
            if row[-1] != 0 and prompt not in _warned:  # a row without padding may have been cut
                count = len(open_clip.tokenizer._tokenizer.encode(prompt))
                if count > self.max_length - 2:
                    _warned.add(prompt)
                    log.warning("prompt of %d tokens cut at %d: %r has no effect (--long-prompts chunks it instead)",
                                count, self.max_length - 2, _cut_part(prompt, self.max_length - 2))
        return tokens

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding
        blocks = m.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_idx]:
            x = block(x, attn_mask=m.attn_mask)
        return m.ln_final(x)

    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenize(list(prompts)).to(self.model.positional_embedding.device)
        return self.encode_tokens(tokens)
