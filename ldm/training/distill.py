"""`ldm distill`: the stages of guided progressive distillation (ldm.diffusion.distillation), one training run each.

Stage i trains in <logging.run_dir>/<stage name> ("guidance", "halve-16", "halve-8", ...) for its
`distill.steps_per_stage` steps and exports model.safetensors there, which is the teacher of stage i + 1; the
first stage's teacher is `distill.teacher`. A LoRA student (lora.rank > 0, over init.checkpoint) keeps one adapter
throughout: each stage exports lora.safetensors, which teaches the next stage and is where its adapter starts
(init.lora), so the last stage's file alone, over the base, is the few-step model (small enough to ship). With resume, finished stages (their export exists) are skipped and the
current one continues from its last.ckpt, so an interrupted distillation loses at most one checkpoint interval.
"""  # noqa: E501

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from ldm.training.config import load_train_config
from ldm.training.config_checks import TrainConfigError
from ldm.training.run import LAST, train

log = logging.getLogger(__name__)


def stage_name(stage: str | int) -> str:
    return "guidance" if stage == "guidance" else f"halve-{stage}"


def export_name(cfg: dict) -> str:
    """What a stage exports: the whole model, or for a LoRA student its one adapter and guidance embedding."""
    return "lora.safetensors" if cfg["lora"]["rank"] else "model.safetensors"


def stage_configs(cfg: dict) -> list[dict]:
    """One resolved training config per stage of `distill.stages`, each taught by the export of the one before."""
    dist = cfg["distill"]
    if dist["teacher"] is None:
        raise TrainConfigError("ldm distill needs distill.teacher (the teacher's weights file)")
    lora = bool(cfg["lora"]["rank"])
    if lora and not cfg["init"].get("checkpoint"):
        raise TrainConfigError("a LoRA student needs init.checkpoint, the base its one adapter is trained over")
    stages, steps = dist["stages"], dist["steps_per_stage"]
    counts = steps if isinstance(steps, list) else [steps] * len(stages)
    run_dir = Path(cfg["logging"]["run_dir"])
    teacher, teacher_config = dist["teacher"], dist["teacher_config"]
    out = []
    for stage, count in zip(stages, counts):
        stage_cfg = copy.deepcopy(cfg)
        stage_dir = run_dir / stage_name(stage)
        stage_cfg["distill"].update(stage=stage, teacher=str(teacher), teacher_config=teacher_config)
        stage_cfg["logging"]["run_dir"] = stage_dir.as_posix()
        stage_cfg["trainer"]["max_steps"] = int(count)
        if lora and out:  # one adapter throughout: each stage goes on from the one before, which teaches it
            stage_cfg["init"]["lora"] = str(teacher)
        out.append(stage_cfg)
        teacher, teacher_config = stage_dir / export_name(cfg), None  # its .yaml lies beside it
    return out


def run_distillation(config_path: str | os.PathLike, overrides: list[str] | None = None, resume: bool = False) -> int:
    """What `ldm distill` does: every stage in turn; with resume, the finished ones are skipped."""
    cfg = load_train_config(config_path, list(overrides or []))
    for stage_cfg in stage_configs(cfg):
        stage_dir = Path(stage_cfg["logging"]["run_dir"])
        name = stage_name(stage_cfg["distill"]["stage"])
        if resume and (stage_dir / export_name(cfg)).is_file():
            log.info("distillation stage %s: done (%s), skipped", name, stage_dir / export_name(cfg))
            continue
        last = stage_dir / "checkpoints" / "last.ckpt"
        log.info("distillation stage %s: %d steps in %s", name, stage_cfg["trainer"]["max_steps"], stage_dir)
        train(stage_cfg, resume=LAST if resume and last.is_file() else None)
        if stage_cfg["lora"]["rank"]:
            write_student_config(
                stage_dir,
                stage_cfg["init"]["checkpoint"],
                stage_cfg["distill"]["stage"],
                stage_cfg["distill"]["scale_range"],
            )
    return 0


def student_sampling(stage: str | int, scale_range: list[float] | None = None) -> dict:
    """How a stage's student samples (ldm.formats.variants' `sampling:`): a halving stage of N teacher steps lands in N / 2
    DDIM steps on the trailing grid it was trained on; any stage at the default guidance scale, within the scales it
    was distilled for."""
    from ldm.core import defaults

    low, high = scale_range or (defaults.GUIDANCE_SCALE, defaults.GUIDANCE_SCALE)
    sampling: dict = {"guidance_scale": float(min(max(defaults.GUIDANCE_SCALE, low), high))}
    if stage != "guidance":
        sampling.update(steps=int(stage) // 2, spacing="trailing", sampler="ddim")
    return sampling


def write_student_config(
    stage_dir: Path, base: str, stage: str | int = "guidance", scale_range: list[float] | None = None
) -> Path:
    """student.yaml beside a LoRA stage's lora.safetensors: the derived model's inference config (ldm.formats.derived) with
    its name and its own sampling defaults (`student_sampling`), so that `ldm txt2img --config student.yaml --ckpt
    lora.safetensors` samples the student over its base with its steps and spacing."""
    import yaml

    from ldm.io.checkpoint import atomic_path

    node = yaml.safe_load((stage_dir / "lora.yaml").read_text())
    node["base"] = str(Path(base).resolve())
    sampling = student_sampling(stage, scale_range)
    node["name"] = (
        f"student ({stage_name(stage)})"
        if "steps" not in sampling
        else f"{sampling['steps']}-step student ({stage_name(stage)})"
    )
    node["sampling"] = sampling
    path = stage_dir / "student.yaml"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(node, sort_keys=False))
    return path
