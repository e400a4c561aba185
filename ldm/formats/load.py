"""Loading a model: a config (ours, an original SD YAML, or detected from a checkpoint) and its weights, from one
file, a diffusers folder or a derived model over its base. The model container itself is ldm.models.latent_diffusion;
the formats it reads from are this package's modules, which is why loading lives here, above both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ldm.core import defaults
from ldm.core.config import instantiate
from ldm.core.errors import InvalidOptionError
from ldm.io.checkpoint import sha256_in_background
from ldm.models.latent_diffusion import LatentDiffusion


def load_model(
    config: str | Path | dict | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = defaults.DEVICE,
    prediction: str | None = None,
    dtype: torch.dtype | None = None,
    task: str = "txt2img",
    variant: str | None = None,
    backend: str = defaults.BACKEND,
) -> LatentDiffusion:
    """Build a model from a config (ours or an original SD 1.x or 2.x YAML) and load its weights.

    With neither argument, the small pretrained emoji model shipped in checkpoints/ for `task` is used: the
    text-to-image model, or for "inpaint" the inpainting model derived from it where it is shipped. A checkpoint may be
    a diffusers folder (SD 1.x/2.x text-to-image, SD 2 inpainting or the x4 upscaler), whose config.json files give the config. With a
    checkpoint alone, its family and config are detected (ldm.formats.detect, whose docstring states the rule);
    `prediction` ("eps" or "v") overrides the config's, and SD 2.x 768-v files without metadata need "v".
    variant (text-to-image, neither file given): "student", the few-step student distilled from the shipped model,
    or "full", the shipped model itself; None: the student where it is shipped (ldm.formats.variants). A config's
    `sampling:` section becomes the model's `sampling_defaults` (used where a call leaves options open), its `name:`
    the `model_name` that image metadata records.
    device: "auto" (cuda if available, else cpu), "cpu", "cuda:1", ...; dtype: the networks' weights
    (torch.bfloat16 or torch.float16 halve the memory; the noise schedule stays float32).
    backend: what runs the networks, "torch" or "openvino" (CPU; pip install ".[openvino]"), as
    ldm.backends.openvino_networks.use_backend sets it; images' metadata records it.
    """  # noqa: E501
    from ldm.core.devices import resolve_device
    from ldm.formats.detect import resolve_config
    from ldm.formats.variants import sampling_section, shipped_model_files

    if backend != defaults.BACKEND:
        from ldm.backends.openvino_networks import check_backend

        check_backend(backend)  # an unknown backend or a missing package, before any loading
    if config is None and checkpoint is None:
        config, checkpoint = shipped_model_files(task, variant)
    elif variant is not None:
        raise InvalidOptionError("variant picks a shipped model: give it or a config/checkpoint, not both")
    folder = checkpoint is not None and Path(checkpoint).is_dir()  # a diffusers folder (ldm.formats.diffusers)
    if folder and config is None:
        from ldm.formats.sdxl_diffusers import any_folder_config

        cfg = any_folder_config(checkpoint, prediction)
    else:
        cfg = resolve_config(config, checkpoint, prediction)
    # The model hash for image metadata, computed while the model is built and loaded (GIL released).
    # Only a regular file is hashed: a FIFO would block the thread for ever. Loading the weights below says what a
    # path that is not one is (ldm.core.files.check_regular_file).
    hashable = checkpoint is not None and not folder and Path(checkpoint).is_file()
    model_sha256 = sha256_in_background(checkpoint) if hashable else None
    if checkpoint is not None and not folder:
        # Every parameter comes from the checkpoint, or for a derived model from its base, parts and own file
        # (strictly loaded below either way): skip their random initialisation.
        from ldm.core.skip_init import skipped_init

        with skipped_init():
            model = instantiate(cfg["model"])
    else:
        model = instantiate(cfg["model"])
    if not isinstance(model, LatentDiffusion):
        raise InvalidOptionError("the config's model target is not a latent diffusion model")
    if folder:
        from ldm.formats.diffusers import folder_identity
        from ldm.formats.sdxl_diffusers import load_any_folder_weights

        load_any_folder_weights(model, checkpoint)
        model.identity = {"model_file": Path(checkpoint).name, "model_sha256": folder_identity(checkpoint)}
    elif checkpoint is not None and cfg.get("base"):
        from ldm.formats.derived import base_path, load_derived_weights, part_paths

        # `base:` and `parts:` are relative to the config's folder; a config given as a dict (ldm convert's, or
        # the API's) is taken to lie beside the checkpoint, as a shipped model's YAML does.
        config_path = config if isinstance(config, (str, Path)) else checkpoint
        base = base_path(cfg["base"], config_path)
        load_derived_weights(model, checkpoint, base, part_paths(cfg.get("parts"), config_path))
        model.identity = {"model_file": Path(checkpoint).name, "model_sha256": model_sha256(), "base_file": base.name}
    elif checkpoint is not None:
        model.load_weights(checkpoint)
        model.identity = {"model_file": Path(checkpoint).name, "model_sha256": model_sha256()}
    model.sampling_defaults = sampling_section(cfg)
    model.upscale_defaults = dict(cfg.get("upscale") or {})  # e.g. {back_projection: 10} (ldm.tasks.upscale)
    if cfg.get("name"):
        model.identity["model_name"] = str(cfg["name"])
    model = model.to(resolve_device(device)).eval()
    if dtype is not None:
        model.networks_to(dtype)
    if backend != defaults.BACKEND:
        from ldm.backends.openvino_networks import use_backend

        use_backend(model, backend)
    return model
