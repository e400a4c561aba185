#!/usr/bin/env python
"""The distilled student against its teacher: the README's few-step table (issue 21).

    python scripts/eval_distill.py --student runs/emoji-distill/halve-8 [--steps 1 2 4 8] [--scale 5] \
        [--max-heldout 100] [--n-train-prompts 100] [--out docs/eval/distill.json] [--table docs/eval/distill.md]

Rows: the student at each of --steps (DDIM on the trailing grid it was distilled on, one U-Net evaluation a
step), the teacher with the same number of U-Net evaluations (guided DDIM: two a step, so half the steps, at
least one), and the teacher at its usual 30 guided steps. Each row is `ldm eval` (ldm.evaluation.report) at one guidance
scale on the same prompts and seeds: NN prompt accuracy on all prompts and on the held-out captions, CLIP FID,
and the wall time per image on this machine.

--student is a stage folder of `ldm distill`: lora.yaml + lora.safetensors over the base (a LoRA student) or
model.yaml + model.safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ldm.core.defaults import default_model_files, shipped_path  # noqa: E402
from ldm.evaluation.report import EvalSettings, evaluate_model, load_real  # noqa: E402
from ldm.formats.load import load_model
from ldm.models.clip import load_clip


def load_student(folder: Path, base: Path):
    from ldm.training.distill_module import is_lora_export, load_lora_teacher

    lora = folder / "lora.safetensors"
    if is_lora_export(lora):
        return load_lora_teacher(lora, folder / "lora.yaml", str(base))
    return load_model(folder / "model.yaml", folder / "model.safetensors", device="cpu")


def row(results: dict, group: str) -> dict:
    return next(r for r in results["rows"] if r["group"] == group and r["scale"] is not None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="a stage folder of ldm distill")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--teacher-steps", type=int, default=30)
    p.add_argument("--scale", type=float, default=5.0)
    p.add_argument("--data", default="data/emoji")
    p.add_argument("--max-heldout", type=int, default=100)
    p.add_argument("--n-train-prompts", type=int, default=100)
    p.add_argument("--out", default=None)
    p.add_argument("--table", default=None)
    args = p.parse_args()

    config, weights = default_model_files("txt2img")
    teacher = load_model(config, weights, device="cpu")
    student = load_student(Path(args.student), Path(weights)).eval()
    clip = load_clip(
        shipped_path("checkpoints/emoji/judge.safetensors"), shipped_path("checkpoints/emoji/judge.json")
    ).eval()
    size = teacher.default_image_size
    real = load_real(args.data, size)

    runs = [(f"student, {n} step{'s' * (n > 1)}", student, n, n, {"spacing": "trailing"}) for n in args.steps]
    teacher_steps = dict.fromkeys(max(1, n // 2) for n in args.steps)  # the same evaluations: two a guided step
    runs += [(f"teacher, {n} guided step{'s' * (n > 1)}", teacher, n, 2 * n, {}) for n in teacher_steps]
    runs.append(
        (f"teacher, {args.teacher_steps} guided steps", teacher, args.teacher_steps, 2 * args.teacher_steps, {})
    )
    table = [
        "| model | U-Net evaluations | NN top-1 (all) | NN top-1 (held-out captions) | FID (CLIP) | s / image |",
        "|---|---|---|---|---|---|",
    ]
    records = {}
    with torch.inference_mode():
        for name, model, steps, nfe, extra in runs:
            settings = EvalSettings(
                scales=(args.scale,),
                steps=steps,
                max_heldout=args.max_heldout,
                n_train_prompts=args.n_train_prompts,
                extra=extra,
            )
            res = evaluate_model(model, clip, args.data, settings, size=size, real=real, on_progress=lambda s: None)
            everything, held = row(res, "all"), row(res, "held-out captions")
            per_image = sum(res["timings"].values()) / everything["n"]
            records[name] = {
                "nfe": nfe,
                "nn_top1": everything["nn_top1"],
                "nn_top1_heldout": held["nn_top1"],
                "fid_clip": everything.get("fid_clip"),
                "seconds_per_image": per_image,
            }
            fid = everything.get("fid_clip")
            table.append(
                f"| {name} | {nfe} | {everything['nn_top1']:.1%} | {held['nn_top1']:.1%} | "
                f"{'—' if fid is None else f'{fid:.4f}'} | {per_image:.3f} |"
            )
            print(table[-1], flush=True)
    text = (
        "\n".join(table) + f"\n\nGuidance scale {args.scale:g}, {everything['n']} prompts, seeds 0..n-1, one CPU run.\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=2))
    if args.table:
        Path(args.table).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
