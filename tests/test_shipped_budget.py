"""One size budget for every model shipped in checkpoints/: at most 100 MiB together, each shared part
(a text tower, an autoencoder) stored once, and weights only as safetensors (issue 13)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
BUDGET = 100 * 2**20
SHARED_MIN_BYTES = 64 * 2**10  # small tensors (norms, biases) may coincide by chance, e.g. all-ones


def test_everything_shipped_fits_one_budget():
    files = [p for p in CHECKPOINTS.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total <= BUDGET, f"checkpoints/ holds {total / 2**20:.1f} MiB, over the {BUDGET / 2**20:.0f} MiB budget"


def test_weights_are_safetensors_only():
    pickles = [
        p.relative_to(ROOT) for p in CHECKPOINTS.rglob("*") if p.suffix in {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
    ]
    assert not pickles, f"pickle-format weights shipped: {pickles}"
    for path in CHECKPOINTS.rglob("*.safetensors"):
        assert path.read_bytes()[8:9] == b"{", f"{path} has no safetensors header"


def test_no_tensor_is_stored_twice():
    seen: dict[str, str] = {}
    for path in sorted(CHECKPOINTS.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.numel() * tensor.element_size() < SHARED_MIN_BYTES:
                    continue
                digest = hashlib.sha256(tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy()).hexdigest()
                where = f"{path.relative_to(CHECKPOINTS)}:{key}"
                assert digest not in seen, f"{where} repeats {seen[digest]}: store the shared part once"
                seen[digest] = where
