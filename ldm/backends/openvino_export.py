"""A network exported once to OpenVINO IR and kept on disk, keyed by what makes its graph.

The key (`export_key`) is a SHA-256 over the network's role, its inputs (names, ranks, the sizes that are fixed),
the weights' format ("fp32"; NNCF's int8 weights will be another), OpenVINO's version, every parameter and buffer
(name, shape, dtype and bytes) and every plain setting of its modules (a LoRA adapter's multiplier, the text
encoder's clip skip, ...): merged LoRAs, an adapter's weight or another checkpoint give another export. Batch and
spatial sizes stay dynamic in the IR, so one export serves every image size; the inference precision is chosen
when the IR is compiled (ldm.backends.openvino_networks), not here.

openvino is an optional extra: it is imported when a network is first exported or loaded, never at startup, and
its absence is said in one line (`OpenVINOMissingError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.core import defaults
from ldm.core.errors import LdmError

log = logging.getLogger(__name__)
WEIGHTS_FORMAT = "fp32"  # what the IR's constants hold; int8 weight compression would be keyed apart
KEY_VERSION = 1  # bump when the export itself changes, so that older IR is not reused


class BackendError(LdmError, ValueError):
    """A network or run the chosen backend cannot take (said in one line, with what to use instead)."""


class OpenVINOMissingError(BackendError, ImportError):
    pass


def import_openvino() -> Any:
    """The openvino package, or the one-line error naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise OpenVINOMissingError('openvino is not installed: pip install ".[openvino]"') from None
    return openvino


def openvino_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of exported networks: `cache_dir`, else $LDM_CACHE/openvino (default ~/.cache/ldm/openvino)."""
    return Path(cache_dir) if cache_dir is not None else defaults.cache_root() / "openvino"


@dataclass(frozen=True)
class InputSpec:
    """One input of an exported network: its name, dtype and shape with None where a size is dynamic."""

    name: str
    dtype: torch.dtype
    shape: tuple[int | None, ...]


def plain_settings(module: nn.Module) -> list[tuple[str, Any]]:
    """Every module's public attributes that are plain values (numbers, strings, tuples of them): what, beside the
    tensors, can change the traced graph (a LoRA's multiplier, the layer a text encoder reads out)."""
    settings = []
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key.startswith("_") or key == "training":
                continue
            if value is None or isinstance(value, (bool, int, float, str)):
                settings.append((f"{name}.{key}", value))
            elif isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
                settings.append((f"{name}.{key}", tuple(value)))
            elif isinstance(value, torch.Tensor):  # a tensor kept as a plain attribute (an attention mask)
                settings.append((f"{name}.{key}", ("tensor", value.data_ptr(), value._version, tuple(value.shape))))
    return settings


def tensors_of(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers (persistent or not) and tensors kept as plain attributes, by name."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, sub in module.named_modules():
        named += [(f"{name}.{key}", v) for key, v in vars(sub).items() if isinstance(v, torch.Tensor)]
    return named


def weights_stamp(module: nn.Module) -> tuple:
    """A cheap fingerprint that changes when a tensor is replaced or changed in place (its version counter), a
    setting changes or a convolution is patched for a run (seamless tiling's `_conv_forward`): while it stays, the
    SHA-256 of the weights (`export_key`) need not be computed again. Taken on every call, so kept lean."""
    stamp: list = []
    for sub in module.modules():
        for key, value in sub.__dict__.items():
            if key == "_parameters" or key == "_buffers":
                stamp.extend((t.data_ptr(), t._version) for t in value.values() if t is not None)
            elif key == "_conv_forward":
                stamp.append(("patched", id(sub)))
            elif key[0] == "_" or key == "training":
                continue
            elif isinstance(value, torch.Tensor):
                stamp.append((value.data_ptr(), value._version))
            elif value is None or isinstance(value, (bool, int, float, str, tuple, list)):
                stamp.append((key, repr(value)))
    return tuple(stamp)


def patched(module: nn.Module) -> bool:
    """Whether a convolution of the module is patched for the run (ldm.models.seamless): the export would miss it."""
    return any("_conv_forward" in vars(m) for m in module.modules())


def export_key(role: str, module: nn.Module, inputs: Sequence[InputSpec], openvino_version: str) -> str:
    """SHA-256 of what the exported graph is made of (this module's docstring)."""
    digest = hashlib.sha256()
    head = f"ldm-openvino/{KEY_VERSION}/{role}/{WEIGHTS_FORMAT}/{openvino_version}/"
    digest.update(head.encode())
    digest.update(repr([(i.name, str(i.dtype), i.shape) for i in inputs]).encode())
    for name, tensor in tensors_of(module):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    settings = [(k, v) for k, v in plain_settings(module) if not (isinstance(v, tuple) and v[:1] == ("tensor",))]
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def convert(module: nn.Module, example: tuple[torch.Tensor, ...], inputs: Sequence[InputSpec]) -> Any:
    """The module traced and converted to an ov.Model, with the inputs' dynamic sizes dynamic."""
    ov = import_openvino()
    shapes = [ov.PartialShape([-1 if s is None else s for s in spec.shape]) for spec in inputs]
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example, input=shapes)
    for port, spec in zip(model.inputs, inputs):
        port.get_tensor().set_names({spec.name})
    return model


def load_or_export(
    role: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: Sequence[InputSpec],
    key: str,
    cache_dir: Path,
) -> tuple[Path, float | None]:
    """(the IR file of `key`, seconds spent exporting it or None when it was in the cache already).

    A new export is written to a temporary folder beside its place and renamed there, so that a run stopped
    half-way, or two runs at once, never leave a half-written IR under the key. The converted model is not kept:
    compiling reads the IR back (its weights mapped from disk, not held twice)."""
    ov = import_openvino()
    folder = cache_dir / f"{role}-{key[:32]}"
    xml = folder / "model.xml"
    if xml.is_file() and (folder / "model.bin").is_file():
        log.info("OpenVINO: the %s from %s", role, folder)
        return xml, None
    start = time.perf_counter()
    log.info("OpenVINO: exporting the %s (once; kept in %s)", role, cache_dir)
    model = convert(module, example, inputs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{role}-", dir=cache_dir))
    try:
        ov.save_model(model, str(temporary / "model.xml"), compress_to_fp16=False)
        del model
        try:
            temporary.rename(folder)
        except OSError:  # another run wrote the same key first: theirs is the same graph
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return xml, time.perf_counter() - start
