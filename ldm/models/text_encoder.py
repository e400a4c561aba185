"""Frozen CLIP text towers giving the U-Net its cross-attention context.

SD 2.x's is open_clip's own CLIP model (FrozenOpenCLIPEmbedder), SD 1.x's OpenAI CLIP ViT-L/14
(FrozenCLIPEmbedder), both run as open_clip's text transformer. Nothing is downloaded: weights come
from a local file or from the surrounding checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ldm.core import skip_init
from ldm.core.errors import InvalidOptionError, LdmError
from ldm.io.checkpoint import HF_CLIP_LAYOUT, OPEN_CLIP_LAYOUT, load_state_dict
from ldm.models import open_clip_parts

if TYPE_CHECKING:
    import open_clip

# open_clip's text transformer and tokenizer, loaded without open_clip's model zoo (ldm.models.open_clip_parts).
_transformer = open_clip_parts.transformer()
QuickGELU, TextTransformer = _transformer.QuickGELU, _transformer.TextTransformer

LAYERS = {"last": 0, "penultimate": 1}
# The MLP activation of a CLIP text tower, by the name Hugging Face configs give it (hidden_act).
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary, open_clip's and OpenAI's alike
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocabulary:
    """What prompt chunking needs of a tokenizer (ldm.models.long_prompts)."""

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
    cfg = open_clip_parts.full().get_model_config(arch)
    if cfg is None:
        raise UnknownTextEncoderError(
            f"unknown open_clip architecture {arch!r} (give a name open_clip knows or a config .json path)"
        )
    return cfg


def open_clip_model(arch: str | dict) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP (both towers) for an architecture name, config path or dict: what
    `ldm train` trains as a text encoder or judge (config target `ldm.models.text_encoder.OpenCLIP`)."""
    return open_clip_parts.full().model.CLIP(**open_clip_config(arch))


def _bpe():
    """CLIP's BPE tokenizer, open_clip's module-level instance."""
    return open_clip_parts.tokenizer()._tokenizer


_warned: set[str] = set()  # each cut prompt is said once, not at every step or batch


def _cut_part(prompt: str, kept: int) -> str:
    """The words of a prompt past its first `kept` tokens, for the warning.

    A binary search for the most words whose tokens fit (the count grows with the words): a few encodings
    of the prompt, where trying every word count was quadratic in its length (minutes for 100,000 characters).
    """
    words = prompt.split()
    fits, too_many = 0, len(words) + 1  # 0 words always fit
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        if len(_bpe().encode(" ".join(words[:middle]))) <= kept:
            fits = middle
        else:
            too_many = middle
    return " ".join(words[fits:]) if fits else prompt


def check_layer(layer: str) -> None:
    """Refuse an unknown layer name (before a tower is built for nothing)."""
    if layer not in LAYERS:
        raise InvalidOptionError(f"unknown text encoder layer {layer!r}; known: {', '.join(LAYERS)}")


