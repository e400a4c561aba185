"""What a task returns: its images as `Generated`, and `Settings`, the one record of what ran.

Every task builds its record with `settings_of`; the CLI, the app and the server write `settings.image(i)` into image
i's PNG as it is, so the settings the Python API returns are the ones an image carries (and `--from-png` reads).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from PIL import Image

from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions
from ldm.sampling.options import SamplingOptions, ddim_variant_of, sampler_eta
from ldm.sampling.precision import Precision
from ldm.tasks.base import for_model


class Settings(dict):
    """What a task ran with, the one record of it: `Generated.settings`, and what the CLI and the app write into
    each image's PNG (`image(i)`), so the settings the API returns are the ones an image carries.

    As a dict, the batch's: the task, the prompt and negative prompt (one string when every image has the same,
    else one per image), the seed (image 0's), the size, the sampling options as they ran (eta as the sampler used
    it, DDIM's variant as chosen), the sampler's own options, the model's identity (its file and SHA-256, see
    ldm.formats.load.load_model) and the task's own inputs.
    """

    def __init__(self, settings: dict[str, Any], prompts: list[str] | None = None, negatives: list[str] | None = None):
        super().__init__(settings)
        self.prompts, self.negatives = list(prompts or []), list(negatives or [])

    def image(self, i: int) -> dict[str, Any]:
        """Image i's settings, which make it again alone: its own prompt and negative prompt, its seed (seed + i)."""
        own = dict(self)
        if self.prompts:
            own["prompt"], own["negative_prompt"] = self.prompts[i], self.negatives[i]
        if isinstance(own.get("seed"), int):
            own["seed"] += i
        return own


def settings_of(
    task: str,
    options: SamplingOptions,
    model: LatentDiffusion | None = None,
    prompts: list[str] | None = None,
    negatives: list[str] | None = None,
    precision: str | Precision = "fp32",
    *,
    prompting: PromptOptions | None = None,
    **more: Any,
) -> Settings:
    """The one record of what a task ran (`Settings`): its name, its prompts, the options resolved for `model`,
    the precision, how the prompts were read (`prompting`; by default the plain syntax), the sampler's own options,
    the model's identity, and the task's own inputs (`more`: seed, height, width, ...)."""
    if model is not None:
        options = for_model(options, model)
    opts = asdict(options)
    extra = opts.pop("extra")
    opts["eta"] = sampler_eta(options)
    opts["ddim_variant"] = ddim_variant_of(options)
    opts["precision"] = Precision.of(precision).name
    said: dict[str, Any] = {}
    if prompts is not None:
        negatives = list(negatives if negatives is not None else [""] * len(prompts))
        said["prompt"] = prompts[0] if len(set(prompts)) == 1 else list(prompts)
        said["negative_prompt"] = negatives[0] if len(set(negatives)) == 1 else list(negatives)
    identity = dict(getattr(model, "identity", None) or {})
    reading = (prompting or PromptOptions()).record()
    return Settings({"task": task, **said, **opts, **reading, **extra, **identity, **more}, prompts, negatives)


class Generated(list):
    """A task's images (a plain list of PIL images) with `settings`, what the task ran with (`Settings`; image i's
    own, as its PNG carries them: `settings.image(i)`)."""

    def __init__(self, images: list[Image.Image], settings: Settings):
        super().__init__(images)
        self.settings = settings

    @property
    def images(self) -> list[Image.Image]:
        """The images as a plain list, as diffusers' pipelines return them (`result.images[0]`)."""
        return list(self)
