"""U-Net forward time at SD 2-base size: ours in fp32 and bf16 against diffusers' UNet2DConditionModel in fp32,
same weights, all variants interleaved in one run.

    python benchmarks/unet_speed.py [--batch 2] [--size 32] [--repeats 3] [--threads N] [--device cpu] [--compile]
    python benchmarks/unet_speed.py --sdxl [--sdxl-channels 128] ...

--sdxl: SDXL base's U-Net instead (configs/stable-diffusion/sd_xl_base.yaml: its depths, 2048-wide context and
2816-wide vector) at a reduced width (model_channels 128, not 320: a CPU cannot run 2.6 B parameters in minutes),
against diffusers' UNet2DConditionModel with addition_embed_type "text_time" holding the same weights; ours gets
the vector ldm.models.sdxl_conditioning builds from the same pooled output and sizes.

Batch 2 is one guided sampling step (conditional + unconditional). Prints a markdown table: median time, the
ratio to diffusers' fp32 time, and each output's relative difference from diffusers' fp32 output.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from ldm.core.devices import cpu_has_fast_bf16
from ldm.models.unet import UNetModel

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stable-diffusion" / "v2-inference.yaml"
SDXL_CONFIG = CONFIG.with_name("sd_xl_base.yaml")


def timed_round_robin(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median times, one call of each in turn per round, so background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up: allocator, kernels, lazy inits
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_pair(device: torch.device) -> tuple[UNetModel, torch.nn.Module]:
    """Our U-Net with random weights and diffusers' with the same weights, converted by diffusers' own code."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as conv

    cfg = yaml.safe_load(CONFIG.read_text())
    torch.manual_seed(0)
    ours = UNetModel(**cfg["model"]["params"]["unet_config"]["params"]).eval()
    with torch.no_grad():  # the zero-initialised output layers would make the outputs trivially equal
        for p in ours.parameters():
            if (p == 0).all():
                p.normal_(0, 0.01)
    ckpt = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    dcfg = conv.create_unet_diffusers_config_from_ldm(cfg, ckpt)
    theirs = UNet2DConditionModel(**dcfg).eval()
    theirs.load_state_dict(conv.convert_ldm_unet_checkpoint(ckpt, dcfg), strict=True)
    return ours.to(device), theirs.to(device)


