"""Which model the app uses: chosen on the `ldm app` command line, passed to the Streamlit process
as environment variables (Streamlit owns the script's argv), loaded here.

No Streamlit import here, so `ldm app` can read the names without Streamlit installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ldm.core.errors import LdmError

if TYPE_CHECKING:  # torch and the model load only when a model is asked for
    from ldm.models.latent_diffusion import LatentDiffusion

ENV_CONFIG = "LDM_APP_CONFIG"
ENV_CKPT = "LDM_APP_CKPT"
ENV_DEVICE = "LDM_APP_DEVICE"
ENV_UPSCALER_CONFIG = "LDM_APP_UPSCALER_CONFIG"
ENV_UPSCALER_CKPT = "LDM_APP_UPSCALER_CKPT"


class ModelMissingError(LdmError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class ModelSource:
    config: str | None = None
    ckpt: str | None = None
    device: str = "auto"
    upscaler_config: str | None = None
    upscaler_ckpt: str | None = None

    @property
    def upscaler_files(self) -> tuple[str, str] | None:
        """(config, weights) of the Edit page's upscaler: the ones given, else the shipped one (it upscales any
        image, so it does not depend on the main model), else None."""
        if self.upscaler_config and self.upscaler_ckpt:
            return self.upscaler_config, self.upscaler_ckpt
        from ldm.core.defaults import default_model_files

        files = default_model_files("upscale")
        return (str(files[0]), str(files[1])) if files else None

    @property
    def has_upscaler(self) -> bool:
        return self.upscaler_files is not None

    def describe(self) -> str:
        if self.config is None:
            return "the shipped emoji model"
        return Path(self.config).name + (f" + {Path(self.ckpt).name}" if self.ckpt else " (random weights)")


def source_from_env(env: Mapping[str, str] | None = None) -> ModelSource:
    env = os.environ if env is None else env
    return ModelSource(
        config=env.get(ENV_CONFIG) or None,
        ckpt=env.get(ENV_CKPT) or None,
        device=env.get(ENV_DEVICE) or "auto",
        upscaler_config=env.get(ENV_UPSCALER_CONFIG) or None,
        upscaler_ckpt=env.get(ENV_UPSCALER_CKPT) or None,
    )


def student_choice(source: ModelSource) -> str | None:
    """The text-to-image page's label of the shipped student ("fast (4-step student)") when the app runs the shipped
    model and the student is shipped beside it (ldm.formats.variants); None otherwise."""
    from ldm.formats.variants import config_sampling, student_files

    files = student_files()
    if source.config is not None or source.ckpt is not None or files is None:
        return None
    steps = config_sampling(files[0]).get("steps")
    return f"fast ({steps}-step student)" if steps else "fast (student)"


FULL_CHOICE = "full model"


def load_main_model(
    config: str | None, ckpt: str | None, device: str = "auto", variant: str = "full"
) -> LatentDiffusion:
    """The model for text-to-image, editing and walks; a clear error when the shipped one is absent. variant: of the
    shipped model (ldm.formats.variants), "full" or "student" (the text-to-image page's choice)."""
    from ldm.core.defaults import default_checkpoint_path, default_config_path
    from ldm.core.devices import resolve_device
    from ldm.formats.load import load_model

    if config is None:
        cfg, weights = default_config_path(), default_checkpoint_path()
        if not (cfg.is_file() and weights.is_file()):
            raise ModelMissingError(
                f"the shipped emoji model is not there ({cfg.parent}); "
                "start the app with `ldm app --config MODEL.yaml --ckpt MODEL.safetensors`"
            )
    shipped = config is None and ckpt is None
    return load_model(config, ckpt, resolve_device(device), variant=variant if shipped else None)


def load_upscaler(config: str, ckpt: str, device: str = "auto") -> LatentDiffusion:
    from ldm.core.devices import resolve_device
    from ldm.formats.load import load_model
    from ldm.tasks.upscale import check_upscaler

    model = load_model(config, ckpt, resolve_device(device))
    check_upscaler(model)
    return model


def load_inpainter(source: ModelSource) -> LatentDiffusion | None:
    """The shipped inpainting model when the app runs the shipped text-to-image model (it is derived from that
    one); None otherwise, and the edit page blends with the app's own model instead."""
    from ldm.core.defaults import default_model_files
    from ldm.core.devices import resolve_device
    from ldm.formats.load import load_model

    files = default_model_files("inpaint")
    if source.config is not None or source.ckpt is not None or files is None:
        return None
    return load_model(*files, device=resolve_device(source.device))
