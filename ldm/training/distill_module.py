"""Lightning wrapper for one stage of guided progressive distillation (the maths: ldm.diffusion.distillation).

The student is the run's model (its U-Net built with `guidance_embed: true`), started as a copy of the teacher;
everything a diffusion run has carries over from `LatentDiffusionModule`: frozen VAE and text encoder with their
caches, caption dropout (a dropped caption teaches the student the teacher's unconditional prediction, which
guidance leaves as it is), EMA of the U-Net, exports. The teacher's U-Net is held outside the module tree: it is
neither trained nor saved in checkpoints (resume rebuilds it from `distill.teacher`), and it shares the
student's frozen VAE and text encoder.

Each example draws its guidance scale w ~ U[lo, hi]; stage "guidance" draws a timestep t ~ U{0, ..., T-1} as in
training, a halving stage of N teacher steps draws one of the student's N/2 steps on the trailing grid.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ldm.core.errors import LdmError
from ldm.diffusion.distillation import guidance_example, guided_prediction, halving_example, halving_grid, weighted_mse
from ldm.diffusion.parameterisation import DiscreteTimeDenoiser, sigma_batch
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.training.ldm_module import LatentDiffusionModule

log = logging.getLogger(__name__)


class DistillationError(LdmError, ValueError):
    """A teacher that cannot teach this student (another schedule, prediction or conditioning)."""


def check_pair(teacher: LatentDiffusion, student: LatentDiffusion) -> None:
    """Refuse, in one line, a teacher whose denoiser means something else than the student's."""
    if not student.guidance_embedded:
        raise DistillationError(
            "the student's U-Net must take the guidance scale: set guidance_embed: true "
            "in the model node's unet_config params"
        )
    if teacher.kind.task != "txt2img" or student.kind.task != "txt2img":
        raise DistillationError("distillation is for text-to-image models (conditioning_key crossattn)")
    if (
        teacher.prediction != student.prediction
        or teacher.alphas_cumprod.shape != student.alphas_cumprod.shape
        or not torch.allclose(teacher.alphas_cumprod, student.alphas_cumprod)
    ):
        raise DistillationError("teacher and student must share the noise schedule and the prediction type")


class DistillationModule(LatentDiffusionModule):
    STEP_SALT = 24680

    def __init__(
        self,
        model: LatentDiffusion,
        teacher_unet: torch.nn.Module,
        stage: str | int = "guidance",
        scale_range: tuple[float, float] = (1.0, 8.0),
        **kwargs: Any,
    ):
        super().__init__(model, **kwargs)
        teacher_unet.requires_grad_(False).eval()
        # A view of the student's model with the teacher's U-Net: shared VAE, text encoder and schedule.
        object.__setattr__(self, "teacher", model.with_unet(teacher_unet))
        self.stage = stage
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.teacher_embedded = bool(getattr(teacher_unet, "guidance_embedded", False))
        if stage == "guidance" and self.teacher_embedded:
            raise DistillationError(
                "stage 'guidance' distils a classifier-free-guided teacher; this teacher already "
                "takes the scale (start from a halving stage)"
            )
        if stage != "guidance":
            self.grid = halving_grid(model.alphas_cumprod, int(stage))
        # One schedule for both denoisers (checked equal by check_pair), built once instead of three times a step;
        # its sigmas stay on the CPU and are moved where used, so the cached object follows any device.
        self.schedule = model.parameterisation()

    def _teacher_to_device(self) -> None:
        unet = self.teacher.unet
        if next(unet.parameters()).device != self.device:
            unet.to(self.device)

    def loss(self, batch: dict, generator: torch.Generator | None = None, drop: bool = True) -> torch.Tensor:
        self._teacher_to_device()
        images = batch["image"].to(self.device)
        x0 = self.latents(images, generator, batch.get("key"))
        captions = list(batch["caption"])
        if drop:
            captions = self.dropped_captions(captions, generator)
        contexts = self.encode_captions(captions + [""])
        cond = {"context": contexts[:-1]}
        uncond = {"context": contexts[-1:].expand_as(cond["context"])}
        n, device = x0.shape[0], (generator.device if generator is not None else x0.device)
        lo, hi = self.scale_range
        scale = (lo + (hi - lo) * torch.rand(n, generator=generator, device=device)).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
        teacher = DiscreteTimeDenoiser(self.teacher.unet, parameterisation=self.schedule)
        if self.stage == "guidance":
            sigmas = self.schedule.sigmas
            t = torch.randint(0, len(sigmas), (n,), generator=generator, device=device).cpu()
            sigma = sigmas[t].to(x0.device)
            x, target = guidance_example(teacher, x0, noise, sigma, scale, cond, uncond)
        else:
            index = torch.randint(0, int(self.stage) // 2, (n,), generator=generator, device=device).cpu()
            x, sigma, target = halving_example(
                teacher, x0, noise, self.grid, index, scale, cond, uncond, self.teacher_embedded
            )
            sigma = sigma.to(x0.device)
        student = DiscreteTimeDenoiser(self._unet_fn, parameterisation=self.schedule)
        prediction = guided_prediction(student, x, sigma_batch(sigma, x), scale, cond, uncond, embedded=True)
        return weighted_mse(prediction, target, sigma)


def is_lora_export(path: Path) -> bool:
    """Whether a weights file is a LoRA run's export (an adapter over a base), as the stages of a LoRA student are."""
    from safetensors import safe_open

    from ldm.adapters.lora import SUFFIXES

    if path.suffix != ".safetensors" or not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        return any(k.endswith(tuple(SUFFIXES)) for k in f.keys())


def load_lora_teacher(weights: Path, config: Path, base: str | None) -> LatentDiffusion:
    """The stage before of a LoRA student: its base (init.checkpoint) with that stage's adapter and whole tensors."""
    from ldm.core.config import instantiate
    from ldm.formats.derived import load_derived_weights
    from ldm.formats.detect import resolve_config

    if not base:
        raise DistillationError(f"the teacher {weights} is a LoRA export: init.checkpoint must name its base model")
    teacher = instantiate(resolve_config(config, None, None)["model"])
    load_derived_weights(teacher, weights, base)
    return teacher.eval()


def build_distillation(cfg: dict, student: LatentDiffusion, module_kwargs: dict[str, Any]) -> DistillationModule:
    """The stage's module: the teacher loaded from `distill.teacher`, the student started as its copy (a new
    guidance embedding, whose last layer is zero, is the one part the teacher lacks)."""
    from ldm.formats.load import load_model

    dist = cfg["distill"]
    weights = Path(dist["teacher"])
    config = Path(dist["teacher_config"]) if dist["teacher_config"] else weights.with_suffix(".yaml")
    teacher = (
        load_lora_teacher(weights, config, cfg["init"].get("checkpoint"))
        if is_lora_export(weights)
        else load_model(config if config.is_file() else None, weights)
    )
    check_pair(teacher, student)
    state = teacher.state_dict()
    if not teacher.guidance_embedded:
        state.update({f"unet.{k}": v for k, v in student.unet.state_dict().items() if k.startswith("guidance_embed.")})
    if not cfg["init"].get("checkpoint"):  # init.checkpoint, when given, was loaded into the student already
        student.load_state_dict(state, strict=True)
        student.vae.scale_factor = teacher.vae.scale_factor
    log.info(
        "distillation stage %s: teacher %s (%s)",
        dist["stage"],
        weights,
        "guidance as an input" if teacher.guidance_embedded else "classifier-free guidance",
    )
    return DistillationModule(
        student, teacher.unet, stage=dist["stage"], scale_range=tuple(dist["scale_range"]), **module_kwargs
    )
