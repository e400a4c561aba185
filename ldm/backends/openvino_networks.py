"""The OpenVINO backend: the U-Net, the autoencoder's decoder and the text encoder run by OpenVINO's CPU runtime.

`use_backend(model, "openvino")` puts each network's call behind an `OpenVINONetwork`; the modules, their weights and
their names stay as they are, so the samplers, guidance, task composition, LoRAs and saving are unchanged: only the
network calls change. Each network is exported once per weights (ldm.backends.openvino_export: the IR is cached on
disk, batch and image sizes dynamic), then compiled per inference precision and input shapes, in memory.

The inference precision is set explicitly on every compile (OpenVINO would pick bf16 by itself on AVX-512 BF16 and
AMX CPUs): a run under a bf16 autocast (a task's precision="bf16", the CLI's --precision bf16) is compiled with
INFERENCE_PRECISION_HINT "bf16", any other with "f32"; `use_backend(..., precision=)` fixes one instead.

What the exported U-Net does not take is refused in one line: ControlNet residuals, seamless tiling's patched
convolutions (--tiling) and the tiled autoencoder (--tiled-vae); merged or applied LoRAs, textual-inversion
embeddings, clip skip, class labels, the SDXL vector and a distilled student's guidance input are exported.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ldm.backends.openvino_export import (
    BackendError,
    InputSpec,
    export_key,
    import_openvino,
    load_or_export,
    openvino_cache,
    patched,
    weights_stamp,
)
from ldm.core import defaults
from ldm.models.text_encoder import FrozenTextEncoder

log = logging.getLogger(__name__)
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # a run's precision -> OpenVINO's INFERENCE_PRECISION_HINT
UNET_INPUTS = ("x", "timesteps", "context", "y", "guidance")
# The sizes that vary between calls (batch, image size, prompt chunks); the others are fixed by the weights.
DYNAMIC_DIMS = {"x": (0, 2, 3), "context": (0, 1), "z": (0, 2, 3)}


def run_precision(fixed: str | None = None) -> str:
    """OpenVINO's inference precision for this call: `fixed`, else bf16 under a CPU bf16 autocast, else f32."""
    if fixed is not None:
        return INFERENCE_PRECISIONS[fixed]
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return "bf16"
    return "f32"


def input_spec(name: str, tensor: torch.Tensor) -> InputSpec:
    dynamic = DYNAMIC_DIMS.get(name, (0,))
    return InputSpec(name, tensor.dtype, tuple(None if i in dynamic else s for i, s in enumerate(tensor.shape)))