class FrozenTextEncoder(nn.Module):
    """prompts -> [batch, 77, width] hidden states of the chosen layer, after the final layer norm.

    What the SD families share: open_clip's text transformer in `self.model`, CLIP's BPE tokenizer, and
    the layer read out counted from the end (`layer_idx` 0: the last block, 1: the one before, ...).
    Subclasses build the tower and say how it pads and how the original checkpoints name its tensors.
    """

    checkpoint_layout = OPEN_CLIP_LAYOUT  # ldm.io.checkpoint.to_original_keys writes the tower in this layout
    pads_with_end = False  # fill after the end token: with the end token (SD 1.x) or with 0 (open_clip)

    def __init__(self, model: nn.Module, layer: str, max_length: int, width: int, freeze: bool):
        super().__init__()
        check_layer(layer)
        self.model = model
        self.layer_idx = LAYERS[layer]
        self.max_length = max_length
        self.width = width
        if freeze:
            self.freeze()

    @property
    def num_layers(self) -> int:
        return len(self.model.transformer.resblocks)

    @property
    def clip_skip(self) -> int:
        """The layer read out as A1111's "clip skip": 1 is the last block, 2 the penultimate, ..."""
        return self.layer_idx + 1

    def set_clip_skip(self, skip: int) -> None:
        """Read out the `skip`-th block from the end (1: last); its output still goes through the final norm."""
        if not 1 <= skip <= self.num_layers:
            raise InvalidOptionError(
                f"--clip-skip must be between 1 and {self.num_layers} (the text encoder's layers), got {skip}"
            )
        self.layer_idx = skip - 1

    def freeze(self) -> None:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        # A frozen encoder stays in eval mode even inside a model put in training mode.
        return super().train(False)

    def vocabulary(self) -> Vocabulary:
        bpe = _bpe()
        pad = bpe.eot_token_id if self.pads_with_end else 0
        encode = self._encode_with_embeddings if self.__dict__.get("embeddings") else bpe.encode
        return Vocabulary(encode, bpe.sot_token_id, bpe.eot_token_id, pad, bpe.encoder[",</w>"])

    # ---- textual-inversion embeddings (ldm.adapters.embeddings loads the files) --------------------------------
    # An embedding's n vectors stand in the token ids as negative placeholders -1, -2, ... (rows of one
    # table), which encode_tokens swaps for the vectors; a prompt without a trigger word never meets one.
    def add_embedding(self, name: str, vectors: torch.Tensor) -> None:
        """Let `name` in prompts stand for `vectors` [n, width]."""
        trigger = _bpe().encode(name)
        if not trigger:
            raise InvalidOptionError(f"embedding name {name!r} has no tokens to find in prompts")
        embeddings = self.__dict__.setdefault("embeddings", {})
        if name in embeddings:
            raise InvalidOptionError(f"an embedding named {name!r} is already loaded")
        start = sum(len(v) for _, v in embeddings.values())
        embeddings[name] = (trigger, vectors.detach().float().cpu())
        self.__dict__["_placeholders"] = {
            **self.__dict__.get("_placeholders", {}),
            name: [-(start + i + 1) for i in range(len(vectors))],
        }

    def _encode_with_embeddings(self, text: str) -> list[int]:
        ids = _bpe().encode(text)
        triggers = sorted(self.__dict__["embeddings"].items(), key=lambda item: -len(item[1][0]))  # longest first
        out, i = [], 0
        while i < len(ids):
            for name, (trigger, _) in triggers:
                if ids[i : i + len(trigger)] == trigger:
                    out += self.__dict__["_placeholders"][name]
                    i += len(trigger)
                    break
            else:
                out.append(ids[i])
                i += 1
        return out

    def _token_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token embeddings of ids, with the embeddings' vectors at their placeholders."""
        table = self.model.token_embedding
        x = table(tokens.clamp_min(0))
        placeholders = tokens < 0
        if placeholders.any():
            vectors = torch.cat([v for _, v in self.__dict__["embeddings"].values()]).to(x.device, x.dtype)
            x = torch.where(placeholders[..., None], vectors[(-tokens - 1).clamp_min(0)], x)
        return x

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids: start, the prompt's tokens, end, then padding; cut at max_length as the reference code
        does. A cut is said in the log, since the cut part of a prompt has no effect (ldm.models.long_prompts chunks
        long prompts instead)."""
        vocab = self.vocabulary()
        rows = []
        for prompt in prompts:
            ids = vocab.encode(prompt)
            kept = self.max_length - 2
            if len(ids) > kept and prompt not in _warned:
                _warned.add(prompt)
                log.warning(
                    "prompt of %d tokens cut at %d: %r has no effect (--long-prompts chunks it instead)",
                    len(ids),
                    kept,
                    _cut_part(prompt, kept),
                )
            row = [vocab.start_id] + ids[:kept] + [vocab.end_id]
            rows.append(row + [vocab.pad_id] * (self.max_length - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_vectors(self._token_vectors(tokens))

    def encode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """Token vectors [batch, max_length, width] -> the read-out layer's hidden states (what a backend exports)."""
        m = self.model
        x = vectors + m.positional_embedding
        blocks = m.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_idx]:
            x = block(x, attn_mask=m.attn_mask)
        return m.ln_final(x)

    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenize(list(prompts)).to(self.model.positional_embedding.device)
        return self.encode_tokens(tokens)


