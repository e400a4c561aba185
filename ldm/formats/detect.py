"""Which model a single checkpoint file holds, and the config that builds it: `--ckpt FILE` needs no YAML.

The config comes from the first of:

1. the file's own safetensors metadata `ldm_config` (the model node as JSON), which this project's
   exports (`ldm train`, `ldm convert`) carry;
2. a YAML beside the file with the same stem (`model.yaml` for `model.safetensors`): the shipped
   checkpoints/emoji model and earlier exports, and the convention other SD tools use for v-models;
3. the tensor names and shapes, for the original Stable Diffusion families in FAMILIES, each mapped to
   a config shipped in configs/stable-diffusion/.

A family is told by its layout: the kind of text encoder (open_clip's names for SD 2, Hugging Face's
for SD 1), the U-Net's input channels, a class label or not, and the VAE's levels. The widths a file's
shapes state are then read off it rather than assumed (fit_sizes): the U-Net's model channels and
context dim, the VAE's channels and SD 1.x's text tower width and depth. A release file states the
release's sizes, so its config is the shipped one unchanged; a smaller model of the same layout (as
the tests make) builds at its own sizes. Head counts, channel multipliers and block counts stay the
family's, and so does SD 2's open_clip text tower (built from a named architecture): a file that
differs there is refused by the strict load, in one line naming the tensors that do not fit.

A file that matches none is refused with one line that says what was found in it.

The prediction type (eps or v) cannot be read from shapes: SD 2.x-v (768 px) has exactly the tensors
of SD 2.x-base (512 px). For a family found by its shapes it is, in this order:

- the `prediction` argument (`--prediction eps|v`);
- the file's safetensors metadata: `prediction` (eps or v, what `ldm convert --prediction` writes),
  `modelspec.prediction_type` (epsilon or v), or a `modelspec.architecture` ending in `-v`
  (stable-diffusion-v2-768-v);
- the family's default: eps for SD 1.x, SD 1.x and SD 2 inpainting, SD 2.x, SD 2 depth; v for the x4 upscaler
  (its only release).

So an SD 2.x 768-v file without such metadata needs `--prediction v`. Neither `global_step` nor the
file name is ever used. With a config (1, 2, or `--config`), the config's parameterization holds
unless `prediction` is given, which then overrides it.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ldm.core.config import load_config
from ldm.core.defaults import shipped_path
from ldm.core.errors import InvalidOptionError
from ldm.io.checkpoint import CheckpointError, load_state_dict
from ldm.io.sdxl_keys import CONDITIONER as SDXL_TEXT
from ldm.io.sdxl_keys import embedder_layouts, is_sdxl

log = logging.getLogger(__name__)

PREDICTIONS = ("eps", "v")
CONFIG_KEY = "ldm_config"  # safetensors metadata: {"model": node} as JSON
PREDICTION_KEY = "prediction"  # safetensors metadata: eps or v

UNET = "model.diffusion_model."
VAE = "first_stage_model."
OPEN_CLIP = "cond_stage_model.model."  # SD 2.x: open_clip's text tower
HF_CLIP = "cond_stage_model.transformer.text_model."  # SD 1.x: Hugging Face CLIPTextModel (OpenAI ViT-L/14)
GROUPS = (UNET, VAE, OPEN_CLIP, HF_CLIP, "cond_stage_model.", "model_ema.", "low_scale_model.")

CLIP_L_LAYERS = 12  # SD 1.x's text tower (OpenAI CLIP ViT-L/14): 12 layers of width 768


class UnknownModelError(CheckpointError):
    """A checkpoint whose model family cannot be told and which carries no config."""


@dataclass(frozen=True)
class Signature:
    """What a file's tensor names and shapes say about the model it holds."""

    groups: dict[str, int]  # key prefix -> number of tensors
    text: str | None  # "open_clip", "hf_clip", "sdxl:<each tower's layout>" or None
    text_width: int | None
    text_layers: int | None
    in_channels: int | None  # the U-Net's input channels
    model_channels: int | None
    context_dim: int | None  # the width of the cross-attention context
    label: bool  # the U-Net takes a class label (the upscaler's noise level)
    vae_levels: int | None  # 4: the VAE downsamples 8x, 3: 4x
    vae_channels: int | None  # the VAE's first width (128 in every release)

    def describe(self) -> str:
        groups = sorted(self.groups.items(), key=lambda kv: (-kv[1], kv[0]))
        found = ", ".join(f"{name} ({n})" for name, n in groups[:6]) + (" ..." if len(groups) > 6 else "")
        parts = [f"tensors {found or 'none'}"]
        if self.in_channels is None:
            parts.append(f"no U-Net ({UNET}*)")
        else:
            parts.append(f"U-Net input channels {self.in_channels}, model channels {self.model_channels}, "
                         f"context dim {self.context_dim}" + (", class label" if self.label else ""))
        parts.append(f"text encoder {self.text} width {self.text_width}" if self.text else "no text encoder")
        if self.vae_levels is not None:
            parts.append(f"VAE {self.vae_levels} levels")
        return "; ".join(parts)


