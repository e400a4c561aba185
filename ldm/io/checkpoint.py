"""Reading and writing weights: safetensors by default, pickle checkpoints only with weights_only.

Original SD checkpoints prefix the three networks as `model.diffusion_model.`,
`first_stage_model.` and `cond_stage_model.`; our container names them `unet.`, `vae.`
and `text_encoder.`. The two helpers below convert, so the rest of the code never sees
the original names. SD 1.x's text encoder is stored in Hugging Face's layout
(`cond_stage_model.transformer.text_model.*`) and runs as open_clip's text tower: ldm.io.hf_clip
translates its names both ways.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldm.core.errors import LdmError
from ldm.core.files import check_regular_file
from ldm.io.hf_clip import hf_from_open_clip, open_clip_from_hf

log = logging.getLogger(__name__)

ORIGINAL_PREFIXES = {
    "model.diffusion_model.": "unet.",
    "first_stage_model.": "vae.",
    "cond_stage_model.": "text_encoder.",
}
# Entries of original checkpoints that carry no weights of ours: schedule buffers (we
# derive them from the config), EMA copies, training losses, the upscaler's schedule.
IGNORED_PREFIXES = (
    "model_ema.",
    "first_stage_model.loss.",
    "low_scale_model.",
    "cond_stage_model.model.visual.",
    "denoiser.",  # SDXL files: the reference denoiser's sigmas
    "depth_model.",  # SD 2 depth files: the MiDaS depth estimator, not run here (depth maps are given)
)
SCHEDULE_BUFFERS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "scale_factor",
}


# How the original checkpoints store the text encoder, under `cond_stage_model.` (TEXT_LAYOUTS[layout]):
# open_clip's own names (SD 2.x) or a Hugging Face CLIPTextModel's (SD 1.x).
OPEN_CLIP_LAYOUT, HF_CLIP_LAYOUT = "open_clip", "hf_clip"
TEXT_LAYOUTS = {OPEN_CLIP_LAYOUT: "cond_stage_model.model.", HF_CLIP_LAYOUT: "cond_stage_model.transformer.text_model."}
OUR_TEXT_TOWER = "text_encoder.model."  # where both live in our container

# Integer bookkeeping buffers of other implementations (CLIP's position ids, an EMA's update counter):
# no weights, so a model without them may drop them (the names are the last key component).
KNOWN_INTEGER_BUFFERS = {"position_ids", "num_updates", "num_batches_tracked"}


class CheckpointError(LdmError, ValueError):
    """A checkpoint that cannot be read, or does not match the model."""


def torch_load_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load that can only rebuild tensors and plain containers: a pickle payload raises, never runs.

    weights_only=True is passed explicitly, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot override (it
    only changes torch.load's default); Lightning's own loader leaves it unset, so resume comes here too.
    """
    return torch.load(path, map_location=map_location, weights_only=True)


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a `.ckpt`/`.pt` read with weights_only=True (never runs code)."""
    path = check_regular_file(path, "checkpoint", CheckpointError)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=str(device))
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            obj = torch_load_weights_only(path, map_location=device)
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} safely (weights_only=True): {str(exc).splitlines()[0]}") from exc
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} does not hold a state dict")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise CheckpointError(f"unknown checkpoint format {path.suffix!r} for {path}: use .safetensors or .ckpt")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The file's SHA-256 (hex): what identifies a weights file in image metadata, whatever its name.

    Hashed from a memory map in one update: no copy of the file through a buffer, and hashlib releases the GIL
    for the whole of it (sha256_in_background relies on that). Files that cannot be mapped are read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                digest.update(mapped)
                return digest.hexdigest()
        except (ValueError, OSError):  # an empty file (mmap refuses length 0), a pipe, ...
            pass
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_in_background(path: str | os.PathLike) -> Callable[[], str]:
    """Start file_sha256(path) on a thread; the returned function waits for it and gives the hash (or raises its
    error). The hash runs with the GIL released, so a model built meanwhile hides its cost where a core is free."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["hash"] = file_sha256(path)
        except BaseException as exc:  # handed to the caller, who asks for the hash
            result["error"] = exc

    thread = threading.Thread(target=work, name="ldm-sha256", daemon=True)
    thread.start()

    def wait() -> str:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["hash"]

    return wait


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WriteError(LdmError, OSError):
    """A file that could not be written (a full disk, a read-only folder): said in one line naming the file."""


def write_error(path: str | os.PathLike, exc: Exception) -> WriteError:
    """The one-line error for `exc`, raised while writing `path`: the system's reason (e.g. "No space left on
    device"), not the temporary file's name."""
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return WriteError(f"cannot write {path}: {reason}")


