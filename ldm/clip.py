"""open_clip CLIP models as this project builds them: from an open_clip JSON config, loaded and saved as
safetensors, and the exact fast text pass (what the CLIP training, the judges and the text encoder share).

The model is open_clip's own `CLIP`, so its weights load into open_clip (and into
`ldm.models.text_encoder.FrozenOpenCLIPEmbedder`) with open_clip's key names.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ldm.core.defaults import shipped_path
from ldm.core.errors import LdmError
from ldm.io.checkpoint import load_state_dict, save_state_dict
from ldm.models import open_clip_parts

if TYPE_CHECKING:
    import open_clip

DEFAULT_CONFIG = shipped_path("configs/emoji/emoji-clip.json")  # in a checkout and in an installed wheel


class ClipConfigError(LdmError, ValueError):
    """A CLIP model config that is missing or not in open_clip's format."""


def create_clip(config_path: str | os.PathLike = DEFAULT_CONFIG) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP from an open_clip JSON config, registered under the file's stem."""
    path = Path(config_path)
    if not path.is_file():
        raise ClipConfigError(f"CLIP config not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ClipConfigError(f"CLIP config {path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= cfg.keys():
        raise ClipConfigError(f"CLIP config {path} needs the open_clip keys embed_dim, vision_cfg and text_cfg")
    open_clip = open_clip_parts.full()  # its model zoo, imported only when a CLIP is made here
    open_clip.add_model_config(path)
    # open_clip warns that no pretrained weights were loaded; that is the point here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(path.stem, pretrained=None)
    finally:
        root.setLevel(level)
    return model


def load_clip(weights: str | os.PathLike, config_path: str | os.PathLike = DEFAULT_CONFIG) -> open_clip.CLIP:
    """The trained CLIP in fp32 eval mode: config -> model, then a strict load of the safetensors weights."""
    model = create_clip(config_path)
    state = load_state_dict(weights)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def save_clip(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """The state dict in fp16 safetensors, written atomically (temp file in the same folder, then os.replace)."""
    save_state_dict(model.state_dict(), path, metadata=metadata, float_dtype=torch.float16)


def tokenize(captions: list[str], context_length: int = 77) -> torch.Tensor:
    return open_clip_parts.tokenizer().tokenize(captions, context_length=context_length)


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """model.encode_text(tokens), computed only over the first positions up to the longest end-of-text token.

    With the causal mask and end-of-text pooling, positions after the pooled token cannot affect
    the result, so dropping them is exact; emoji captions are ~8 of 77 tokens, so it is much faster.
    """
    if model.text_pool_type not in ("argmax", "eos") or model.attn_mask is None:
        return model.encode_text(tokens, normalize=normalize)
    if model.text_pool_type == "argmax":
        last = tokens.argmax(dim=-1)
    else:
        last = (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(last.max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    pool = open_clip_parts.transformer().text_global_pool
    x = pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x
