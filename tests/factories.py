"""Tiny model configs and models for the tests: every code path, in seconds on a CPU.

Text-to-image (`tiny_model`), and the conditional layouts of SD 2: inpainting, the x4 upscaler and depth.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TINY_TEXT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

TINY_MODEL = {
    "model": {
        "target": "ldm.models.latent_diffusion.LatentDiffusion",
        "params": {
            "timesteps": 1000,
            "beta_schedule": "scaled_linear",
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "parameterization": "eps",
            "scale_factor": 1.0,
            "image_size": 8,
            "unet_config": {
                "target": "ldm.models.unet.UNetModel",
                "params": {
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 32,
                    "attention_resolutions": [2],
                    "num_res_blocks": 1,
                    "channel_mult": [1, 2],
                    "num_head_channels": 16,
                    "use_linear_in_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 32,
                    "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.vae.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 16,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 2],
                        "num_res_blocks": 1,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                },
            },
            "cond_stage_config": {
                "target": "ldm.models.text_encoder.FrozenOpenCLIPEmbedder",
                "params": {"arch": TINY_TEXT, "layer": "penultimate"},
            },
        },
    }
}


def tiny_config(**params) -> dict:
    """A deep copy of TINY_MODEL with top-level model params overridden (e.g. parameterization="v")."""
    cfg = copy.deepcopy(TINY_MODEL)
    cfg["model"]["params"].update(params)
    return cfg


def tiny_learned_variance_config() -> dict:
    """The tiny text-to-image model with a learned variance: out_channels [eps, raw v] = 2 x 4 latent channels."""
    cfg = tiny_config(learned_variance=True)
    cfg["model"]["params"]["unet_config"]["params"]["out_channels"] = 8
    return cfg


def tiny_original_config() -> dict:
    """The tiny model as an original SD YAML names it (the reference repository's target and schedule name): what
    models loaded from original SD files and YAMLs are built from, e.g. with their DDIM variant "sd"."""
    cfg = tiny_config()
    cfg["model"]["target"] = "ldm.models.diffusion.ddpm.LatentDiffusion"
    cfg["model"]["params"]["beta_schedule"] = "linear"  # the reference's name for our scaled_linear
    return cfg


def tiny_model(seed: int = 0, **params):
    """A randomly initialised tiny LatentDiffusion whose output layers are not zero (so it does something);
    learned_variance=True: the one of `tiny_learned_variance_config`."""
    import torch

    from ldm.core.config import instantiate

    torch.manual_seed(seed)
    cfg = tiny_learned_variance_config() if params.pop("learned_variance", False) else tiny_config()
    cfg["model"]["params"].update(params)
    model = instantiate(cfg["model"])
    with torch.no_grad():
        for _name, p in model.unet.named_parameters():
            if (p == 0).all() and p.ndim > 1:  # zero-initialised output convs / projections
                p.normal_(0, 0.02)
    return model.eval()


def tiny_inpaint_config() -> dict:
    """SD 2 inpainting layout: 9 input channels [noisy latent 4, mask 1, masked-image latent 4]."""
    cfg = tiny_config(conditioning_key="hybrid")
    cfg["model"]["params"]["unet_config"]["params"]["in_channels"] = 9
    return cfg


def tiny_upscaler_config() -> dict:
    """x4-upscaler layout: f=4 VAE, [noisy latent 4, low-res RGB 3] input, noise-level label, v-prediction."""
    cfg = tiny_config(
        conditioning_key="hybrid-adm",
        parameterization="v",
        linear_start=0.0001,
        linear_end=0.02,
        scale_factor=0.08333,
        image_size=16,
        low_scale_config={
            "target": "ldm.models.conditioning.LowResNoiseAugmentation",
            "params": {"max_noise_level": 350},
        },
    )
    params = cfg["model"]["params"]
    params["unet_config"]["params"].update(in_channels=7, num_classes=1000)
    params["first_stage_config"]["params"]["ddconfig"]["ch_mult"] = [1, 2, 2]
    return cfg


def tiny_depth_config(original: bool = False) -> dict:
    """SD 2 depth layout: 5 input channels [noisy latent 4, depth 1]. original: as v2-midas-inference.yaml names it
    (the reference's LatentDepth2ImageDiffusion with conditioning_key hybrid and its MiDaS node, not built here)."""
    cfg = tiny_original_config() if original else tiny_config(conditioning_key="depth")
    params = cfg["model"]["params"]
    params["unet_config"]["params"]["in_channels"] = 5
    if original:
        cfg["model"]["target"] = "ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion"
        params["conditioning_key"] = "hybrid"
        params["depth_stage_config"] = {
            "target": "ldm.modules.midas.api.MiDaSInference",
            "params": {"model_type": "dpt_hybrid"},
        }
    return cfg


def _build(cfg: dict, seed: int):
    import torch

    from ldm.core.config import instantiate

    torch.manual_seed(seed)
    model = instantiate(cfg["model"])
    with torch.no_grad():
        for p in model.unet.parameters():
            if (p == 0).all() and p.ndim > 1:  # zero-initialised output layers would make the U-Net a no-op
                p.normal_(0, 0.02)
    return model.eval()


def tiny_model_from(cfg: dict, seed: int = 0):
    """A randomly initialised model of any tiny config, output layers not zero (e.g. a combination of the above)."""
    return _build(cfg, seed)


def tiny_inpaint_model(seed: int = 0):
    return _build(tiny_inpaint_config(), seed)


def tiny_upscaler_model(seed: int = 0):
    return _build(tiny_upscaler_config(), seed)


def write_tiny_model_files(folder, name: str = "tiny", config: dict | None = None, model=None) -> tuple[str, str]:
    """The tiny model as a user has it: `name`.yaml (`config`, default tiny_config()) and `name`.safetensors in
    `folder` (the weights of `model`, default tiny_model()), for CLI and app tests."""
    from pathlib import Path

    import yaml

    from ldm.io.checkpoint import save_state_dict

    cfg, ckpt = Path(folder) / f"{name}.yaml", Path(folder) / f"{name}.safetensors"
    cfg.write_text(yaml.safe_dump(config or tiny_config()))
    save_state_dict((model if model is not None else tiny_model()).original_state_dict(), ckpt)
    return str(cfg), str(ckpt)


def tiny_class_config(class_names: list[str], label_only: bool = False) -> dict:
    """The tiny model made class-conditional: `class_names` and a U-Net label embedding of len + 1 rows (the
    last is the null label); label_only: no text encoder and no cross-attention context."""
    cfg = tiny_config(class_names=list(class_names))
    params = cfg["model"]["params"]
    params["unet_config"]["params"]["num_classes"] = len(class_names) + 1
    if label_only:
        params["cond_stage_config"] = None
        params["unet_config"]["params"]["context_dim"] = None
    return cfg


def tiny_class_model(class_names: list[str], label_only: bool = False, seed: int = 0):
    """A randomly initialised tiny class-conditional model (`tiny_class_config`), output layers not zero."""
    return _build(tiny_class_config(class_names, label_only), seed)


def write_tiny_learned_variance_files(folder, name: str = "tiny-lv") -> tuple[str, str]:
    """The tiny learned-variance model (`tiny_learned_variance_config`) as YAML + safetensors in `folder`."""
    return write_tiny_model_files(folder, name, tiny_learned_variance_config(), tiny_model(learned_variance=True))


def tiny_sd1_config() -> dict:
    """SD 1.x's own config (configs/stable-diffusion/v1-inference.yaml) at tiny widths: the U-Net, VAE and
    text tower keep their release layout (blocks, levels, heads) but are 10x (VAE 4x) narrower, and the
    text tower (CLIP ViT-L/14's layout, 12 heads) is 48 wide with 2 layers. A file of its weights is
    detected as SD 1.x and rebuilt at these sizes from its shapes alone (ldm.formats.detect.fit_sizes)."""
    from ldm.core.config import load_config
    from ldm.formats.detect import sd_config_path

    cfg = load_config(sd_config_path("v1-inference.yaml"))
    params = cfg["model"]["params"]
    params["unet_config"]["params"].update(model_channels=32, context_dim=48)
    params["first_stage_config"]["params"]["ddconfig"]["ch"] = 32
    params["cond_stage_config"]["params"] = {"width": 48, "layers": 2}
    return cfg


def tiny_sd1_model(seed: int = 0):
    """A random tiny SD 1.x (tiny_sd1_config) whose output layers are not zero, so it does something."""
    return _build(tiny_sd1_config(), seed)


def write_training_base(cfg: dict, folder) -> Path:
    """The training config's model with random weights and non-zero output layers (a fresh U-Net's output layer is
    zero, which no adapter or student inside it could move), as folder/model.safetensors + model.yaml: the base of
    a LoRA run or the teacher of a distillation."""
    from pathlib import Path

    import torch
    import yaml

    from ldm.core.config import instantiate
    from ldm.io.checkpoint import save_state_dict
    from ldm.training.export import inference_model_node

    torch.manual_seed(0)
    model = instantiate(cfg["model"])
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    folder = Path(folder)
    save_state_dict(model.original_state_dict(), folder / "model.safetensors")
    (folder / "model.yaml").write_text(yaml.safe_dump(inference_model_node(cfg["model"], model.vae.scale_factor)))
    return folder / "model.safetensors"


def with_ctrl_c() -> None:
    """preexec_fn of a child that a test stops with SIGINT: the default disposition back. A test run started in
    the background (a shell's `cmd &`, as CI harnesses may) inherits SIGINT *ignored*, and Python then installs
    no KeyboardInterrupt handler in the child, which would run on through the signal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# The modules diffusers' LCM-LoRA training script (train_lcm_distill_lora_sd_wds.py) gives LoRA layers (PEFT
# matches a name or its dotted ending).
LCM_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)  # fmt: skip


def diffusers_weights(model) -> dict[str, torch.Tensor]:
    """The U-Net's weights under diffusers' names (sharing our tensors' storage)."""
    from diffusers.loaders import single_file_utils as single_file

    ckpt = {"model.diffusion_model." + k: v for k, v in model.unet.state_dict().items()}
    config = single_file.create_unet_diffusers_config_from_ldm(tiny_config(), ckpt)
    return single_file.convert_ldm_unet_checkpoint(ckpt, config)


def write_lcm_lora(model, path: Path, rank: int = 4, alpha: float = 8.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A file in the layout of the LCM-LoRA (latent-consistency/lcm-lora-sdv1-5: kohya's `lora_unet_<diffusers path
    with underscores>` keys with `.lora_down.weight`, `.lora_up.weight`, `.alpha`) for `model`'s U-Net, its names
    from diffusers' own converter; returns the update of each of our U-Net parameters, by name."""
    import torch

    from ldm.io.checkpoint import save_state_dict

    ours_by_storage = {p.data_ptr(): f"unet.{name}" for name, p in model.unet.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state, updates = {}, {}
    for key, weight in diffusers_weights(model).items():
        module = key.removesuffix(".weight")
        if key == module or not any(module == t or module.endswith("." + t) for t in LCM_LORA_TARGETS):
            continue
        kernel = tuple(weight.shape[2:])
        down = torch.randn(rank, weight.shape[1], *kernel, generator=g) * 0.05
        up = torch.randn(weight.shape[0], rank, *((1, 1) if kernel else ()), generator=g) * 0.05
        stem = "lora_unet_" + module.replace(".", "_")
        state.update({f"{stem}.lora_down.weight": down.half(), f"{stem}.lora_up.weight": up.half()})
        state[f"{stem}.alpha"] = torch.tensor(alpha).half()
        delta = up.half().float().flatten(1) @ down.half().float().flatten(1)
        updates[ours_by_storage[weight.data_ptr()]] = delta.reshape(weight.shape) * alpha / rank
    save_state_dict(state, path)
    return updates
