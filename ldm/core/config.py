"""YAML configs -> modules, for our configs and the original SD 1.x and 2.x inference YAMLs alike.

A config node is `{target: <name>, params: {...}}`. Targets are looked up in a fixed
table, never imported by name, so a config cannot run arbitrary code; the original
repository's class names map onto ours.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml

from ldm.core.errors import LdmError
from ldm.core.files import check_regular_file


class ConfigError(LdmError, ValueError):
    pass


class UnknownTargetError(ConfigError):
    pass


_OURS = {
    "ldm.models.latent_diffusion.LatentDiffusion": "ldm.models.latent_diffusion:LatentDiffusion",
    "ldm.models.unet.UNetModel": "ldm.models.unet:UNetModel",
    "ldm.models.vae.AutoencoderKL": "ldm.models.vae:AutoencoderKL",
    "ldm.models.text_encoder.FrozenOpenCLIPEmbedder": "ldm.models.text_encoder:FrozenOpenCLIPEmbedder",
    "ldm.models.text_encoder.FrozenCLIPEmbedder": "ldm.models.text_encoder:FrozenCLIPEmbedder",
    "ldm.models.text_encoder.OpenCLIP": "ldm.models.text_encoder:open_clip_model",
    "ldm.models.conditioning.LowResNoiseAugmentation": "ldm.models.conditioning:LowResNoiseAugmentation",
    "ldm.models.sdxl_text.SDXLTextEncoders": "ldm.models.sdxl_text:SDXLTextEncoders",
}
_ORIGINAL = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "ldm.models.latent_diffusion:LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "ldm.models.latent_diffusion:LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": "ldm.models.latent_diffusion:LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion": "ldm.models.latent_diffusion:LatentDiffusion",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "ldm.models.unet:UNetModel",
    "ldm.models.autoencoder.AutoencoderKL": "ldm.models.vae:AutoencoderKL",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "ldm.models.text_encoder:FrozenOpenCLIPEmbedder",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": "ldm.models.text_encoder:FrozenCLIPEmbedder",
    "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation": "ldm.models.conditioning:LowResNoiseAugmentation",  # noqa: E501
}
# The reference repository's "linear" schedule is linear in sqrt(beta), which we call scaled_linear.
_ORIGINAL_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
# Nodes the original YAMLs carry that only matter to training code we do not mirror.
_SKIPPED = {"torch.nn.Identity"}
# Parameters the original SD YAMLs (configs/stable-diffusion) pass that only the reference's training code
# reads: dropped for those targets, so every constructor here can refuse a parameter it does not know.
_DDPM_TRAINING_ONLY = (
    "channels",
    "cond_stage_key",
    "cond_stage_trainable",
    "finetune_keys",
    "first_stage_key",
    "log_every_t",
    "low_scale_key",
    "monitor",
    "num_timesteps_cond",
    "use_ema",
)
_ORIGINAL_TRAINING_ONLY = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": _DDPM_TRAINING_ONLY,
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": _DDPM_TRAINING_ONLY,
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": _DDPM_TRAINING_ONLY,
    # SD 2 depth: its MiDaS estimator (depth_stage_config) is not built; depth maps are given (ldm.tasks.depth).
    "ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion": (*_DDPM_TRAINING_ONLY, "depth_stage_config"),
    "ldm.models.autoencoder.AutoencoderKL": ("lossconfig", "monitor"),
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": ("device",),
}
# The original FrozenOpenCLIPEmbedder(arch, version, device, max_length, freeze, layer): `version` names the
# pretrained weights open_clip would download and `device` where they go; here the weights come from the checkpoint
# and the model's device from load_model, so both are read and ignored. Its `layer` defaults to "last" (ours, under
# our own target name, to SD 2's "penultimate"): a YAML that leaves it out gets what the original code gives it.
ORIGINAL_OPEN_CLIP = "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"
ORIGINAL_OPEN_CLIP_LAYER = "last"
# The one text encoder the original FrozenCLIPEmbedder was used with (a Hugging Face model name there;
# here the tower is built from its sizes, and its weights come from the checkpoint).
SD1_CLIP_VERSION = "openai/clip-vit-large-patch14"


# Target names are a file format: checkpoints' YAMLs, exported files' metadata and every run's config.yaml
# name classes by module path. The modules moved into subpackages (issue 37); names written before that
# keep loading through this table of old module -> new module (new files are written with the new names).
# rewrite: off
MOVED_MODULES = {
    "ldm.app": "ldm.interfaces.app",
    "ldm.attention": "ldm.models.attention",
    "ldm.checkpoint": "ldm.io.checkpoint",
    "ldm.classifier_guidance": "ldm.sampling.classifier_guidance",
    "ldm.cli": "ldm.interfaces.cli.main",
    "ldm.clip": "ldm.models.clip",
    "ldm.commands": "ldm.interfaces.cli",
    "ldm.conditioning": "ldm.models.conditioning",
    "ldm.config": "ldm.core.config",
    "ldm.convert": "ldm.formats.convert",
    "ldm.defaults": "ldm.core.defaults",
    "ldm.degradations": "ldm.data.degradations",
    "ldm.denoisers": "ldm.sampling.denoisers",
    "ldm.derived": "ldm.formats.derived",
    "ldm.devices": "ldm.core.devices",
    "ldm.diffusers_export": "ldm.formats.diffusers_export",
    "ldm.diffusers_files": "ldm.io.diffusers_files",
    "ldm.diffusers_format": "ldm.formats.diffusers",
    "ldm.diffusers_keys": "ldm.io.diffusers_keys",
    "ldm.diffusion": "ldm.diffusion.parameterisation",
    "ldm.distillation": "ldm.diffusion.distillation",
    "ldm.editing": "ldm.tasks.editing",
    "ldm.embeddings": "ldm.adapters.embeddings",
    "ldm.errors": "ldm.core.errors",
    "ldm.evaluate": "ldm.evaluation.report",
    "ldm.evaluate_edits": "ldm.evaluation.edits",
    "ldm.evaluate_likelihood": "ldm.evaluation.likelihood",
    "ldm.evaluate_prompts": "ldm.evaluation.prompts",
    "ldm.formats": "ldm.formats.detect",
    "ldm.hf_clip": "ldm.io.hf_clip",
    "ldm.images": "ldm.io.images",
    "ldm.img2img": "ldm.tasks.img2img",
    "ldm.infotext": "ldm.io.infotext",
    "ldm.inpaint": "ldm.tasks.inpaint",
    "ldm.likelihood": "ldm.diffusion.likelihood",
    "ldm.limits": "ldm.core.limits",
    "ldm.long_prompts": "ldm.models.long_prompts",
    "ldm.lora": "ldm.adapters.lora",
    "ldm.lora_kohya": "ldm.adapters.kohya",
    "ldm.lora_layers": "ldm.adapters.lora_layers",
    "ldm.lora_merge": "ldm.formats.merge_lora",
    "ldm.masks": "ldm.core.masks",
    "ldm.metrics": "ldm.evaluation.metrics",
    "ldm.model": "ldm.models.latent_diffusion",
    "ldm.open_clip_parts": "ldm.models.open_clip_parts",
    "ldm.pipeline": "ldm.tasks.txt2img",
    "ldm.samplers": "ldm.sampling.samplers",
    "ldm.sampling": "ldm.sampling.options",
    "ldm.schedules": "ldm.diffusion.schedules",
    "ldm.skip_init": "ldm.core.skip_init",
    "ldm.tasks": "ldm.tasks.base",
    "ldm.text_encoder": "ldm.models.text_encoder",
    "ldm.tiling": "ldm.models.tiling",
    "ldm.toy2d": "ldm.toys.points",
    "ldm.toy_classes": "ldm.toys.classes",
    "ldm.toy_compare": "ldm.toys.compare",
    "ldm.toy_files": "ldm.toys.files",
    "ldm.toy_vdm": "ldm.toys.vdm",
    "ldm.unet": "ldm.models.unet",
    "ldm.upscale": "ldm.tasks.upscale",
    "ldm.vae": "ldm.models.vae",
    "ldm.variance_sampler": "ldm.sampling.variance_sampler",
    "ldm.variants": "ldm.formats.variants",
    "ldm.vdm": "ldm.diffusion.vdm",
    "ldm.walk": "ldm.tasks.walk",
}
# rewrite: on
# Old modules whose name a new subpackage took over (the module `diffusion` of ldm is now its package): a name
# below such a package that is one of its modules is already new.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _is_submodule(package: str, name: str) -> bool:
    folder = _PACKAGE_DIR.joinpath(*package.split(".")[1:])
    return (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()


def canonical_target(target: str) -> str:
    """A target name in the spelling of today's modules, through MOVED_MODULES (a name already current is returned as it is)."""  # noqa: E501
    parts = target.split(".")
    for n in range(len(parts) - 1, 1, -1):  # the longest moved prefix: a module, or a package that moved whole
        module = ".".join(parts[:n])
        if module in MOVED_MODULES and not _is_submodule(module, parts[n]):
            return ".".join([MOVED_MODULES[module], *parts[n:]])
    return target


