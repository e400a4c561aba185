"""Training-step cost of a config on one CPU thread, bf16 autocast against fp32 (issue 38's throughput figures).

Measures the thread's CPU time (time.thread_time) per optimiser step, not wall time, so other work on a shared
CPU does not enter the figure (it can still slow a step through shared caches and SMT siblings; the wall time is
printed beside it). The same batches go through both precisions; the first --warmup steps are not counted.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/bench_v3_train_step.py configs/emoji/v3-unet-warm.yaml --steps 10
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/bench_v3_train_step.py configs/emoji/clip.yaml --steps 5
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    from ldm.training.config import is_clip, load_train_config
    from ldm.training.run import build_data, build_module

    cfg = load_train_config(args.config, args.overrides)
    data = build_data(cfg)
    data.setup()
    stream = iter(torch.utils.data.DataLoader(data.stream(0), batch_size=cfg["data"]["batch_size"]))
    batches = [next(stream) for _ in range(args.steps + args.warmup)]
    for precision in args.precisions.split(","):
        module = build_module(cfg)
        module.train()
        opt = module.configure_optimizers()["optimizer"]
        params = [p for group in opt.param_groups for p in group["params"]]
        cpu, wall = [], []
        for i, batch in enumerate(batches):
            t_cpu, t_wall = time.thread_time(), time.perf_counter()
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
            with autocast:
                if is_clip(cfg):
                    loss = module.loss(batch)[0]
                else:
                    loss = module.loss(batch, torch.Generator().manual_seed(i))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if i >= args.warmup:
                cpu.append(time.thread_time() - t_cpu)
                wall.append(time.perf_counter() - t_wall)
        n = len(cpu)
        print(
            f"{args.config} {precision}: {sum(cpu) / n:.2f} s CPU/step ({n / sum(cpu):.2f} steps per CPU-second), "
            f"wall {sum(wall) / n:.2f} s/step, batch {cfg['data']['batch_size']}, loss {float(loss.detach()):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
