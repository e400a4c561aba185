"""Resuming a run: find its checkpoint, read it without running code, check it fits, hand it to Lightning.

Lightning's own loader calls torch.load without weights_only, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
(or an old torch default) would unpickle arbitrary objects from a `last.ckpt` someone gave you. Every
run checkpoint is therefore read here, with weights_only=True, and Lightning gets the dict already
loaded through `SafeCheckpointIO`, a checkpoint plugin whose load never calls Lightning's loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ldm.core.errors import LdmError
from ldm.io.checkpoint import WriteError, atomic_path, state_problems, torch_load_weights_only, write_error

LAST = "last"
# What every Lightning training checkpoint holds; a bare state dict (an inference .ckpt) lacks them.
REQUIRED_KEYS = ("state_dict", "global_step", "optimizer_states")


class ResumeError(LdmError, ValueError):
    """A checkpoint to resume from that does not exist, cannot be read, or does not fit the run."""


def resolve_resume(resume: str | os.PathLike | None, cfg: dict | None) -> Path | None:
    """`last` -> the run dir's checkpoints/last.ckpt; a run directory -> its last.ckpt; a file -> itself."""
    if resume is None:
        return None
    if str(resume) == LAST:
        if cfg is None:
            raise ResumeError("--resume without a path needs --config (to find the run directory)")
        path = Path(cfg["logging"]["run_dir"]) / "checkpoints" / "last.ckpt"
    else:
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ResumeError(f"no checkpoint to resume from at {path}")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint, read with weights_only=True (tensors and plain containers only; runs no code)."""
    try:
        ckpt = torch_load_weights_only(path)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "cannot use this file"
        raise ResumeError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(ckpt, dict):
        raise ResumeError(f"{path} is not a training checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


def check_resumable(ckpt: dict, module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuse, before Lightning touches the run, a file that is not a training checkpoint of this model.

    Caught here rather than inside `Trainer.fit`, whose exception handlers would write checkpoints first.
    """
    lacking = [k for k in REQUIRED_KEYS if k not in ckpt]
    if lacking:
        raise ResumeError(
            f"{path} is not a training checkpoint (no {', '.join(lacking)}); "
            "to start from a model's weights use init.checkpoint"
        )
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ResumeError(f"{path}: its state_dict is not a mapping of tensors")
    problems = state_problems(module.state_dict(), state)
    if problems:
        raise ResumeError(f"{path} does not match the config's model: " + "; ".join(problems))


# What places a shard stream's batches (ldm.training.shard_stream): a resumed run must keep them, or its
# position would point at other samples (repeating some, skipping others).
SHARD_ORDER_KEYS = ("shards", "batch_size", "num_workers", "remainder")


def check_same_data_order(ckpt: dict, cfg: dict, world_size: int, path: str | os.PathLike) -> None:
    """Refuse to resume a sharded run with settings that change which samples its saved position means."""
    if cfg["data"].get("shards") is None:
        return  # a folder stream is placed by position alone (ldm.training.data.SampleStream)
    state = ckpt.get("ldm") or {}
    stored = ((state.get("config") or {}).get("data")) or {}
    for key in SHARD_ORDER_KEYS:
        if key in stored and stored[key] != cfg["data"][key]:
            raise ResumeError(
                f"{path} was trained with data.{key}={stored[key]!r}, not {cfg['data'][key]!r}: "
                "a sharded run resumes with the same shards, batch size, workers and remainder"
            )
    if "world_size" in state and int(state["world_size"]) != world_size:
        raise ResumeError(
            f"{path} was trained on {state['world_size']} process(es), not {world_size}: "
            "a sharded run resumes on the same number of devices"
        )


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin, except that loading is weights-only whatever the caller or environment asks.

    `preloaded` maps a path to its already-read checkpoint, so a resumed file is read (and checked) once.
    Saving is Lightning's own, into a temporary file renamed over the target: a run killed while writing
    last.ckpt keeps the previous one, instead of a truncated file that every --resume would refuse. A write
    that fails (a full disk) removes its temporary file and stops the run with one line (WriteError) naming
    the checkpoint and the cause; the previous checkpoint stays as it was.
    """

    def __init__(self, preloaded: dict[str, dict] | None = None):
        super().__init__()
        self.preloaded = {str(Path(k).resolve()): v for k, v in (preloaded or {}).items()}

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        key = str(Path(path).resolve())
        if key in self.preloaded:
            return self.preloaded.pop(key)  # handed over once; Lightning keeps its own reference
        return read_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        try:
            with atomic_path(path) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)
        except WriteError:
            raise
        except OSError as exc:  # Lightning serialises into memory, then writes the bytes: a full disk is an OSError
            raise write_error(path, exc) from exc
