"""U-Net forward time at SD 2-base size: ours in fp32 and bf16 against diffusers' UNet2DConditionModel in fp32,
same weights, all variants interleaved in one run.

    python benchmarks/unet_speed.py [--batch 2] [--size 32] [--repeats 3] [--threads N] [--device cpu] [--compile]
    python benchmarks/unet_speed.py --sdxl [--sdxl-channels 128] ...
    python benchmarks/unet_speed.py --openvino [--openvino-cache DIR] [--size 64] ...

--openvino: the OpenVINO backend's rows (ldm.backends, --backend openvino) beside diffusers' fp32, ours in fp32 and
ours as --precision bf16 runs it: our U-Net exported to OpenVINO IR (timed once: the export; then each inference
precision's compile, INFERENCE_PRECISION_HINT set explicitly to f32 and to bf16), interleaved with the others. It
prints the export and compile times, the memory the compiled models hold (RSS growth) and the process's peak RSS
before and after exporting. --openvino-cache DIR keeps the IR (a second run reuses it: no export).

--sdxl: SDXL base's U-Net instead (configs/stable-diffusion/sd_xl_base.yaml: its depths, 2048-wide context and
2816-wide vector) at a reduced width (model_channels 128, not 320: its fp32 rows and copies would not fit here),
against diffusers' UNet2DConditionModel with addition_embed_type "text_time" holding the same weights; ours gets
the vector ldm.models.sdxl_conditioning builds from the same pooled output and sizes.

--sdxl --full-size: SDXL base's real U-Net (model_channels 320, 2.6 B parameters) in bf16, built on the meta device
and materialised once in bf16 (no fp32 copy), each tensor filled with seeded random values by its name, so that
ldm's (the CLI's --precision bf16: bf16 weights, channels-last, autocast) and diffusers' (bf16 weights, as
StableDiffusionXLPipeline with torch_dtype bf16 runs it) hold the same weights without either process holding both.
Each runs in its own process (this script, --worker), so that each one's peak RSS (ru_maxrss, building included) is
its own; the parent builds them one after the other, then asks each for one step in turn: a warm-up round and
--repeats timed rounds. Prints seconds per step, build time, peak RSS (and peak CUDA memory on a GPU), and the
relative difference between the two last outputs. --sdxl-channels 64 --size 8 checks the script in seconds.

    python benchmarks/unet_speed.py --sdxl --full-size --size 128 --batch 1 --repeats 2 --threads 1

Batch 2 is one guided sampling step (conditional + unconditional). Prints a markdown table: median time, the
ratio to diffusers' fp32 time, and each output's relative difference from diffusers' fp32 output.
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # its --full-size workers, and gpu.py's, find ldm

from ldm.backends.openvino_networks import INFERENCE_PRECISIONS  # noqa: E402
from ldm.core.devices import cpu_has_fast_bf16  # noqa: E402
from ldm.models.unet import UNetModel  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stable-diffusion" / "v2-inference.yaml"
SDXL_CONFIG = CONFIG.with_name("sd_xl_base.yaml")


def timed_round_robin(
    fns: dict[str, Callable[[], torch.Tensor]], repeats: int, first_calls: dict[str, float] | None = None
) -> dict[str, float]:
    """Median times, one call of each in turn per round, so background load hits all alike. `first_calls`, if
    given, gets each warm-up call's seconds (a compiled model's first call is its compile)."""
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()  # warm-up: allocator, kernels, lazy inits
        if first_calls is not None:
            first_calls[name] = time.perf_counter() - t0
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


def sdxl_params(channels: int) -> dict:
    """Our UNetModel's arguments for SDXL base at model_channels `channels` (320 full size)."""
    params = yaml.safe_load(SDXL_CONFIG.read_text())["model"]["params"]["unet_config"]["params"]
    return {**params, "model_channels": channels}


