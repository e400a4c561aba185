"""Frozen encoders' outputs on disk (`training.cache_dir`), so later epochs and later runs skip the encoders.

A training run's text encoder and VAE are frozen, so a caption's context and an image's posterior moments
never change while their weights do not. Each entry is one safetensors file (never a pickle)

    cache_dir/<kind>-<fingerprint>/<h[:2]>/<h>.safetensors      h = sha256(entry key)

where the fingerprint hashes the encoder's weights and the settings that change its output (for the text
encoder: its class, layer read out, length and textual-inversion vectors), so an encoder with other weights
reads none of another's entries. The entry key is the caption, or the image key (a folder's file, a shard's
`URL#key`, `#flip` when mirrored) with the image's size, so a run at another `data.size` does not read them.
Files are written atomically (a reader sees a whole entry or none), so ranks and workers may share the folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open

from ldm.io.checkpoint import save_state_dict

log = logging.getLogger(__name__)


def module_fingerprint(module: torch.nn.Module, *settings: object) -> str:
    """A short hash of a module's tensors (names, dtypes, shapes, bytes) and of settings that change its output."""
    h = hashlib.blake2b(digest_size=10)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for setting in settings:
        h.update(b"|" + repr(setting).encode())
    return h.hexdigest()


def text_encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """The text encoder's weights plus what else decides a caption's context."""
    embeddings = getattr(encoder, "__dict__", {}).get("embeddings") or {}
    vectors = [(name, trigger, v.float().flatten().tolist()) for name, (trigger, v) in sorted(embeddings.items())]
    return module_fingerprint(
        encoder,
        type(encoder).__name__,
        getattr(encoder, "layer_idx", None),
        getattr(encoder, "max_length", None),
        getattr(encoder, "pads_with_end", None),
        vectors,
    )


class DiskCache:
    """Tensors by string key under one folder of `cache_dir`: `read(keys)` returns the stored ones, `write` adds."""

    def __init__(self, cache_dir: str | os.PathLike, kind: str, fingerprint: str):
        self.folder = Path(cache_dir) / f"{kind}-{fingerprint}"
        self.kind = kind
        self.hits = self.misses = 0

    def path(self, key: str) -> Path:
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / h[:2] / f"{h}.safetensors"

    def read(self, keys: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The stored tensors of those keys that have an entry (a damaged entry counts as none and is rewritten)."""
        found: dict[str, torch.Tensor] = {}
        for key in keys:
            path = self.path(key)
            if not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt", device=str(device)) as f:
                    if (f.metadata() or {}).get("key") == key:  # guards against a (vanishingly rare) hash collision
                        found[key] = f.get_tensor("value")
            except Exception as exc:  # a file cut short by a full disk, say: encode again and overwrite it
                log.warning("unreadable %s cache entry %s (%s): encoding it again", self.kind, path, exc)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def write(self, entries: dict[str, torch.Tensor]) -> None:
        for key, value in entries.items():
            save_state_dict({"value": value}, self.path(key), metadata={"key": key})
