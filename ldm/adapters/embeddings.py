"""Textual-inversion embeddings: learnt token vectors, used in prompts by their trigger word.

An embedding is n vectors of the text encoder's token width. Loaded under a name (the file's stem, as
AUTOMATIC1111 does), every occurrence of that name's tokens in a prompt is replaced by the n vectors
before the text encoder runs; nothing else in the prompt or the encoder changes, and a prompt without the
name gives exactly the context it gave before.

Files, read without running code (safetensors, or pickles with weights_only):
    A1111 .pt:           {"string_to_param": {"*": [n, width]}, "name": ..., ...}
    A1111 .safetensors:  {"emb_params": [n, width]}
    diffusers:           {"<token>": [width]} (learned_embeds.bin / .safetensors), one entry
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ldm.core.errors import LdmError, MissingFileError
from ldm.io.checkpoint import file_sha256, load_state_dict, torch_load_weights_only

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors")
# The largest |value| an embedding vector may hold. CLIP's own token vectors stay below 1 and trained embeddings
# within a few times that; far larger ones overflow the text encoder (its layer norms square them), so the prompt's
# context, and then the image, would come out NaN: such a file is broken, not strong.
MAX_EMBEDDING_VALUE = 1000.0


class EmbeddingError(LdmError, ValueError):
    """An embedding file that cannot be read, or that does not fit the model's text encoder."""


def read_embedding(path: str | Path) -> torch.Tensor:
    """The vectors [n, width] of an embedding file in the A1111 or diffusers layout."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"embedding file not found: {path}")
    if path.suffix == ".safetensors":
        data: object = load_state_dict(path)
    else:
        try:
            data = torch_load_weights_only(path)
        except Exception as exc:  # a payload, or not a pickle at all: said in one line, nothing run
            raise EmbeddingError(
                f"cannot read {path.name} safely (weights_only=True): {str(exc).splitlines()[0]}"
            ) from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):  # A1111 .pt
        params = list(data["string_to_param"].values())
        vectors = params[0] if len(params) == 1 else None
    elif isinstance(data, dict) and "emb_params" in data:  # A1111 .safetensors
        vectors = data["emb_params"]
    elif isinstance(data, dict) and len(data) == 1:  # diffusers: {"<token>": [width]}
        vectors = next(iter(data.values()))
    else:
        keys = ", ".join(list(data)[:4]) if isinstance(data, dict) else type(data).__name__
        raise EmbeddingError(
            f"{path.name} is not a textual-inversion embedding (found {keys}; expected "
            "string_to_param, emb_params or one token's vector)"
        )
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (1, 2) or not vectors.is_floating_point():
        raise EmbeddingError(f"{path.name}: the embedding is not a [vectors, width] float tensor")
    if vectors.numel() == 0:
        raise EmbeddingError(
            f"{path.name}: the embedding is empty (shape {list(vectors.shape)}); it needs at least "
            "one vector of the text encoder's width"
        )
    vectors = vectors.detach().float().reshape(-1, vectors.shape[-1])
    if not bool(torch.isfinite(vectors).all()):
        raise EmbeddingError(f"{path.name}: the embedding holds NaN or infinite values")
    if float(vectors.abs().max()) > MAX_EMBEDDING_VALUE:
        raise EmbeddingError(
            f"{path.name}: the embedding holds values up to {float(vectors.abs().max()):.3g}; "
            f"beyond {MAX_EMBEDDING_VALUE:g} it is broken (trained ones stay within a few units)"
        )
    return vectors


def embedding_files(path: str | Path) -> list[Path]:
    """The file itself, or every embedding file of a folder (A1111's embeddings/ habit), sorted."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not path.is_file():
        raise MissingFileError(f"embedding file or folder not found: {path}")
    return [path]


def load_embedding(model: torch.nn.Module, path: str | Path, name: str | None = None) -> str:
    """Give the model's text encoder the embedding in `path` under `name` (default: the file's stem);
    returns the name, the word that calls it in prompts."""
    path = Path(path)
    name = name or path.stem
    encoder = model.text_encoder
    vectors = read_embedding(path)
    width = encoder.model.token_embedding.weight.shape[1]
    if vectors.shape[1] != width:
        raise EmbeddingError(
            f"{path.name} holds vectors of width {vectors.shape[1]}; this model's text encoder "
            f"takes {width} (an embedding made for another model family)"
        )
    encoder.add_embedding(name, vectors)
    identity = model.__dict__.setdefault("identity", {})
    identity.setdefault("embeddings", []).append(
        {"name": name, "file": path.name, "sha256": file_sha256(path), "vectors": int(vectors.shape[0])}
    )
    log.info("embedding %r: %d vector(s) from %s", name, vectors.shape[0], path.name)
    return name


def load_embeddings(model: torch.nn.Module, paths: list[str | Path]) -> list[str]:
    """Every embedding of the given files and folders; returns their names."""
    return [load_embedding(model, file) for path in paths for file in embedding_files(path)]
