"""The default model's U-Net call against its arithmetic: is a sampling step compute-bound or overhead-bound?

    python benchmarks/unet_overhead.py [--threads 1] [--calls 15]

One guided step is one U-Net call at batch 2 (CFG's two halves in one batch, ldm.sampling.denoisers.CFGDenoiser). The
script counts the call's floating-point operations (torch.utils.flop_counter), times it (median), times a
1024 x 1024 matmul on the same threads as the attainable rate, and splits the call's CPU time by operator
(torch.profiler). Interleaved with it: the same U-Net in channels-last memory format.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ldm.formats.load import load_model


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(variant="full", device="cpu")
    unet, size = model.unet, model.default_image_size // model.downscale
    x, t = torch.randn(2, 4, size, size), torch.tensor([500, 500])
    cross = [m for name, m in unet.named_modules() if name.endswith("attn2.to_k")]  # the text's width
    context = torch.randn(2, 77, cross[0].in_features) if cross else None
    call = lambda net=unet, inp=x: net(inp, t, context=context)  # noqa: E731
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            call()
        flops = counter.get_total_flops()
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        channels_last = copy.deepcopy(unet).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for _ in range(3):
            call(), call(channels_last, x_cl)
        rows = {"U-Net call": [], "U-Net call, channels-last": [], "1024^2 matmul": []}
        for _ in range(args.calls):  # interleaved, so a busy machine slows each alike
            rows["U-Net call"].append(median_ms(call, 1))
            rows["U-Net call, channels-last"].append(median_ms(lambda: call(channels_last, x_cl), 1))
            rows["1024^2 matmul"].append(median_ms(lambda: a @ b, 1))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                call()
    ms = {k: statistics.median(v) for k, v in rows.items()}
    peak = 2 * 1024**3 / (ms["1024^2 matmul"] / 1000)
    print(
        f"Default model U-Net, batch 2, latent 4x{size}x{size}, {args.threads} thread(s): {flops / 1e9:.2f} GFLOP a call\n"  # noqa: E501
    )
    print("| | median ms | GFLOP/s |\n|---|---|---|")
    print(f"| U-Net call | {ms['U-Net call']:.1f} | {flops / ms['U-Net call'] / 1e6:.1f} |")
    print(
        f"| U-Net call, channels-last | {ms['U-Net call, channels-last']:.1f} | "
        f"{flops / ms['U-Net call, channels-last'] / 1e6:.1f} |"
    )
    print(f"| 1024^2 matmul (attainable) | {ms['1024^2 matmul']:.2f} | {peak / 1e9:.1f} |")
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("\n| operator | share of the call's CPU time |\n|---|---|")
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"| {event.key} | {100 * event.self_cpu_time_total / total:.1f}% |")


if __name__ == "__main__":
    main()