def sdxl_diffusers_unet(params: dict) -> torch.nn.Module:
    """diffusers' UNet2DConditionModel in SDXL base's layout (addition_embed_type "text_time") for our `params`."""
    from diffusers import UNet2DConditionModel

    channels = params["model_channels"]
    heads = [channels * m // params["num_head_channels"] for m in params["channel_mult"]]
    return UNet2DConditionModel(
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
    )


def build_sdxl_pair(device: torch.device, channels: int) -> tuple[UNetModel, torch.nn.Module]:
    """SDXL base's U-Net at `channels` (a multiple of its 64-wide heads): diffusers' with random weights (none left
    at zero) and ours with the same, mapped by ldm.io.sdxl_keys as an SDXL file's are."""
    from ldm.io.diffusers_keys import from_diffusers
    from ldm.io.sdxl_keys import sdxl_unet_names

    params = sdxl_params(channels)
    torch.manual_seed(0)
    theirs = sdxl_diffusers_unet(params).eval()
    with torch.no_grad():  # the zero-initialised output layers would make the outputs trivially equal
        for p in theirs.parameters():
            if (p == 0).all():
                p.normal_(0, 0.01)
    ours = UNetModel(**params).eval()
    names = sdxl_unet_names(list(ours.state_dict()), ours.num_res_blocks)
    ours.load_state_dict(from_diffusers(theirs.state_dict(), names), strict=True)
    return ours.to(device), theirs.to(device)


def seeded_value(name: str, shape: torch.Size) -> torch.Tensor:
    """A random fp32 tensor fixed by our parameter `name` alone, so that two processes fill the same weights into
    either layout without one holding the other's copy: scaled by fan-in (norm weights near 1, small biases)."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=generator)
    if len(shape) > 1:
        return noise / math.sqrt(shape[1:].numel())
    return noise * 0.02 if name.endswith("bias") else 1 + noise * 0.1


def build_full_size(implementation: str, channels: int, device: torch.device) -> torch.nn.Module:
    """One implementation's SDXL U-Net, built on the meta device and materialised once in bf16 (no fp32 copy of
    2.6 B parameters), each tensor filled by seeded_value under our name, mapped by ldm.io.sdxl_keys for diffusers'."""
    from ldm.io.sdxl_keys import sdxl_unet_names

    params = sdxl_params(channels)
    with torch.device("meta"):
        ours = UNetModel(**params)
        theirs = sdxl_diffusers_unet(params) if implementation == "diffusers" else None
    names = sdxl_unet_names(list(ours.state_dict()), ours.num_res_blocks)
    model = (ours if theirs is None else theirs).to(torch.bfloat16).to_empty(device=device).eval()
    tensors = model.state_dict()
    if theirs is not None and set(names.values()) != set(tensors):
        raise SystemExit("diffusers' SDXL U-Net and ldm.io.sdxl_keys disagree on the tensor names")
    with torch.no_grad():
        for own, param in ours.state_dict().items():
            tensors[own if theirs is None else names[own]].copy_(seeded_value(own, param.shape))
    return model.to(memory_format=torch.channels_last) if theirs is None else model


def serve_full_size(args) -> None:
    """A worker process for --full-size: builds one implementation, then answers the parent's commands on stdin,
    one line each: `step` (one timed U-Net call; prints its seconds), `save PATH` (the last output),
    `quit` (prints the peak RSS in MiB of this process, and the peak CUDA memory)."""
    torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device)
    started = time.perf_counter()
    model = build_full_size(args.worker, args.sdxl_channels, device)
    print(f"ready {time.perf_counter() - started:.1f} {rss_mib():.0f}", flush=True)
    from ldm.models.sdxl_conditioning import MicroConditions, vector
    from ldm.models.sdxl_text import BASE_MICRO

    torch.manual_seed(1)  # the same inputs in both workers
    bf16, batch, pixels = torch.bfloat16, args.batch, args.size * 8
    x = torch.randn(batch, 4, args.size, args.size).to(device, bf16)
    t = torch.full((batch,), 500, device=device)
    context = torch.randn(batch, 77, sdxl_params(args.sdxl_channels)["context_dim"]).to(device, bf16)
    pooled = torch.randn(batch, 1280).to(device, bf16)
    micro = MicroConditions((pixels, pixels), (pixels, pixels))
    if args.worker == "ldm":  # the CLI's --precision bf16: bf16 weights, channels-last, autocast

        def call():
            with torch.autocast(device.type, dtype=bf16):
                return model(
                    x.contiguous(memory_format=torch.channels_last), t, context, y=vector(pooled, micro, BASE_MICRO)
                )

    else:  # as StableDiffusionXLPipeline(torch_dtype=torch.bfloat16) calls it
        time_ids = torch.tensor([micro.values(BASE_MICRO)], device=device, dtype=bf16).expand(batch, -1)

        def call():
            extra = {"text_embeds": pooled, "time_ids": time_ids}
            return model(x, t, context, added_cond_kwargs=extra).sample

    out = None
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "step":
            started = time.perf_counter()
            with torch.no_grad():
                out = call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            print(f"{time.perf_counter() - started:.3f}", flush=True)
        elif command == "save":
            torch.save(out.float().cpu(), rest)
            print("saved", flush=True)
        elif command == "quit":
            cuda = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "—"
            print(f"{rss_mib():.0f} {cuda}", flush=True)
            return


def rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    """One implementation in its own process (so that its peak RSS is its own), driven line by line."""

    def __init__(self, name: str, args, timeout: float):
        command = [sys.executable, __file__, "--sdxl", "--full-size", "--worker", name, "--batch", str(args.batch)]
        command += ["--size", str(args.size), "--sdxl-channels", str(args.sdxl_channels), "--device", args.device]
        command += ["--threads", str(args.threads or 1)]
        self.name, self.timeout = name, timeout
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def ask(self, command: str | None, timeout: float | None = None) -> str:
        if command is not None:
            self.process.stdin.write(f"{command}\n".encode())
        ready, _, _ = select.select([self.process.stdout], [], [], timeout or self.timeout)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.process.kill()
            raise SystemExit(f"{self.name}: no answer to {command or 'start'} within {timeout or self.timeout:.0f} s")
        return line


def full_size(args) -> None:
    """--full-size: ldm and diffusers each in a worker process, built one after the other, steps interleaved."""
    workers, built = {}, {}
    for name in ("ldm", "diffusers"):  # one at a time: building is the memory peak of a bf16 model
        workers[name] = Worker(name, args, args.step_timeout)
        built[name] = workers[name].ask(None, timeout=args.step_timeout * 2).split()
    times: dict[str, list[float]] = {name: [] for name in workers}
    for round_number in range(args.repeats + 1):  # round 0 is the warm-up
        for name, worker in workers.items():
            seconds = float(worker.ask("step"))
            if round_number:
                times[name].append(seconds)
            print(f"{name} step {round_number}: {seconds:.2f} s", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for name, worker in workers.items():
            worker.ask(f"save {tmp}/{name}.pt")
            outputs[name] = torch.load(f"{tmp}/{name}.pt")
    peaks = {name: worker.ask("quit").split() for name, worker in workers.items()}
    for worker in workers.values():
        worker.process.wait(timeout=60)
    error = ((outputs["ldm"] - outputs["diffusers"]).norm() / outputs["diffusers"].norm()).item()
    with torch.device("meta"):
        params = sum(p.numel() for p in UNetModel(**sdxl_params(args.sdxl_channels)).parameters()) / 1e9
    print(
        f"SDXL base U-Net at model_channels {args.sdxl_channels} ({params:.2f} B params), bf16, batch {args.batch}, "
        f"latent {args.size}x{args.size} ({args.size * 8} px), {args.device}, {args.threads or 1} thread(s), "
        f"torch {torch.__version__}, each implementation in its own process; steps interleaved, "
        f"ldm's output against diffusers': relative difference {error:.1e}\n"
    )
    print(
        f"| implementation | s per step (median of {args.repeats}) | time / diffusers | build s | peak RSS MiB | "
        "peak CUDA MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    base = statistics.median(times["diffusers"])
    labels = {
        "ldm": "ldm (CLI `--precision bf16`: bf16 weights, channels-last, autocast)",
        "diffusers": "diffusers UNet2DConditionModel, bf16 weights",
    }
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(
            f"| {labels[name]} | {median:.2f} | {median / base:.2f}x | {built[name][1]} | {peaks[name][0]} | "
            f"{peaks[name][1]} |"
        )


def openvino_rows(ours, x, t, c, extra, cache: str | None, bf16: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """Our U-Net on OpenVINO (ldm.backends.openvino_networks), one row per inference precision set explicitly."""
    from ldm.backends.openvino_networks import OpenVINONetwork, TracedUNet

    named = [("x", x), ("timesteps", t.float()), ("context", c), *extra.items()]
    names = [name for name, _ in named]
    folder = cache or tempfile.mkdtemp(prefix="ldm-openvino-")
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    rows = {}
    for precision in precisions:
        network = OpenVINONetwork("unet", TracedUNet(ours, names), folder, precision)
        rss, peak, start = current_rss_mib(), rss_mib(), time.perf_counter()
        network(named)  # the export (first precision, without a cache), then this precision's compile
        seconds = time.perf_counter() - start
        export = (
            f"export {network.exports[0]:.1f} s + compile {seconds - network.exports[0]:.1f} s"
            if (network.exports)
            else f"compile {seconds:.1f} s (IR from the cache)"
        )
        print(
            f"OpenVINO {precision} (INFERENCE_PRECISION_HINT {INFERENCE_PRECISIONS[precision]}): {export}; "
            f"RSS +{current_rss_mib() - rss:.0f} MiB held; peak RSS {peak:.0f} -> {rss_mib():.0f} MiB"
        )
        label = (
            "ldm on OpenVINO, f32 (--backend openvino)"
            if precision == "fp32"
            else ("ldm on OpenVINO, bf16 (--backend openvino --precision bf16)")
        )
        rows[label] = lambda network=network: network(named)
    return rows


def current_rss_mib() -> float:
    """This process's resident memory now (Linux: /proc/self/statm, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="latent size (32 = 256 px, 64 = 512 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    p.add_argument("--sdxl", action="store_true", help="SDXL base's U-Net at a reduced width (module doc)")
    p.add_argument("--sdxl-channels", type=int, help="SDXL's model_channels (128; with --full-size 320)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="eager against torch.compile (inductor, frozen weights) rows instead: minutes to compile",
    )
    p.add_argument(
        "--full-size",
        action="store_true",
        help="with --sdxl: the real width (model_channels 320) in bf16, ldm and diffusers each in its own process",
    )
    p.add_argument("--openvino", action="store_true", help="the OpenVINO backend's rows (module doc)")
    p.add_argument("--openvino-cache", help="--openvino: keep the exported IR here (default: a temporary folder)")
    p.add_argument("--step-timeout", type=float, default=600, help="--full-size: give up on a step after this")
    p.add_argument("--worker", choices=("ldm", "diffusers"), help=argparse.SUPPRESS)  # --full-size's own processes
    args = p.parse_args()
    if args.full_size and not args.sdxl:
        p.error("--full-size goes with --sdxl")
    args.sdxl_channels = args.sdxl_channels or (320 if args.full_size else 128)
    if args.sdxl and args.sdxl_channels % 64:
        p.error(f"--sdxl-channels {args.sdxl_channels}: SDXL's heads are 64 wide, so a multiple of 64")
    if args.full_size:
        return serve_full_size(args) if args.worker else full_size(args)
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
    if args.openvino:
        fns.update(openvino_rows(ours, x, t, c, ours_extra, args.openvino_cache, bf16))
        if bf16:
            ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16, memory_format=torch.channels_last)
            fns["ldm bf16 weights, channels-last, autocast (CLI --precision bf16)"] = run(
                ours_bf16, channels_last=True, amp=True, dtype=torch.bfloat16
            )
    elif args.compile:  # eager against compiled only: a compiled model holds its frozen weights beside the eager ones
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
            fns["diffusers bf16 autocast"] = run(theirs, amp=True, diffusers=True)
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

    first_calls: dict[str, float] = {}
    with torch.no_grad():  # inductor's freezing needs no_grad, not inference mode
        medians = timed_round_robin(fns, args.repeats, first_calls)
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
    if args.compile:
        print_compile_payback(medians, first_calls)


# each compiled row against the eager row it replaces
COMPILED_ROWS = {
    "ldm fp32, compiled (--compile)": "ldm fp32",
    "the same, compiled (--precision bf16 --compile)": (
        "ldm bf16 weights, channels-last, autocast (CLI --precision bf16)"
    ),
}


def print_compile_payback(medians: dict[str, float], first_calls: dict[str, float], steps: int = 30) -> None:
    """The one-time compile cost (the first call less one compiled step) and after how many images it pays back:
    cost / (steps x the step time it saves), one image being `steps` guided steps at the benchmark's batch."""
    for compiled, eager in COMPILED_ROWS.items():
        if compiled not in medians:
            continue
        cost = first_calls[compiled] - medians[compiled]
        saved = steps * (medians[eager] - medians[compiled])
        payback = f"pays back after {math.ceil(cost / saved)} images" if saved > 0 else "never pays back"
        print(
            f"\n{compiled}: compile {cost:.0f} s (first call {first_calls[compiled]:.0f} s); saves {saved:.1f} s per "
            f"image of {steps} steps against {eager!r}: {payback}"
        )


if __name__ == "__main__":
    main()