def closest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """ "; did you mean 'x'?" for the nearest known name, or "" when none is near."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_parameters(where: str, given: dict[str, Any], known: list[str] | tuple[str, ...]) -> None:
    """Refuse a parameter `known` lacks, naming it and the closest known one."""
    for key in given:
        if key not in known:
            raise ConfigError(f"bad parameters for {where}: unknown parameter {key!r}{closest(key, known)}")


def load_config(path: str | Path) -> dict:
    path = check_regular_file(path, "config", ConfigError)
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ConfigError(f"{path} has no top-level 'model' section")
    return cfg


def target_class(target: str) -> Any:
    """The class (or factory) a config target names, ours or the original repository's."""
    spec = _OURS.get(canonical_target(target)) or _ORIGINAL.get(target)
    if spec is None:
        known = ", ".join(sorted(_OURS))
        raise UnknownTargetError(
            f"unknown config target {target!r}; known: {known} (and the original SD 1.x and 2.x class names)"
        )
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def translate_original(target: str, params: dict) -> dict:
    """Original-repository parameters that mean something else in ours."""
    params = {k: v for k, v in params.items() if k not in _ORIGINAL_TRAINING_ONLY.get(target, ())}
    if target.startswith("ldm.models.diffusion.ddpm."):
        params["beta_schedule"] = _ORIGINAL_SCHEDULES[params.get("beta_schedule", "linear")]
        params.setdefault("parameterization", "eps")
        # An original SD model's users expect the original DDIMSampler's images (ldm.sampling.options: DDIM variants).
        params.setdefault("ddim_variant", "sd")
    if target.endswith("LatentDepth2ImageDiffusion"):
        # The reference's class is what says depth: its U-Net's "hybrid" input is [latent, depth], not inpainting's.
        params["conditioning_key"] = "depth"
    if target == "ldm.modules.encoders.modules.FrozenCLIPEmbedder":
        version = params.pop("version", SD1_CLIP_VERSION)
        if version != SD1_CLIP_VERSION:
            raise ConfigError(f"FrozenCLIPEmbedder version {version!r}: only {SD1_CLIP_VERSION} (SD 1.x's) is known")
    if target == ORIGINAL_OPEN_CLIP:
        params = {k: v for k, v in params.items() if k not in ("version", "device")}
        params.setdefault("layer", ORIGINAL_OPEN_CLIP_LAYER)
    if target.endswith("ImageConcatWithNoiseAugmentation"):
        sched = dict(params.pop("noise_schedule_config", {}))
        sched["beta_schedule"] = _ORIGINAL_SCHEDULES[sched.get("beta_schedule", "linear")]
        params.update(sched)
    return params


def instantiate(node: dict[str, Any] | None, **overrides: Any) -> Any:
    """Build the module a config node describes; nested `*_config` nodes are built by the parent."""
    if node is None:
        return None
    if not isinstance(node, dict) or "target" not in node:
        raise ConfigError(f"config node has no 'target': {node!r}")
    target = canonical_target(node["target"])  # an old name (written before issue 37's move) as today's
    if target in _SKIPPED:
        return None
    cls = target_class(target)
    params = dict(node.get("params") or {})
    if target in _ORIGINAL:
        params = translate_original(target, params)
    params.update(overrides)
    signature = inspect.signature(cls)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        check_parameters(target, params, [k for k, p in signature.parameters.items() if p.kind is not p.VAR_POSITIONAL])
    try:
        return cls(**params)
    except LdmError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        # A misspelt or mistyped parameter in the YAML surfaces here (an unexpected keyword, a channel
        # count GroupNorm cannot split, a negative size torch cannot make a tensor of): name the node,
        # so the user knows which part of the file to fix.
        raise ConfigError(
            f"bad parameters for {target}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def model_from_config(cfg: dict | str | Path) -> Any:
    if not isinstance(cfg, dict):
        cfg = load_config(cfg)
    return instantiate(cfg["model"])
