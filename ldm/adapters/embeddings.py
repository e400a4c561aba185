"""Textual-inversion embeddings: learnt token vectors, used in prompts by their trigger word.

An embedding is n vectors of the text encoder's token width. Loaded under a name (the file's stem, as
AUTOMATIC1111 does), every occurrence of that name's tokens in a prompt is replaced by the n vectors
before the text encoder runs; nothing else in the prompt or the encoder changes, and a prompt without the
name gives exactly the context it gave before.

Files, read without running code (safetensors, or pickles with weights_only):
    A1111 .pt:           {"string_to_param": {"*": [n, width]}, "name": ..., ...}
    A1111 .safetensors:  {"emb_params": [n, width]}
    diffusers:           {"<token>": [width]} (learned_embeds.bin / .safetensors), one entry
    SDXL:                {"clip_l": [n, 768], "clip_g": [n, 1280]} (A1111, kohya and diffusers alike): one set
                         of vectors per text tower, the same trigger word in both (the refiner, bigG alone, reads
                         clip_g)
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


# SDXL embeddings: the file's key for each of our tower classes (ldm.models.sdxl_text's embedders).
SDXL_KEYS = {"FrozenCLIPEmbedder": "clip_l", "FrozenOpenCLIPEmbedder": "clip_g"}


def _read(path: Path) -> object:
    """The file's contents, read without running code."""
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
    return data


def _is_sdxl(data: object) -> bool:
    return isinstance(data, dict) and set(SDXL_KEYS.values()) <= set(data)


def read_embedding(path: str | Path) -> torch.Tensor:
    """The vectors [n, width] of an embedding file in the A1111 or diffusers layout."""
    path = Path(path)
    data = _read(path)
    if _is_sdxl(data):
        raise EmbeddingError(
            f"{path.name} is an SDXL embedding (clip_l and clip_g vectors); this model's text encoder is not SDXL's"
        )
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
    return _checked(vectors, path.name)


def read_sdxl_embedding(path: str | Path) -> dict[str, torch.Tensor]:
    """{"clip_l": [n, 768], "clip_g": [n, 1280]} of an SDXL embedding file (the widths a full-size SDXL's)."""
    path = Path(path)
    data = _read(path)
    if not _is_sdxl(data):
        raise EmbeddingError(
            f"{path.name} holds one text encoder's vectors (an SD 1.x / 2.x embedding); an SDXL model needs an "
            "embedding with clip_l and clip_g vectors"
        )
    assert isinstance(data, dict)
    vectors = {key: _checked(data[key], f"{path.name} {key}") for key in SDXL_KEYS.values()}
    counts = {len(v) for v in vectors.values()}
    if len(counts) != 1:
        raise EmbeddingError(
            f"{path.name}: clip_l holds {len(vectors['clip_l'])} vectors and clip_g {len(vectors['clip_g'])}; "
            "an SDXL embedding has as many for each tower"
        )
    return vectors


def _checked(vectors: object, what: str) -> torch.Tensor:
    """An embedding's vectors as [n, width] float32, or a one-line EmbeddingError saying what is wrong with them."""
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (1, 2) or not vectors.is_floating_point():
        raise EmbeddingError(f"{what}: the embedding is not a [vectors, width] float tensor")
    if vectors.numel() == 0:
        raise EmbeddingError(
            f"{what}: the embedding is empty (shape {list(vectors.shape)}); it needs at least "
            "one vector of the text encoder's width"
        )
    vectors = vectors.detach().float().reshape(-1, vectors.shape[-1])
    if not bool(torch.isfinite(vectors).all()):
        raise EmbeddingError(f"{what}: the embedding holds NaN or infinite values")
    if float(vectors.abs().max()) > MAX_EMBEDDING_VALUE:
        raise EmbeddingError(
            f"{what}: the embedding holds values up to {float(vectors.abs().max()):.3g}; "
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
    if hasattr(encoder, "embedders"):  # SDXL (ldm.models.sdxl_text): each tower its own vectors
        vectors = _add_sdxl(encoder, read_sdxl_embedding(path), name, path.name)
        _record(model, name, path, vectors)
        return name
    vectors = read_embedding(path)
    width = encoder.model.token_embedding.weight.shape[1]
    if vectors.shape[1] != width:
        raise EmbeddingError(
            f"{path.name} holds vectors of width {vectors.shape[1]}; this model's text encoder "
            f"takes {width} (an embedding made for another model family)"
        )
    encoder.add_embedding(name, vectors)
    _record(model, name, path, vectors)
    return name


def _add_sdxl(encoders: torch.nn.Module, vectors: dict[str, torch.Tensor], name: str, file: str) -> torch.Tensor:
    """Give each SDXL tower its own vectors (clip_l to CLIP ViT-L, clip_g to bigG), checked against its width first,
    so a refused file leaves no tower with the embedding; returns the vectors of the first tower."""
    towers = []
    for tower in encoders.embedders:
        key = SDXL_KEYS.get(type(tower).__name__)
        if key is None:
            raise EmbeddingError(f"{file}: no SDXL embedding key for a {type(tower).__name__} text tower")
        width = tower.model.token_embedding.weight.shape[1]
        if vectors[key].shape[1] != width:
            raise EmbeddingError(
                f"{file}: {key} holds vectors of width {vectors[key].shape[1]}; this model's {key} tower takes "
                f"{width} (an embedding made for another model)"
            )
        towers.append((tower, vectors[key]))
    for tower, tower_vectors in towers:
        tower.add_embedding(name, tower_vectors)
    return towers[0][1]


def _record(model: torch.nn.Module, name: str, path: Path, vectors: torch.Tensor) -> None:
    """The embedding in the model's identity (the images' metadata), and in the log."""
    identity = model.__dict__.setdefault("identity", {})
    identity.setdefault("embeddings", []).append(
        {"name": name, "file": path.name, "sha256": file_sha256(path), "vectors": int(vectors.shape[0])}
    )
    log.info("embedding %r: %d vector(s) from %s", name, vectors.shape[0], path.name)


def load_embeddings(model: torch.nn.Module, paths: list[str | Path]) -> list[str]:
    """Every embedding of the given files and folders; returns their names."""
    return [load_embedding(model, file) for path in paths for file in embedding_files(path)]