class OpenClipTextHalf(nn.Module):
    """The text half of open_clip's CLIP (its attributes, names and modules; the image tower never built), for
    configs that set nothing but the text tower's sizes: open_clip's `model.CLIP` builds the same
    TextTransformer for them and keeps these parts of it, but importing it loads open_clip's model zoo.
    Used when the weights come from a checkpoint (ldm.core.skip_init), as the random init differs from CLIP's."""

    TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers"}

    @classmethod
    def fits(cls, cfg: dict) -> bool:
        return set(cfg) <= {"embed_dim", "vision_cfg", "text_cfg"} and set(cfg.get("text_cfg", {})) <= cls.TEXT_KEYS

    def __init__(self, cfg: dict):
        super().__init__()
        text = TextTransformer(**cfg["text_cfg"], output_dim=cfg["embed_dim"])  # open_clip's defaults otherwise
        self.transformer = text.transformer
        self.context_length = text.context_length
        self.vocab_size = text.vocab_size
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.text_pool_type = text.pool_type
        self.text_eos_id = text.eos_id
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.logit_bias = None


class FrozenOpenCLIPEmbedder(FrozenTextEncoder):
    """SD 2.x: an open_clip CLIP (visual tower removed), so its state dict is the `cond_stage_model.model.*`
    part of an SD 2.x checkpoint. Reads the penultimate layer by default, and pads with 0 as open_clip does."""

    def __init__(
        self,
        arch: str | dict = "ViT-H-14",
        layer: str = "penultimate",
        max_length: int = 77,
        freeze: bool = True,
        weights: str | None = None,
    ):
        check_layer(layer)
        cfg = open_clip_config(arch)
        # Without a checkpoint to come, open_clip's whole CLIP is built: its image tower draws from the RNG
        # first, so seeded random models (tests' golden cases) keep their weights.
        light = skip_init.active() and OpenClipTextHalf.fits(cfg)
        model = OpenClipTextHalf(cfg) if light else open_clip_parts.full().model.CLIP(**cfg)
        if hasattr(model, "visual"):
            del model.visual  # SD only needs the text tower; keeps memory and the key set as in the checkpoints
        super().__init__(model, layer, max_length, cfg["text_cfg"]["width"], freeze=False)
        if weights is not None:
            state = load_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith("visual.")}
            self.model.load_state_dict(state, strict=True)
        if freeze:
            self.freeze()


class FrozenCLIPEmbedder(FrozenTextEncoder):
    """SD 1.x: OpenAI CLIP ViT-L/14's text tower, run as open_clip's text transformer.

    Three things differ from SD 2.x and each changes images: the last layer is read (after the final
    norm), the activation is quick-GELU (OpenAI's CLIP was trained with it), and prompts are padded with
    the end token rather than 0, as the Hugging Face tokenizer SD 1.x was trained with pads; padded
    positions reach the U-Net through cross-attention. The original checkpoints store the tower in the
    Hugging Face layout, which ldm.io.checkpoint translates (ldm.io.hf_clip). The sizes default to ViT-L/14's.
    """

    checkpoint_layout = HF_CLIP_LAYOUT
    pads_with_end = True

    def __init__(
        self,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        layer: str = "last",
        max_length: int = 77,
        freeze: bool = True,
        activation: str = "quick_gelu",
        pads_with_end: bool = True,
    ):
        check_layer(layer)
        if activation not in ACTIVATIONS:
            raise InvalidOptionError(f"unknown text encoder activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        try:
            # No projection: SD 1.x uses the per-token states, and the Hugging Face tower stores none.
            model = TextTransformer(
                context_length=max_length,
                vocab_size=VOCAB_SIZE,
                width=width,
                heads=heads,
                layers=layers,
                output_dim=None,
                act_layer=ACTIVATIONS[activation],
            )
        except (AssertionError, ValueError, RuntimeError) as exc:  # e.g. a width the heads do not divide
            raise InvalidOptionError(
                f"cannot build a CLIP text tower of width {width}, {layers} layers, "
                f"{heads} heads: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        super().__init__(model, layer, max_length, width, freeze)
        # Other than SD 1.x's own: the OpenCLIP ViT-H tower of SD 2.x as diffusers folders keep it (a Hugging
        # Face CLIPTextModel with GELU whose tokenizer pads with "!", id 0), read by ldm.formats.diffusers.
        self.activation = activation
        self.pads_with_end = pads_with_end