def build_sdxl_pair(device: torch.device, channels: int) -> tuple[UNetModel, torch.nn.Module]:
    """SDXL base's U-Net at `channels` (a multiple of its 64-wide heads): diffusers' with random weights (none left
    at zero) and ours with the same, mapped by ldm.io.sdxl_keys as an SDXL file's are."""
    from diffusers import UNet2DConditionModel

    from ldm.io.diffusers_keys import from_diffusers
    from ldm.io.sdxl_keys import sdxl_unet_names

    params = yaml.safe_load(SDXL_CONFIG.read_text())["model"]["params"]["unet_config"]["params"]
    params = {**params, "model_channels": channels}
    heads = [channels * m // params["num_head_channels"] for m in params["channel_mult"]]
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(channels * m for m in params["channel_mult"]),
        layers_per_block=params["num_res_blocks"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=tuple(params["transformer_depth"]),
        attention_head_dim=tuple(heads),  # diffusers' name for SDXL's head counts
        cross_attention_dim=params["context_dim"],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=params["adm_in_channels"],
    ).eval()
    with torch.no_grad():  # the zero-initialised output layers would make the outputs trivially equal
        for p in theirs.parameters():
            if (p == 0).all():
                p.normal_(0, 0.01)
    ours = UNetModel(**params).eval()
    names = sdxl_unet_names(list(ours.state_dict()), ours.num_res_blocks)
    ours.load_state_dict(from_diffusers(theirs.state_dict(), names), strict=True)
    return ours.to(device), theirs.to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    p.add_argument("--sdxl", action="store_true", help="SDXL base's U-Net at a reduced width (module doc)")
    p.add_argument("--sdxl-channels", type=int, default=128, help="SDXL's model_channels (320 full size)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="eager against torch.compile (inductor, frozen weights) rows instead: minutes to compile",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ours, theirs = build_sdxl_pair(device, args.sdxl_channels) if args.sdxl else build_pair(device)
    x = torch.randn(args.batch, 4, args.size, args.size, device=device)
    t = torch.full((args.batch,), 500, device=device)
    c = torch.randn(args.batch, 77, 2048 if args.sdxl else 1024, device=device)
    ours_extra, their_extra = {}, {}  # SDXL's vector: ours built by ldm, theirs from the same pooled output and sizes
    if args.sdxl:
        from ldm.models.sdxl_conditioning import MicroConditions, vector
        from ldm.models.sdxl_text import BASE_MICRO

        pooled, pixels = torch.randn(args.batch, 1280, device=device), args.size * 8
        micro = MicroConditions((pixels, pixels), (pixels, pixels))
        ours_extra = {"y": vector(pooled, micro, BASE_MICRO)}
        time_ids = torch.tensor([micro.values(BASE_MICRO)], device=device).expand(args.batch, -1)
        their_extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    bf16 = not args.no_bf16 and (device.type == "cuda" or cpu_has_fast_bf16())

    def sync(out: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def autocast(enabled: bool):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def run(model, channels_last=False, amp=False, dtype=torch.float32, diffusers=False):
        xin = x.to(dtype).contiguous(memory_format=torch.channels_last) if channels_last else x.to(dtype)

        def call():
            with autocast(amp):
                extra = their_extra if diffusers else {k: v.to(dtype) for k, v in ours_extra.items()}
                out = model(xin, t, c.to(dtype), **extra)
            return sync((out.sample if diffusers else out).float())

        return call

    fns = {"diffusers fp32": run(theirs, diffusers=True), "ldm fp32": run(ours)}
    if args.compile:  # eager against compiled only: a compiled model holds its frozen weights beside the eager ones
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # what ldm's --compile does (LatentDiffusion.compile_unet)
        fns["ldm fp32, compiled (--compile)"] = run(torch.compile(ours))  # the eager row calls `ours` itself
        if bf16:
            ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16, memory_format=torch.channels_last)
            fns["ldm bf16 weights, channels-last, autocast (CLI --precision bf16)"] = run(
                ours_bf16, channels_last=True, amp=True, dtype=torch.bfloat16
            )
            fns["the same, compiled (--precision bf16 --compile)"] = run(
                torch.compile(ours_bf16), channels_last=True, amp=True, dtype=torch.bfloat16
            )
    else:
        ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        fns["ldm fp32, channels-last"] = run(ours_cl, channels_last=True)
        if bf16:
            fns["diffusers bf16 autocast"] = run(theirs, amp=True, diffusers=True)
            fns['ldm bf16 autocast (API precision="bf16")'] = run(ours, amp=True)
            fns["ldm bf16 autocast, channels-last"] = run(ours_cl, channels_last=True, amp=True)
            ours_bf16 = copy.deepcopy(ours_cl).to(torch.bfloat16)
            fns["ldm bf16 weights, channels-last, autocast (CLI --precision bf16)"] = run(
                ours_bf16, channels_last=True, amp=True, dtype=torch.bfloat16
            )

    with torch.no_grad():  # inductor's freezing needs no_grad, not inference mode
        medians = timed_round_robin(fns, args.repeats)
        reference = fns["diffusers fp32"]()
        errors = {name: ((fn() - reference).norm() / reference.norm()).item() for name, fn in fns.items()}

    params = sum(p.numel() for p in ours.parameters()) / 1e6
    what = f"SDXL base U-Net at model_channels {args.sdxl_channels}" if args.sdxl else "SD 2-base U-Net"
    print(
        f"{what} ({params:.0f} M params), batch {args.batch}, latent {args.size}x{args.size}, {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, fast bf16 on this CPU: {cpu_has_fast_bf16()}\n"
    )
    print(f"| implementation | forward (s, median of {args.repeats}) | time / diffusers fp32 | relative difference |")
    print("| --- | --- | --- | --- |")
    base = medians["diffusers fp32"]
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x | {errors[name]:.1e} |")


if __name__ == "__main__":
    main()
