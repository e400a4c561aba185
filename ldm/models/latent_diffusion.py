"""The latent diffusion model: a container of U-Net, autoencoder, text encoder and schedule.

It holds plain modules and the noise schedule, and offers the few operations every task
needs (encode text, encode/decode images, a denoiser for the samplers). Sampling loops
live in ldm.sampling.samplers, task logic in ldm.tasks.txt2img; training wraps this in Lightning.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.core import defaults
from ldm.core.config import instantiate
from ldm.core.errors import InvalidOptionError
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas
from ldm.io.checkpoint import (
    OPEN_CLIP_LAYOUT,
    CheckpointError,
    file_sha256,
    load_into,
    load_state_dict,
    state_problems,
    to_original_keys,
    weights_in_our_layout,
)
from ldm.io.diffusers_keys import from_diffusers, vae_names
from ldm.models.vae_precision import decode_safely, overflows_in_fp16

log = logging.getLogger(__name__)
# Entries of VAE files that are no weights of the autoencoder: its training loss (LPIPS, discriminator), EMA copies.
VAE_FILE_IGNORED = ("loss.", "model_ema.")


@dataclass(frozen=True)
class ConditioningKind:
    """What a `conditioning_key` means: the one place its strings are read.

    concat: the U-Net takes extra input channels beside the noisy latent (inpainting: mask + masked latent;
    upscaler: the low-res image; SD 2 depth: the depth map); label: it takes a noise-level label `y`; tasks: what it
    can drive; diffusers: the diffusers pipeline class of its folders (ldm.formats.diffusers,
    ldm.formats.diffusers_export), "" where there is none here;
    diffusers_xl: that of its SDXL folders, "" where SDXL has none (ldm.formats.sdxl_diffusers).
    """

    key: str
    name: str
    concat: bool
    label: bool
    tasks: tuple[str, ...]
    diffusers: str
    diffusers_xl: str = ""

    @property
    def task(self) -> str:
        """The task the kind is made for, which its training teaches (the first of `tasks`)."""
        return self.tasks[0]


CONDITIONING = {
    kind.key: kind
    for kind in (
        ConditioningKind(
            "crossattn",
            "text-to-image",
            concat=False,
            label=False,
            tasks=("txt2img", "img2img", "inpaint", "walk"),
            diffusers="StableDiffusionPipeline",
            diffusers_xl="StableDiffusionXLPipeline",
        ),
        ConditioningKind(
            "hybrid",
            "inpainting",
            concat=True,
            label=False,
            tasks=("inpaint",),
            diffusers="StableDiffusionInpaintPipeline",
            diffusers_xl="StableDiffusionXLInpaintPipeline",
        ),
        ConditioningKind(
            "hybrid-adm",
            "x4 upscaler",
            concat=True,
            label=True,
            tasks=("upscale",),
            diffusers="StableDiffusionUpscalePipeline",
        ),
        ConditioningKind(  # SD 2 depth: [latent, depth map at latent size in [-1, 1]] (ldm.tasks.depth)
            "depth",
            "depth-to-image",
            concat=True,
            label=False,
            tasks=("img2img",),
            diffusers="",  # no diffusers folder here: ldm convert refuses it in one line
        ),
    )
}
CONDITIONING_KINDS = tuple(CONDITIONING)


class UnknownLabelError(InvalidOptionError):
    """A class label the model was not trained on."""


class LatentDiffusion(nn.Module):
    def __init__(
        self,
        unet_config: dict,
        first_stage_config: dict,
        cond_stage_config: dict,
        timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        cosine_s: float = 8e-3,
        parameterization: str = "eps",
        scale_factor: float = 0.18215,
        conditioning_key: str = "crossattn",
        low_scale_config: dict | None = None,
        image_size: int = 64,
        ddim_variant: str = "k",
        learned_variance: bool = False,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        # What a loaded model carries beside its networks, filled in by ldm.formats.load.load_model and empty for
        # a model built from a config alone: which files it is (image metadata records them: model_file,
        # model_sha256, model_name, base_file, vae_file, ...), its config's own `sampling:` defaults (used where
        # a call leaves an option open) and its `upscale:` defaults (e.g. back_projection).
        self.identity: dict[str, str] = {}
        self.sampling_defaults: dict[str, Any] = {}
        self.upscale_defaults: dict[str, Any] = {}
        if parameterization not in ("eps", "v"):
            raise InvalidOptionError(f"unknown parameterization {parameterization!r}; known: eps, v")
        if ddim_variant not in defaults.DDIM_VARIANTS:
            raise InvalidOptionError(
                f"unknown ddim_variant {ddim_variant!r}; known: {', '.join(defaults.DDIM_VARIANTS)}"
            )  # noqa: E501
        if conditioning_key not in CONDITIONING_KINDS:
            raise InvalidOptionError(
                f"unknown conditioning_key {conditioning_key!r}; known: {', '.join(CONDITIONING_KINDS)}"
            )  # noqa: E501
        self.unet = instantiate(unet_config)
        self.vae = instantiate(first_stage_config)
        # Improved DDPM's learned reverse variance (ADM's learn_sigma): the U-Net's out_channels are twice the
        # latent's, [eps, raw v]; trained on L_hybrid and read by ldm.diffusion.likelihood.LearnedVarianceParameterisation.  # noqa: E501
        self.learned_variance = bool(learned_variance)
        if self.learned_variance:
            if parameterization != "eps":
                raise InvalidOptionError("learned_variance needs parameterization eps")
            if getattr(self.unet, "out_channels", None) != 2 * self.vae.embed_dim:
                raise InvalidOptionError(
                    f"learned_variance needs the U-Net's out_channels = 2 x {self.vae.embed_dim} "
                    f"latent channels ([eps, v]), got {getattr(self.unet, 'out_channels', None)}"
                )
        # None (cond_stage_config: null) for a label-only model: its U-Net has no cross-attention context.
        self.text_encoder = instantiate(cond_stage_config)
        # The upscaler's noise augmentation of the low-res image; schedule only, no weights.
        self.low_scale = instantiate(low_scale_config)
        self.vae.scale_factor = scale_factor
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.prediction = parameterization
        self.image_size = image_size  # the latent size it was trained at (64 -> 512 px for SD 2-base)
        self.conditioning_key = conditioning_key
        # The DDIM its images are made with unless the options say otherwise (ldm.sampling.options): "sd" for models
        # built from the original SD configs (ldm.core.config sets it), whose users expect the original sampler's
        # images; "k" for this project's own, whose earlier images (golden tests, PNG metadata) were made so.
        self.ddim_variant = ddim_variant
        # Class-conditional models (ldm.training.label_module): the U-Net's label embedding has one row per name
        # and a last one, the null label, which label dropout teaches and guidance's unconditional side uses.
        self.class_names = [str(name) for name in class_names] if class_names else None
        if self.class_names is not None:
            rows = getattr(self.unet, "num_classes", None)
            if rows != len(self.class_names) + 1 or len(set(self.class_names)) != len(self.class_names):
                raise InvalidOptionError(
                    f"{len(self.class_names)} distinct class_names need a U-Net with num_classes: "
                    f"{len(self.class_names) + 1} (the last is the null label), got {rows!r}"
                )
        self.schedule = dict(
            kind=beta_schedule,
            num_timesteps=timesteps,
            linear_start=linear_start,
            linear_end=linear_end,
            cosine_s=cosine_s,
        )
        # Derived from the config, so not saved: original checkpoints' copies are ignored on load.
        self.register_buffer("alphas_cumprod", self._schedule_alphas_cumprod(), persistent=False)

    def _schedule_alphas_cumprod(self) -> torch.Tensor:
        s = self.schedule
        betas = make_betas(
            s["kind"],
            s["num_timesteps"],
            linear_start=s["linear_start"],
            linear_end=s["linear_end"],
            cosine_s=s["cosine_s"],
        )
        return alphas_cumprod_from_betas(betas).float()

    def _apply(self, fn, recurse: bool = True):
        # Casting the weights (model.to(torch.bfloat16), .half()) casts floating buffers too, and in bf16 the
        # schedule's alphas_cumprod near 1 round to 1 (sigma 0 for the first timesteps): it is maths, not
        # weights, so it stays float32 (recomputed from the config).
        super()._apply(fn, recurse)
        if self.alphas_cumprod.dtype != torch.float32:
            self.alphas_cumprod = self._schedule_alphas_cumprod().to(self.alphas_cumprod.device)
        return self

    @property
    def kind(self) -> ConditioningKind:
        return CONDITIONING[self.conditioning_key]

    @property
    def null_class(self) -> int | None:
        """The label index meaning "no label" (the last row of the U-Net's label embedding), or None."""
        return len(self.class_names) if self.class_names is not None else None

    def class_labels(self, labels: list[str | None]) -> torch.Tensor:
        """Label names (None: no label) -> the U-Net's `y`, their indices in class_names (None -> the null label)."""
        names = self.class_names or []
        unknown = [label for label in labels if label is not None and label not in names]
        if unknown:
            known = ", ".join(names) if names else "none: this model takes no class label"
            raise UnknownLabelError(f"unknown label {unknown[0]!r}; known: {known}")
        return torch.tensor(
            [self.null_class if label is None else names.index(label) for label in labels],
            dtype=torch.long,
            device=self.device,
        )

    @property
    def guidance_embedded(self) -> bool:
        """A guidance-distilled student: its U-Net takes the guidance scale as an input (ldm.diffusion.distillation)."""
        return bool(getattr(self.unet, "guidance_embedded", False))

    @property
    def scale_factor(self) -> float:
        return self.vae.scale_factor

    @property
    def latent_channels(self) -> int:
        return self.vae.embed_dim

    @property
    def downscale(self) -> int:
        return self.vae.downscale

    @property
    def default_image_size(self) -> int:
        return self.image_size * self.downscale

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        """The U-Net's weight type (float32 unless cast with networks_to)."""
        return next(self.unet.parameters()).dtype

    def networks_to(self, dtype: torch.dtype, channels_last: bool = False) -> LatentDiffusion:
        """Cast the networks' weights (U-Net, autoencoder, text encoder); the noise schedule stays float32,
        since bf16 sigmas would move every step. `channels_last`: the U-Net's convolutions too, which oneDNN
        runs faster in bf16 on a CPU (benchmarks/unet_speed.py; slower in fp32 there)."""
        for network in (self.unet, self.vae, self.text_encoder):
            if network is not None:  # a label-only model has no text encoder
                network.to(dtype)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        return self

    def compile_unet(self) -> LatentDiffusion:
        """Compile the U-Net with torch.compile (inductor) for inference, after any cast, LoRA or embedding.
        Freezing makes the weights constants, so that inductor folds them and prepacks them for oneDNN on a
        CPU: SD 2-base bf16 (after use_cpu_bf16) at 0.65-0.69x its eager time, fp32 at 0.76-1.04x, on one thread
        (benchmarks/unet_speed.py --compile, docs/benchmarks.md). One graph serves every step (autocast is part of
        its guards). The first call compiles (minutes at SD size); later changes to the weights are not seen."""
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        self.unet = torch.compile(self.unet)
        return self

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor | None:
        """Cross-attention contexts of the prompts; None for a label-only model (no text encoder)."""
        return self.text_encoder(list(prompts)) if self.text_encoder is not None else None

    # Tiled autoencoder (ldm.models.tiling) for images larger than one tile: None, or {"tile": latent samples,
    # "overlap": latent samples}. Set by --tiled-vae; tiles are encoded to the posterior's mean.
    vae_tiling: dict[str, int] | None = None

    def encode_image(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:  # noqa: E501
        """Images in [-1, 1] -> scaled latents."""
        tiling, f = self.vae_tiling, self.downscale
        if tiling and not sample and max(images.shape[-2:]) > tiling["tile"] * f:
            from ldm.models.tiling import tiled_encode

            return tiled_encode(
                self.vae.encode_to_latent, images, tiling["tile"] * f, tiling["overlap"] * f, f, self.vae
            )  # noqa: E501
        return self.vae.encode_to_latent(images, generator=generator, sample=sample)

    def decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped); an fp16 decode that would overflow runs in float32."""
        return decode_safely(self._decode_latent, self.vae, latents, upcast=overflows_in_fp16(self))

    def _decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        tiling = self.vae_tiling
        if tiling and max(latents.shape[-2:]) > tiling["tile"]:
            from ldm.models.tiling import tiled_decode

            return tiled_decode(
                self.vae.decode_from_latent, latents, tiling["tile"], tiling["overlap"], self.downscale, self.vae
            )  # the group norms share their statistics across tiles (ldm.models.tiling)
        return self.vae.decode_from_latent(latents)

    def parameterisation(self):
        """The schedule with the prediction type (ldm.diffusion.parameterisation.VPParameterisation), for training and sampling;
        with a learned variance, ldm.diffusion.likelihood.LearnedVarianceParameterisation (hybrid loss, eps half for x0)."""  # noqa: E501
        from ldm.diffusion.parameterisation import VPParameterisation

        if self.learned_variance:
            from ldm.diffusion.likelihood import LearnedVarianceParameterisation

            return LearnedVarianceParameterisation(self.alphas_cumprod, self.prediction)
        return VPParameterisation(self.alphas_cumprod, self.prediction)

    def denoiser(self):
        """The U-Net behind its parameterisation: D(x, sigma, context=, y=, concat=) -> x0."""
        from ldm.diffusion.parameterisation import DiscreteTimeDenoiser

        return DiscreteTimeDenoiser(self.unet, parameterisation=self.parameterisation())

    def with_unet(self, unet: nn.Module) -> LatentDiffusion:
        """This model with another U-Net (e.g. the EMA copy) in a new container; this one is left as it is.

        The VAE, text encoder and buffers are shared, not copied.
        """
        view = copy.copy(self)
        view._modules = {**self._modules, "unet": unet}
        view._parameters, view._buffers = dict(self._parameters), dict(self._buffers)
        return view

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights in the original SD key layout (what `save` writes)."""
        layout = self.text_encoder.checkpoint_layout if self.text_encoder is not None else OPEN_CLIP_LAYOUT
        return to_original_keys(self.state_dict(), layout)

    def load_vae_weights(self, path: str | Path) -> None:
        """Replace the autoencoder's weights with those of a standalone VAE file in the original layout
        (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`, as vae-ft-mse-840000-ema-pruned) or diffusers'
        (a vae/diffusion_pytorch_model.safetensors, as the fp16-safe sdxl-vae-fp16-fix), and
        record it with the model's identity, since it changes every image. A file that does not fit the
        autoencoder exactly is refused in one line and the model is left as it was."""
        state = load_state_dict(path)
        dropped = [k for k in state if k.startswith(VAE_FILE_IGNORED)]
        if dropped:
            log.info(
                "%s: ignored %d entries of training only (%s)",
                Path(path).name,
                len(dropped),
                ", ".join(sorted({k.split(".")[0] for k in dropped})),
            )
            state = {k: v for k, v in state.items() if not k.startswith(VAE_FILE_IGNORED)}
        if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):  # diffusers' layout
            state = from_diffusers(state, vae_names(list(self.vae.state_dict()), len(self.vae.decoder.up)))
        problems = state_problems(self.vae.state_dict(), state)
        if problems:
            raise CheckpointError(
                f"{path} does not fit the model's autoencoder (a VAE file holds encoder.*, decoder.*, "  # noqa: E501
                f"quant_conv.*, post_quant_conv.*): {'; '.join(problems)}"
            )
        self.vae.load_state_dict(state, strict=True)
        self.identity = {**self.identity, "vae_file": Path(path).name, "vae_sha256": file_sha256(path)}

    def load_weights(self, path: str | Path) -> None:
        state = weights_in_our_layout(path)
        try:
            load_into(self, state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