class OpenVINONetwork:
    """One network run by OpenVINO: `traced` (a module whose forward takes the inputs in order) is exported on the
    first call and again whenever its weights or settings change (`weights_stamp`), then compiled per inference
    precision, input shapes and thread count. `exports` holds the seconds of each export this object made."""

    def __init__(self, role: str, traced: nn.Module, cache_dir: str | os.PathLike | None, precision: str | None):
        if precision is not None and precision not in INFERENCE_PRECISIONS:
            raise BackendError(f"OpenVINO precision {precision!r}; known: {', '.join(INFERENCE_PRECISIONS)}")
        self.role, self.traced, self.precision = role, traced, precision
        self.cache_dir = openvino_cache(cache_dir)
        self.exports: list[float] = []
        self._stamp: tuple | None = None
        self._key: str | None = None
        self._xml: Any = None
        self._compiled: dict[tuple, Any] = {}

    def _ir(self, inputs: Sequence[tuple[InputSpec, torch.Tensor]]) -> Any:
        specs = tuple(spec for spec, _ in inputs)
        stamp = (weights_stamp(self.traced), specs)
        if stamp != self._stamp:
            if patched(self.traced):
                raise BackendError(f"seamless tiling (--tiling) is not run by the OpenVINO backend's {self.role}; "
                                   "use --backend torch")  # fmt: skip
            key = export_key(self.role, self.traced, specs, import_openvino().__version__)
            if key != self._key:
                example = tuple(t for _, t in inputs)
                self._xml, seconds = load_or_export(self.role, self.traced, example, specs, key, self.cache_dir)
                self._compiled, self._key = {}, key
                if seconds is not None:
                    self.exports.append(seconds)
            self._stamp = stamp
        return self._xml

    def compiled(self, inputs: Sequence[tuple[InputSpec, torch.Tensor]]) -> Any:
        """The compiled model for these inputs under this call's precision (compiled on first use)."""
        xml = self._ir(inputs)
        precision, threads = run_precision(self.precision), torch.get_num_threads()
        shapes = tuple((spec.name, tuple(t.shape)) for spec, t in inputs)
        key = (precision, threads, shapes)
        if key not in self._compiled:
            ov = import_openvino()
            start = time.perf_counter()
            core = ov.Core()
            static = core.read_model(str(xml))
            static.reshape({name: list(shape) for name, shape in shapes})
            config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                      "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
            self._compiled[key] = core.compile_model(static, "CPU", config)
            log.info("OpenVINO: %s compiled for %s in %s (%.1f s)", self.role, shapes, precision,
                     time.perf_counter() - start)  # fmt: skip
        return self._compiled[key]

    def __call__(self, named: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
        tensors = [(name, t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu()) for name, t in named]
        inputs = [(input_spec(name, t), t.contiguous()) for name, t in tensors]
        outputs = self.compiled(inputs)([t.numpy() for _, t in inputs])
        return torch.from_numpy(outputs[0].copy())


class TracedUNet(nn.Module):
    """The U-Net's own forward with its inputs in order, as the export traces it."""

    def __init__(self, unet: nn.Module, names: Sequence[str]):
        super().__init__()
        self.unet, self.names = unet, tuple(names)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        return type(self.unet).forward(self.unet, x, timesteps, **dict(zip(self.names[2:], more)))


class TracedDecoder(nn.Module):
    """Unscaled latents -> images, the part of the autoencoder decoding runs (post_quant_conv, decoder)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


class TracedTextEncoder(nn.Module):
    """Token vectors -> hidden states: the transformer the text encoder reads out (its token lookup, which
    textual-inversion embeddings change, stays in torch)."""

    def __init__(self, encoder: FrozenTextEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return type(self.encoder).encode_vectors(self.encoder, vectors)


def unet_call(unet: nn.Module, cache_dir: str | os.PathLike | None, precision: str | None):
    networks: dict[tuple[str, ...], OpenVINONetwork] = {}  # one export per set of inputs given

    def forward(x, timesteps, context=None, y=None, guidance=None, control=None) -> torch.Tensor:
        if control is not None:
            raise BackendError("ControlNets are not run by the OpenVINO backend (its U-Net takes no residuals); "
                               "use --backend torch")  # fmt: skip
        if (y is not None) != (getattr(unet, "num_classes", None) is not None) or (guidance is not None) != bool(
            getattr(unet, "guidance_embedded", False)
        ):
            return type(unet).forward(unet, x, timesteps, context, y, guidance)  # its own one-line error
        timesteps = timesteps.expand(x.shape[0]) if timesteps.ndim == 0 else timesteps
        if guidance is not None and guidance.ndim == 0:
            guidance = guidance.expand(x.shape[0])
        named = [(n, v) for n, v in zip(UNET_INPUTS, (x, timesteps, context, y, guidance)) if v is not None]
        names = tuple(n for n, _ in named)
        if names not in networks:
            networks[names] = OpenVINONetwork("unet", TracedUNet(unet, names), cache_dir, precision)
        return networks[names](named).to(x.device)

    forward.networks = networks
    return forward


def decoder_call(model: nn.Module, cache_dir: str | os.PathLike | None, precision: str | None):
    network = OpenVINONetwork("decoder", TracedDecoder(model.vae), cache_dir, precision)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        tiling = model.vae_tiling
        if tiling and max(latents.shape[-2:]) > tiling["tile"]:
            raise BackendError("the tiled autoencoder (--tiled-vae) is not run by the OpenVINO backend; "
                               "leave it out or use --backend torch")  # fmt: skip
        return network([("z", latents.float() / model.vae.scale_factor)]).to(latents.device)

    decode.networks = {("z",): network}
    return decode


def text_call(encoder: FrozenTextEncoder, cache_dir: str | os.PathLike | None, precision: str | None):
    network = OpenVINONetwork("text", TracedTextEncoder(encoder), cache_dir, precision)

    def encode_tokens(tokens: torch.Tensor) -> torch.Tensor:
        return network([("vectors", encoder._token_vectors(tokens).float())])

    encode_tokens.networks = {("vectors",): network}
    return encode_tokens


# Where each network's call is put: (the object, the attribute its callers use).
def _slots(model: nn.Module) -> dict[str, tuple[Any, str]]:
    slots = {"unet": (model.unet, "forward"), "decoder": (model, "_decode_latent")}
    if isinstance(model.text_encoder, FrozenTextEncoder):  # SDXL's two towers stay in torch
        slots["text"] = (model.text_encoder, "encode_tokens")
    return slots


def check_model(model: nn.Module) -> None:
    if model.device.type != "cpu":
        raise BackendError(f"the OpenVINO backend runs on the CPU, the model is on {model.device}; give --device cpu")
    if type(model.unet).__name__ == "OptimizedModule":
        raise BackendError("--compile and the OpenVINO backend both replace the U-Net's call; choose one")
    for name, network in (("U-Net", model.unet), ("autoencoder", model.vae), ("text encoder", model.text_encoder)):
        dtype = next((p.dtype for p in network.parameters()), torch.float32) if network is not None else torch.float32
        if dtype != torch.float32:
            raise BackendError(f"the OpenVINO backend exports float32 weights, the {name} holds {dtype}; keep the "
                               "model in float32 (precision='bf16' still runs OpenVINO in bf16)")  # fmt: skip


def check_backend(backend: str, compiled: bool = False) -> None:
    """Refuse an unknown backend, openvino without its package, or another backend with torch.compile (`compiled`)
    in one line, before any loading."""
    if backend not in defaults.BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; known: {', '.join(defaults.BACKENDS)}")
    if compiled and backend != defaults.BACKEND:
        raise BackendError(f"--compile and --backend {backend} both replace the U-Net's call; choose one")
    if backend == "openvino":
        import_openvino()


def use_backend(
    model: nn.Module,
    backend: str = defaults.BACKEND,
    cache_dir: str | os.PathLike | None = None,
    precision: str | None = None,
) -> nn.Module:
    """Run the model's networks on `backend` ("torch" or "openvino", ldm.core.defaults.BACKENDS) from now on;
    returns the model. The model's identity records a backend other than torch (images' metadata: `backend`).

    openvino: the networks are exported on first use to `cache_dir` (default $LDM_CACHE/openvino, i.e.
    ~/.cache/ldm/openvino) and reused from there by later runs; `precision` ("fp32" or "bf16") fixes OpenVINO's
    inference precision, None follows each run's (a task's precision=)."""
    check_backend(backend)
    for owner, attribute in _slots(model).values():
        owner.__dict__.pop(attribute, None)  # the class's own method again
    model.identity = {k: v for k, v in model.identity.items() if k != "backend"}
    if backend == "torch":
        return model
    check_model(model)
    calls = {"unet": unet_call(model.unet, cache_dir, precision), "decoder": decoder_call(model, cache_dir, precision)}
    if isinstance(model.text_encoder, FrozenTextEncoder):
        calls["text"] = text_call(model.text_encoder, cache_dir, precision)
    for role, (owner, attribute) in _slots(model).items():
        owner.__dict__[attribute] = calls[role]
    model.identity = {**model.identity, "backend": backend}
    return model


def backend_networks(model: nn.Module) -> dict[str, list[OpenVINONetwork]]:
    """The OpenVINO networks behind the model's calls, by role (empty on the torch backend): their `exports`."""
    found = {}
    for role, (owner, attribute) in _slots(model).items():
        call = owner.__dict__.get(attribute)
        if call is not None:
            found[role] = list(call.networks.values())
    return found