def publish_exclusive(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give the finished file `tmp` the name `path`, only if no file has that name (FileExistsError otherwise).

    A hard link creates the name and its whole content in one step that fails if the name exists, so two
    processes writing into one folder can never replace each other's files. Where the filesystem has no hard
    links, the name is claimed by an exclusive create (O_EXCL) and the file renamed onto the claimed name.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FAT filesystems)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, path)
        return
    os.remove(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", exclusive: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on error it is removed.

    A crash mid-write never leaves a truncated file behind, and readers see the old or the new file.
    `suffix` ends the temporary name, for writers that pick the format by extension (ffmpeg).
    `exclusive`: an existing `path` is never replaced; FileExistsError instead (publish_exclusive).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
        if exclusive:
            publish_exclusive(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_state_dict(
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    float_dtype: torch.dtype | None = None,
) -> None:
    """Write safetensors atomically (see atomic_path); float_dtype (e.g. torch.float16) casts the floating tensors.

    A failed write (a full disk) raises WriteError naming the file; the file there before is left as it was."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if float_dtype is not None:
        tensors = {k: v.to(float_dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    except WriteError:
        raise
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        raise write_error(path, exc) from exc


def from_original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original SD key layout -> ours, dropping entries we derive or do not use (said in a log line).

    A text encoder in the Hugging Face layout (SD 1.x) is translated to open_clip's names; any of its
    tensors that has no open_clip name keeps its original one, so a strict load reports it.
    """
    out, dropped = {}, []
    if any(k.startswith("conditioner.embedders.") for k in state):  # SDXL's text towers (ldm.io.sdxl_keys)
        from ldm.io.sdxl_keys import conditioner_from_original

        out, state = conditioner_from_original(state)
    hf_text = TEXT_LAYOUTS[HF_CLIP_LAYOUT]
    translated, untranslated = open_clip_from_hf(
        {k[len(hf_text) :]: v for k, v in state.items() if k.startswith(hf_text)}
    )
    out.update({OUR_TEXT_TOWER + k: v for k, v in translated.items()})
    state = {
        **{k: v for k, v in state.items() if not k.startswith(hf_text)},
        **{hf_text + k: v for k, v in untranslated.items()},
    }
    for key, value in state.items():
        if key in SCHEDULE_BUFFERS or key.startswith(IGNORED_PREFIXES):
            dropped.append(key)
            continue
        for old, new in ORIGINAL_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    if midas := sum(k.startswith("depth_model.") for k in dropped):
        log.info("skipped the file's MiDaS depth estimator (%d depth_model.* tensors): depth maps are given", midas)
        dropped = [k for k in dropped if not k.startswith("depth_model.")]
    if dropped:
        groups = sorted({k.split(".")[0] if "." in k else "schedule buffers" for k in dropped})
        log.info("ignored %d checkpoint entries we do not load (%s)", len(dropped), ", ".join(groups))
    return out


def to_original_keys(
    state: dict[str, torch.Tensor], text_layout: str | tuple[str, ...] = OPEN_CLIP_LAYOUT
) -> dict[str, torch.Tensor]:
    """Ours -> the original SD key layout, the text encoder in `text_layout` (the encoder's `checkpoint_layout`;
    a tuple: SDXL's text towers, one layout each, ldm.io.sdxl_keys)."""
    if isinstance(text_layout, tuple):
        from ldm.io.sdxl_keys import conditioner_to_original

        towers, state = conditioner_to_original(state, text_layout)
        return {**towers, **to_original_keys(state)}
    if text_layout not in TEXT_LAYOUTS:
        raise CheckpointError(f"unknown text encoder layout {text_layout!r}; known: {', '.join(TEXT_LAYOUTS)}")
    out = {}
    if text_layout == HF_CLIP_LAYOUT:
        tower = {k[len(OUR_TEXT_TOWER) :]: v for k, v in state.items() if k.startswith(OUR_TEXT_TOWER)}
        out.update({TEXT_LAYOUTS[HF_CLIP_LAYOUT] + k: v for k, v in hf_from_open_clip(tower).items()})
        state = {k: v for k, v in state.items() if not k.startswith(OUR_TEXT_TOWER)}
    for key, value in state.items():
        for old, new in ORIGINAL_PREFIXES.items():
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        out[key] = value
    return out


def _summarise(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _integer_buffer(key: str, value: torch.Tensor) -> bool:
    return key.rsplit(".", 1)[-1] in KNOWN_INTEGER_BUFFERS and not value.is_floating_point()


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in a floating tensor. A finite sum proves it (a NaN or an Inf makes any sum NaN or Inf) and is
    several times faster than isfinite over a whole model; only a sum that overflows needs the elementwise test."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def state_problems(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `state` from filling a model whose state dict is `own`, one short phrase per kind of problem.

    Names, shapes and dtypes must match (a floating-point parameter filled from an integer tensor loads
    silently as garbage), and no floating tensor may hold NaN or Inf.
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    dtypes = [
        f"{k} {state[k].dtype} vs model {own[k].dtype}"
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and (state[k].is_floating_point() != own[k].is_floating_point() or state[k].is_complex())
    ]
    nonfinite = [
        k
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and state[k].is_floating_point()
        and not state[k].is_meta
        and not all_finite(state[k])
    ]  # meta: shapes only
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors: {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {_summarise(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_summarise(shapes, 3)}")
    if dtypes:
        problems.append(
            f"{len(dtypes)} dtype mismatches (integer where floating point is expected, or the reverse): "
            f"{_summarise(dtypes, 3)}"
        )
    if nonfinite:
        problems.append(f"{len(nonfinite)} tensors hold NaN or Inf: {_summarise(nonfinite)}")
    return problems


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], assign: bool = False) -> None:
    """Strict load with one clear line naming missing, unexpected, mis-shaped, mistyped or non-finite tensors.

    Integer bookkeeping buffers the model does not have (`position_ids`, `num_updates`) are dropped:
    real checkpoints carry them, and they hold no weights.
    """
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k not in own and _integer_buffer(k, v)]
    if dropped:
        state = {k: v for k, v in state.items() if k not in dropped}
        log.info("ignored %d integer buffers the model does not use (%s)", len(dropped), _summarise(dropped, 2))
    problems = state_problems(own, state)
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=assign)


def weights_in_our_layout(path: str | Path) -> dict[str, torch.Tensor]:
    """A whole-model weights file (original SD keys or ours) as a state dict in our key layout."""
    state = load_state_dict(path)
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in state):
        state = from_original_keys(state)
    return state