@dataclass(frozen=True)
class Family:
    """An original Stable Diffusion release: its layout, its release sizes and the configs we ship for it."""

    key: str
    name: str
    text: str
    text_width: int
    in_channels: int
    model_channels: int
    context_dim: int
    label: bool
    vae_levels: int
    configs: dict[str, str]  # prediction -> config file in configs/stable-diffusion/
    default_prediction: str = "eps"

    def matches(self, sig: Signature) -> bool:
        """The same layout; sizes may differ (fit_sizes reads them off the file)."""
        return (sig.text, sig.in_channels, sig.label, sig.vae_levels) == (self.text, self.in_channels, self.label,
                                                                          self.vae_levels)

    def config_name(self, prediction: str) -> str | None:
        """The shipped config for this prediction, else the default prediction's (then overridden)."""
        return self.configs.get(prediction) or self.configs.get(self.default_prediction)


FAMILIES = (
    Family("sd1", "SD 1.x", "hf_clip", 768, 4, 320, 768, False, 4, {"eps": "v1-inference.yaml"}),
    Family("sd1-inpainting", "SD 1.x inpainting", "hf_clip", 768, 9, 320, 768, False, 4,
           {"eps": "v1-inpainting-inference.yaml"}),
    Family("sd2", "SD 2.x", "open_clip", 1024, 4, 320, 1024, False, 4,
           {"eps": "v2-inference.yaml", "v": "v2-inference-v.yaml"}),
    Family("sd2-inpainting", "SD 2 inpainting", "open_clip", 1024, 9, 320, 1024, False, 4,
           {"eps": "v2-inpainting-inference.yaml"}),
    # SD 2 depth (512-depth-ema): SD 2's layout with [latent, depth] in 5; its depth_model.* (MiDaS) is skipped on load
    Family("sd2-depth", "SD 2 depth", "open_clip", 1024, 5, 320, 1024, False, 4, {"eps": "v2-midas-inference.yaml"}),
    Family("x4-upscaler", "SD x4 upscaler", "open_clip", 1024, 7, 256, 1024, True, 3,
           {"v": "x4-upscaling.yaml"}, default_prediction="v"),
    Family("sdxl", "SDXL base", "sdxl:hf_clip,open_clip", 1280, 4, 320, 2048, True, 4, {"eps": "sd_xl_base.yaml"}),
    Family("sdxl-refiner", "SDXL refiner", "sdxl:open_clip", 1280, 4, 384, 1280, True, 4,
           {"eps": "sd_xl_refiner.yaml"}),
)


@dataclass(frozen=True)
class Detection:
    """What a checkpoint file was found to hold, and the config that builds it."""

    family: str  # a Family.key, or "ldm" for a file with its own config
    name: str  # for people: "SD 2.x", "ldm export"
    source: str  # how the config was found: "tensor shapes", "its metadata", "model.yaml beside it"
    prediction: str | None  # eps or v (None: the config's own)
    prediction_source: str
    config: dict[str, Any] | None
    config_name: str
    resized: tuple[str, ...] = ()  # sizes read off the file that differ from the release's

    def summary(self) -> str:
        """One line for the log: what was found and how."""
        if self.family == "ldm":
            return f"config from {self.source}" + (f", prediction {self.prediction} (--prediction)" if self.prediction else "")  # noqa: E501
        sizes = f" at the file's sizes ({', '.join(self.resized)})" if self.resized else ""
        return (f"{self.name} by its {self.source}, config {self.config_name}{sizes}, "
                f"prediction {self.prediction} ({self.prediction_source})")


