"""The model the server holds and what the worker does with it: run a GenerationRequest, switch models.

Only the worker thread calls `Generator.generate` and `Generator.switch` (ldm.interfaces.server.jobs), so the model is
never used by two jobs at once and a switch waits behind the jobs queued before it. Each image is made as the CLI
makes it (same task function, options over the model's own defaults, image i of a batch seeded seed + i) and carries
the same PNG metadata, so `ldm txt2img --from-png` re-makes it bit for bit.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.interfaces.server.fields import FieldError
from ldm.interfaces.server.jobs import Job
from ldm.interfaces.server.requests import GenerationRequest, ServerLimits
from ldm.io.a1111_samplers import schedule_type_of
from ldm.io.images import png_bytes
from ldm.io.infotext import SAMPLER_NAMES, format_infotext

log = logging.getLogger("ldm.serve")


@dataclass(frozen=True)
class ModelEntry:
    """A model the server may load: a shipped variant, or a config and checkpoint the command line named."""

    name: str  # A1111's model_name: the weights file's stem
    checkpoint: str  # the weights file
    config: str | None
    variant: str | None = None  # a shipped text-to-image variant ("student", "full")

    @property
    def title(self) -> str:
        return Path(self.checkpoint).name


def shipped_entries() -> list[ModelEntry]:
    from ldm.formats.variants import VARIANTS, default_variant, shipped_model_files

    order = [default_variant()] + [v for v in VARIANTS if v != default_variant()]
    entries = []
    for variant in order:
        try:
            config, checkpoint = shipped_model_files("txt2img", variant)
        except InvalidOptionError:
            continue
        entries.append(ModelEntry(Path(checkpoint).stem, str(checkpoint), str(config), variant))
    return entries


class Generator:
    """Holds one model (the first entry at start) and runs requests on it."""

    def __init__(
        self,
        entries: list[ModelEntry],
        load_args: argparse.Namespace,
        limits: ServerLimits,
        controlnets: list[str] | None = None,
    ):
        if not entries:
            raise InvalidOptionError("no model to serve")
        self.entries = entries
        self.controlnets = list(controlnets or [])
        self._nets: dict[str, Any] = {}  # the ControlNets loaded for the model held
        self._refiner_held: tuple[ModelEntry, Any] | None = None
        self._upscaler: Any = None  # the x4 upscaler, for hr_upscaler "LDM x4", loaded when first asked for
        self.load_args = load_args
        self.limits = limits
        self.entry: ModelEntry = entries[0]
        self.model = self._load(self.entry)

    def find(self, name: str, field: str) -> ModelEntry:
        """The listed model a client names: by title, "title [hash]", model_name or file name; others are refused."""
        wanted = name.split(" [")[0].strip()
        for entry in self.entries:
            if wanted in (entry.title, entry.name, entry.checkpoint):
                return entry
        raise FieldError(field, f"{name!r:.80} is not a model of this server; GET /sdapi/v1/sd-models lists them")

    def _load(self, entry: ModelEntry) -> Any:
        from ldm.interfaces.cli.common import load_model_from_args

        args = argparse.Namespace(**vars(self.load_args))
        args.config, args.ckpt = (None, None) if entry.variant else (entry.config, entry.checkpoint)
        log.info("loading %s", entry.title)
        return load_model_from_args(args, variant=entry.variant)

    def switch(self, entry: ModelEntry) -> None:
        """Hold `entry`'s model instead of the current one (nothing happens if it is the one held)."""
        if entry != self.entry:
            self.model, self._nets, self._refiner_held = None, {}, None  # free before the new one loads
            try:
                self.model = self._load(entry)
            except Exception:
                self.model = self._load(self.entry)  # keep serving the model that was there
                raise
            self.entry = entry

    def model_sha256(self) -> str | None:
        """The held model's SHA-256 (None while a switch loads the next one: routes read this from other threads)."""
        return getattr(self.model, "identity", {}).get("model_sha256")

    def model_hash(self) -> str | None:
        sha = self.model_sha256()
        return str(sha)[:10] if sha else None

    def generate(self, request: GenerationRequest, job: Job) -> dict[str, Any]:
        """Run the request (on this request's model, if it names one) -> the A1111 answer."""
        previous = self.entry
        if request.checkpoint is not None:
            self.switch(self.find(request.checkpoint, "override_settings.sd_model_checkpoint"))
        try:
            return self._generate(request, job)
        finally:
            if request.restore_checkpoint and self.entry != previous:
                self.switch(previous)

    def _options(self, request: GenerationRequest) -> Any:
        from ldm.sampling.options import task_options

        task = "txt2img" if request.task == "txt2img" else "img2img"
        options = task_options(task, **self.model.sampling_defaults)
        for key, value in request.sampling.items():
            setattr(options, key, value)
        if "sampler" in request.sampling and "spacing" not in request.sampling:
            options.spacing = task_options(task).spacing  # a model's own spacing belongs to its own sampler
        try:
            options.validate()
        except InvalidOptionError as exc:  # named by the field that asked for it
            message = str(exc)
            field = "sampler_name" if "sampler" in message else "cfg_scale" if "guidance" in message else "body"
            raise FieldError(field, message) from None
        return options

    def _generate(self, request: GenerationRequest, job: Job) -> dict[str, Any]:
        from ldm.tasks.txt2img import image_size

        model = self.model
        options = self._options(request)
        init, mask = request.init_image, request.mask
        if request.inpaint_area == "masked":  # the image keeps its size; the crop is drawn at the model's
            self._check_masked_size(request)
            width, height = init.size
        elif init is not None:
            size = (request.width or init.width, request.height or init.height)
            if size != init.size:  # A1111's resize mode 0: the image is resized to the asked size
                init = init.resize(size, Image.Resampling.LANCZOS)
                mask = mask.resize(size, Image.Resampling.NEAREST) if mask is not None else None
            width, height = size
        else:
            height, width = image_size(model, request.height, request.width)
        hires = self._hires(request, height, width)
        per_call = options.steps if request.strength is None else max(1, round(options.steps * request.strength))
        if hires is not None:
            per_call += hires.steps or options.steps  # the second pass runs all its steps (ldm.tasks.hires)
        job.steps = per_call * request.n_iter
        images, settings = [], []
        for iteration in range(request.n_iter):
            seed = request.seed + iteration * request.batch_size
            made = self._call(request, options, init, mask, height, width, seed, job, hires)
            job.step = per_call * (iteration + 1)
            extra: dict[str, Any] = {}
            if request.controls:  # the control images came in the request: the record names them so
                extra["controls"] = [
                    {"image": f"request:unit {i}", "controlnet": Path(u["controlnet"]).name, "weight": u["weight"],
                     "start": u["start"], "end": u["end"], "resize": u["resize"], "mode": u["mode"]}
                    for i, u in enumerate(request.controls)
                ]  # fmt: skip
            for i, image in enumerate(made):  # the call's own record of each image (ldm.tasks.results.settings_of)
                images.append(image)
                settings.append({**made.settings.image(i), **extra})
        return self._answer(request, images, settings)

    def _check_masked_size(self, request: GenerationRequest) -> None:
        """With "Only masked", A1111's width and height are the size the crop is drawn at; here that is the model's own
        size (ldm.tasks.inpaint_area), so they are accepted at it (or left out) and refused at any other."""
        native = self.model.default_image_size
        for name in ("width", "height"):
            if getattr(request, name) not in (None, native):
                raise FieldError(name, f"with inpaint_full_res the masked area is drawn at the model's own size, "
                                 f"{native}x{native}: send {native} or leave it out")  # fmt: skip

    def _hires(self, request: GenerationRequest, height: int, width: int) -> Any:
        """The request's HiresOptions (None: no hires fix, or a scale that keeps the size, which A1111 runs without
        it), its target size checked against --max-pixels; the x4 upscaler loaded once and kept for "model"."""
        from ldm.tasks.hires import HiresOptions
        from ldm.tasks.sdxl_refiner import is_sdxl

        if request.hires is None:
            return None
        hires = HiresOptions(**request.hires)
        target = hires.target_size(height, width, max(8, self.model.downscale))
        if target == (height, width):
            return None
        if is_sdxl(self.model):
            raise FieldError("enable_hr", "the hires fix is not implemented for SDXL models; leave it off")
        if target[0] * target[1] > self.limits.max_pixels:
            raise FieldError("hr_scale", f"the hires size {target[1]}x{target[0]} is over this server's limit of "
                             f"{self.limits.max_pixels:,} pixels")  # fmt: skip
        if hires.upscaler == "model":
            if self._upscaler is None:
                from ldm.formats.load import load_model

                self._upscaler = load_model(task="upscale", device=str(self.model.device))
            hires = replace(hires, upscaler_model=self._upscaler)
        return hires

    def _call(self, request, options, init, mask, height, width, seed, job, hires=None):
        done = job.step

        def step(state: dict) -> None:
            job.step = done + int(state.get("i", 0)) + 1
            job.check_stop()

        prompts = [request.prompt] * request.batch_size
        if request.controls:
            from ldm.models.controlnet import using_controlnets

            with using_controlnets(self.model, self._controls(request)):
                return self._task(request, options, init, mask, height, width, seed, prompts, step, hires)
        return self._task(request, options, init, mask, height, width, seed, prompts, step, hires)

    def _controls(self, request: GenerationRequest) -> list[Any]:
        from ldm.formats.controlnet_files import load_controlnet
        from ldm.models.controlnet import Control

        controls = []
        for unit in request.controls:
            path = unit["controlnet"]
            if path not in self._nets:
                net = load_controlnet(path, self.model)
                self._nets[path] = net.to(next(self.model.unet.parameters()).device, self.model.unet.dtype).eval()
            controls.append(
                Control(self._nets[path], unit["image"], unit["weight"], unit["start"], unit["end"],
                        name=Path(path).name, resize=unit["resize"], mode=unit["mode"])
            )  # fmt: skip
        return controls

    def _task(self, request, options, init, mask, height, width, seed, prompts, step, hires=None):
        from ldm.tasks.img2img import img2img
        from ldm.tasks.inpaint import inpaint
        from ldm.tasks.sdxl_refiner import is_sdxl, sdxl_txt2img
        from ldm.tasks.txt2img import txt2img

        common = {"negative_prompt": request.negative_prompt, "seed": seed, "options": options, "progress": False}
        if request.task == "txt2img" and (request.refiner is not None or is_sdxl(self.model)):
            # SDXL reads A1111's 75-token chunks and (word:1.2) emphasis in both towers; prompt editing not yet
            if options.tiling:
                raise FieldError("tiling", "seamless tiling is not implemented for SDXL models yet; leave it off")
            refiner = self._refiner(request, options)
            return sdxl_txt2img(
                self.model, prompts, height=height, width=width, callback=step, long_prompts=True, emphasis=True,
                **common, **refiner,
            )  # fmt: skip
        common["prompt_syntax"] = "a1111"  # A1111's reading: long prompts, BREAK, emphasis and prompt editing
        if request.task == "txt2img":
            try:
                return txt2img(self.model, prompts, height=height, width=width, callback=step, hires=hires, **common)
            except InvalidOptionError as exc:
                if hires is not None and "hires fix" in str(exc):  # a hires fix the task refuses
                    raise FieldError("enable_hr", str(exc)) from None
                raise
        if request.task == "img2img":
            return img2img(self.model, init, prompts, request.strength, callback=step, **common)
        return inpaint(
            self.model, init, mask, prompts, strength=request.strength, feather_radius=request.mask_blur,
            inpaint_area=request.inpaint_area, mask_padding=request.mask_padding, callback=step, **common,
        )  # fmt: skip

    def _refiner(self, request: GenerationRequest, options: Any) -> dict[str, Any]:
        """sdxl_txt2img's refiner and switch for the request: the listed refiner (kept loaded beside the model until
        another is asked for), A1111's step fraction as the timestep fraction that runs the same base steps."""
        from ldm.tasks.sdxl_refiner import is_sdxl, switch_from_step_fraction

        if request.refiner is None:
            return {}
        if not is_sdxl(self.model):
            raise FieldError("refiner_checkpoint", "the refiner is for SDXL models; this model is not one")
        entry = self.find(request.refiner, "refiner_checkpoint")
        if self._refiner_held is None or self._refiner_held[0] != entry:
            self._refiner_held = None
            refiner = self.model if entry == self.entry else self._load(entry)
            if not is_sdxl(refiner):
                raise FieldError("refiner_checkpoint", f"{entry.title} is not an SDXL model")
            self._refiner_held = (entry, refiner)
        T = len(self.model.alphas_cumprod)
        spacing = options.spacing if options.spacing in ("leading", "trailing", "linspace") else "linspace"
        switch = switch_from_step_fraction(request.refiner_switch_at, options.steps, T, spacing)
        return {"refiner": self._refiner_held[1], "switch": switch}

    def _answer(self, request: GenerationRequest, images: list[Image.Image], settings: list[dict]) -> dict[str, Any]:
        """A1111's answer: base64 PNGs (with our metadata), the request's `parameters`, `info` as a JSON string."""
        encoded = [base64.b64encode(png_bytes(image, s)).decode("ascii") for image, s in zip(images, settings)]
        first = settings[0]
        info = {
            "prompt": request.prompt,
            "all_prompts": [request.prompt] * len(images),
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": [request.negative_prompt] * len(images),
            "seed": first["seed"],
            "all_seeds": [s["seed"] for s in settings],
            "subseed": -1,
            "all_subseeds": [-1] * len(images),
            "subseed_strength": 0,
            "width": first["width"],
            "height": first["height"],
            "sampler_name": SAMPLER_NAMES.get(first["sampler"], first["sampler"]),
            "scheduler": schedule_type_of(first) or "Automatic",
            "cfg_scale": first["guidance_scale"],
            "steps": first["steps"],
            "batch_size": request.batch_size,
            "restore_faces": False,
            "sd_model_name": self.entry.name,
            "sd_model_hash": self.model_hash(),
            "denoising_strength": first.get("strength", request.strength),  # the hires pass's, with enable_hr
            "index_of_first_image": 0,
            "infotexts": [format_infotext(s) for s in settings],
            "styles": [],
            "clip_skip": first.get("clip_skip", 1),
            "is_using_inpainting_conditioning": request.task == "inpaint" and bool(self.model.kind.concat),
        }
        parameters = {**request.parameters, "seed": first["seed"]}
        return {"images": encoded if request.send_images else [], "parameters": parameters, "info": json.dumps(info)}
