"""Lower a run checkpoint's learning rate in place of a schedule (issue 38, v3's last piece).

The library's schedule is warm-up then constant, and on --resume the optimiser's saved state (its learning rate
included) wins over the config. To anneal a long run without losing AdamW's moments, this rewrites the
optimiser's and the scheduler's base rate in a copy of the checkpoint, which the run then resumes from.

    python scripts/anneal_checkpoint.py IN.ckpt OUT.ckpt --lr 2e-5
"""

import argparse

import torch

p = argparse.ArgumentParser()
p.add_argument("src")
p.add_argument("dst")
p.add_argument("--lr", type=float, required=True)
a = p.parse_args()
ckpt = torch.load(a.src, map_location="cpu", weights_only=False)
for opt in ckpt["optimizer_states"]:
    for group in opt["param_groups"]:
        print("optimizer lr", group["lr"], "initial", group.get("initial_lr"), "->", a.lr)
        group["lr"] = a.lr
        group["initial_lr"] = a.lr
for sched in ckpt["lr_schedulers"]:
    print("scheduler base_lrs", sched.get("base_lrs"), "last_lr", sched.get("_last_lr"), "->", a.lr)
    sched["base_lrs"] = [a.lr for _ in sched["base_lrs"]]
    sched["_last_lr"] = [a.lr for _ in sched["_last_lr"]]
ckpt["ldm"]["config"]["training"]["lr"] = a.lr
torch.save(ckpt, a.dst)