def sd_config_path(name: str) -> Path:
    """A config shipped in configs/stable-diffusion/ (in the checkout, the wheel, or LDM_HOME)."""
    return shipped_path(f"configs/stable-diffusion/{name}")


def check_prediction(prediction: str | None) -> None:
    if prediction is not None and prediction not in PREDICTIONS:
        raise InvalidOptionError(f"unknown prediction {prediction!r}; use eps or v")


def read_tensor_info(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and safetensors metadata of a checkpoint (a safetensors file's header only; a .ckpt
    is read in full, weights-only, and has no metadata)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
                return shapes, dict(f.metadata() or {})
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors file {path}: {str(exc).splitlines()[0]}") from exc
    return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}, {}


def _group(key: str) -> str:
    for prefix in GROUPS:
        if key.startswith(prefix):
            return prefix
    return key.split(".")[0] + "." if "." in key else "(bare names)"


def signature(shapes: dict[str, tuple[int, ...]]) -> Signature:
    """The features FAMILIES are told apart by, read off tensor names and shapes."""
    groups: dict[str, int] = {}
    for key in shapes:
        groups[_group(key)] = groups.get(_group(key), 0) + 1
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    context = next((s[1] for k, s in shapes.items()
                    if k.startswith(UNET) and k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    text, width, blocks = None, None, "-"
    if (s := shapes.get(OPEN_CLIP + "ln_final.weight")) is not None:
        text, width, blocks = "open_clip", s[0], OPEN_CLIP + "transformer.resblocks."
    elif (s := shapes.get(HF_CLIP + "final_layer_norm.weight")) is not None:
        text, width, blocks = "hf_clip", s[0], HF_CLIP + "encoder.layers."
    elif is_sdxl(shapes):  # SDXL: its text towers' layouts, the width of the last (ldm.io.sdxl_keys)
        text = "sdxl:" + ",".join(embedder_layouts(shapes))
        widths = [s[0] for k, s in sorted(shapes.items())
                  if k.startswith(SDXL_TEXT) and k.endswith(("ln_final.weight", "final_layer_norm.weight"))]
        width = widths[-1] if widths else None
    layers = {k[len(blocks):].split(".")[0] for k in shapes if k.startswith(blocks)}
    levels = {k[len(VAE + "encoder.down."):].split(".")[0] for k in shapes if k.startswith(VAE + "encoder.down.")}
    vae_in = shapes.get(VAE + "encoder.conv_in.weight")
    return Signature(
        groups=groups, text=text, text_width=width, text_layers=len(layers) or None,
        in_channels=conv_in[1] if conv_in is not None and len(conv_in) == 4 else None,
        model_channels=conv_in[0] if conv_in is not None else None,
        context_dim=context, label=any(k.startswith(UNET + "label_emb.") for k in shapes),
        vae_levels=len(levels) or None, vae_channels=vae_in[0] if vae_in is not None else None,
    )


def metadata_prediction(metadata: dict[str, str]) -> tuple[str, str] | None:
    """(eps or v, the metadata key it came from), or None when the metadata does not say."""
    values = {"eps": "eps", "epsilon": "eps", "v": "v"}
    for key in (PREDICTION_KEY, "modelspec.prediction_type"):
        if key in metadata:
            value = str(metadata[key]).strip().lower()
            if value not in values:
                raise CheckpointError(f"metadata {key}={metadata[key]!r} is neither eps (epsilon) nor v")
            return values[value], f"metadata {key}"
    if str(metadata.get("modelspec.architecture", "")).endswith("-v"):
        return "v", "metadata modelspec.architecture"
    return None


def with_prediction(cfg: dict[str, Any], prediction: str | None) -> dict[str, Any]:
    """A copy of the config with its parameterization set to `prediction` (None: unchanged)."""
    cfg = copy.deepcopy(cfg)
    if prediction is not None:
        cfg["model"].setdefault("params", {})["parameterization"] = prediction
    return cfg


def fit_sizes(cfg: dict[str, Any], family: Family, sig: Signature) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A copy of the family's config at the widths the file states (the module docstring says which), and
    those that differ from the config's, for the log."""
    cfg = copy.deepcopy(cfg)
    params = cfg["model"]["params"]
    changed: list[str] = []

    def put(node: dict[str, Any], key: str, value: int | None, release: int | None, what: str) -> None:
        if value is not None and value != node.get(key, release):
            node[key] = value
            changed.append(f"{what} {value}")

    unet, vae = params["unet_config"]["params"], params["first_stage_config"]["params"]["ddconfig"]
    put(unet, "model_channels", sig.model_channels, None, "model channels")
    put(unet, "context_dim", sig.context_dim, None, "context dim")
    put(vae, "ch", sig.vae_channels, None, "VAE channels")
    if family.text == "hf_clip":
        text = dict(params["cond_stage_config"].get("params") or {})
        put(text, "width", sig.text_width, family.text_width, "text width")
        put(text, "layers", sig.text_layers, CLIP_L_LAYERS, "text layers")
        if text:
            params["cond_stage_config"]["params"] = text
    return cfg, tuple(changed)


def _own_config(metadata: dict[str, str], sidecar: Path | None) -> tuple[dict[str, Any], str, str] | None:
    """(config, where it was found, its name) from the file's metadata or the YAML beside it, or None."""
    if CONFIG_KEY in metadata:
        try:
            cfg = json.loads(metadata[CONFIG_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"metadata {CONFIG_KEY} is not valid JSON: {exc}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
            raise CheckpointError(f"metadata {CONFIG_KEY} has no 'model' node")
        return cfg, "its metadata", CONFIG_KEY
    if sidecar is not None and sidecar.is_file():
        return load_config(sidecar), f"{sidecar.name} beside it", str(sidecar)
    return None


def detect(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None,
           prediction: str | None = None, sidecar: Path | None = None, name: str = "the checkpoint") -> Detection:
    """The model a checkpoint holds and its config, by the rule in this module's docstring.

    `shapes` maps tensor names to shapes; `sidecar` is the YAML that would sit beside the file.
    Raises UnknownModelError (one line, naming what was found) when nothing matches.
    """
    check_prediction(prediction)
    metadata = metadata or {}
    own = _own_config(metadata, sidecar)
    if own is not None:
        cfg, source, config_name = own
        how = "--prediction" if prediction else "the config"
        return Detection("ldm", "ldm export", source, prediction, how, with_prediction(cfg, prediction), config_name)
    sig = signature(shapes)
    family = next((f for f in FAMILIES if f.matches(sig)), None)
    if family is None:
        beside = f", nor beside it ({sidecar.name})" if sidecar is not None else ""
        raise UnknownModelError(f"{name} matches no known model family ({sig.describe()}), and no config is in its "
                                f"metadata{beside}: give its YAML with --config")
    if prediction is not None:
        how = "--prediction"
    elif (found := metadata_prediction(metadata)) is not None:
        prediction, how = found
    else:
        prediction, how = family.default_prediction, "the default"
        if family.key == "sd2":
            how += "; SD 2.x 768-v files need --prediction v or metadata saying so"
    config_name = family.config_name(prediction)
    assert config_name is not None  # every family ships a config for its default prediction
    cfg, resized = fit_sizes(with_prediction(load_config(sd_config_path(config_name)), prediction), family, sig)
    return Detection(family.key, family.name, "tensor shapes", prediction, how, cfg, config_name, resized)


def detect_file(path: str | Path, prediction: str | None = None) -> Detection:
    """detect() for a checkpoint file: its tensor shapes, its metadata and the `<stem>.yaml` beside it."""
    path = Path(path)
    check_prediction(prediction)
    shapes, metadata = read_tensor_info(path)
    try:
        return detect(shapes, metadata, prediction, sidecar=path.with_suffix(".yaml"), name=str(path))
    except CheckpointError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise type(exc)(f"{path}: {exc}") from None


def resolve_config(config: str | Path | dict | None, checkpoint: str | Path | None,
                   prediction: str | None = None) -> dict[str, Any]:
    """The config that builds the model: `config` as given (prediction overriding its parameterization),
    or, without one, the one the checkpoint's detection finds (a one-line error when none)."""
    check_prediction(prediction)
    if config is not None:
        return with_prediction(config if isinstance(config, dict) else load_config(config), prediction)
    if checkpoint is None:
        raise InvalidOptionError("give a checkpoint, a config, or both")
    found = detect_file(checkpoint, prediction)
    log.info("%s: %s", Path(checkpoint).name, found.summary())
    assert found.config is not None
    return found.config
