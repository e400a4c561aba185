"""Guided progressive distillation: the maths of a halving step, the guidance embedding of a student U-Net,
a student that learns its teacher (a one-step student nearer the teacher's two steps than the teacher's own one
step), sampling a student, resume in the middle
of a stage, `ldm distill` over stages, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import write_training_base

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.distillation import ddim_step, guided_prediction, halving_grid, halving_target
from ldm.diffusion.parameterisation import DiscreteTimeDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main as cli_main
from ldm.sampling.denoisers import CFGDenoiser
from ldm.sampling.samplers import sample_ddim
from ldm.training.config_checks import TrainConfigError
from ldm.training.distill_module import DistillationError
from ldm.training.run import train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

QUIET = [
    "data.val_fraction=0",
    "logging.sample_every_n_steps=0",
    "logging.checkpoint_every_n_steps=0",
    "logging.csv=false",
    "training.ema_decay=null",
    "training.cond_dropout=0",
]
STUDENT = "model.params.unet_config.params.guidance_embed=true"


# ---- the maths ---------------------------------------------------------------------------------------------
def test_one_student_step_with_the_halving_target_lands_where_two_teacher_steps_do():
    g = torch.Generator().manual_seed(0)
    x, x_c = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    sigma_a, sigma_c = torch.tensor([14.6, 3.0, 0.7]), torch.tensor([3.0, 0.0, 0.1])
    target = halving_target(x, sigma_a, sigma_c, x_c)
    assert torch.allclose(ddim_step(x, sigma_a, sigma_c, target), x_c, atol=1e-5)
    assert torch.equal(target[1], x_c[1])  # a last step to sigma 0: the prediction is the landing point


def test_halving_grids_nest_and_start_at_the_highest_noise():
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012))
    for n in (16, 8, 4, 2):
        fine, coarse = halving_grid(ac, n), halving_grid(ac, n // 2) if n > 2 else get_sigmas(ac, 1, "trailing")
        assert torch.equal(fine[::2], coarse), n
        assert fine[0] == get_sigmas(ac, 1, "trailing")[0] and fine[-1] == 0
    with pytest.raises(InvalidOptionError, match="even number"):
        halving_grid(ac, 3)


def test_guided_prediction_with_per_sample_scales_is_classifier_free_guidance():
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(4, 4, generator=g)

    def denoiser(x, sigma, context):  # any function of (x, sigma, context) will do
        per_sample = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return torch.einsum("bchw,cd->bdhw", x, weights) * per_sample / (1 + sigma.view(-1, 1, 1, 1))

    x, sigma = torch.randn(2, 4, 3, 3, generator=g), torch.tensor([2.0, 2.0])
    cond, uncond = {"context": torch.full((2, 5, 8), 0.7)}, {"context": torch.full((2, 5, 8), -0.2)}
    for w in (1.0, 4.5):
        expected = CFGDenoiser(denoiser, cond, uncond, w)(x, sigma)
        got = guided_prediction(denoiser, x, sigma, torch.full((2,), w), cond, uncond)
        assert torch.allclose(got, expected, atol=1e-6)


# ---- the student U-Net ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=24)


@pytest.fixture(scope="module")
def teacher_file(shapes, tmp_path_factory) -> Path:
    """A tiny teacher (random weights, output layers not zero) as model.safetensors + model.yaml."""
    cfg = tiny_train_config("ldm", shapes, tmp_path_factory.mktemp("unused"))
    return write_training_base(cfg, tmp_path_factory.mktemp("teacher"))


def student_config(shapes, run_dir, teacher_file, *extra):
    return tiny_train_config("ldm", shapes, run_dir, QUIET + [STUDENT, f"distill.teacher={teacher_file}", *extra])


def test_a_new_guidance_embedding_starts_as_the_teacher_and_then_follows_w(shapes, teacher_file, tmp_path):
    cfg = student_config(shapes, tmp_path, teacher_file)
    teacher = load_model(teacher_file.with_suffix(".yaml"), teacher_file, device="cpu")
    from ldm.training.run import build_module

    student = build_module(cfg).model
    g = torch.Generator().manual_seed(2)
    x, t, c = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([10, 600]), teacher.encode_text(["red", "blue"])
    with torch.no_grad():
        plain = teacher.unet(x, t, context=c)
        for w in (0.0, 7.5):  # the embedding's last layer is zero: the student is the teacher whatever w
            assert torch.equal(student.unet(x, t, context=c, guidance=torch.full((2,), w)), plain)
        student.unet.guidance_embed[2].weight.normal_(0, 0.1)
        a = student.unet(x, t, context=c, guidance=torch.full((2,), 1.0))
        b = student.unet(x, t, context=c, guidance=torch.full((2,), 7.5))
    assert not torch.allclose(a, b)
    with pytest.raises(InvalidOptionError, match="guidance"):
        teacher.unet(x, t, context=c, guidance=torch.full((2,), 1.0))
    with pytest.raises(InvalidOptionError, match="guidance"):
        student.unet(x, t, context=c)


# ---- students learn -----------------------------------------------------------------------------------------
def latent_samples(model, steps: int, scale: float, embedded: bool, prompts=("red circle", "blue square")):
    """DDIM (eta 0) on the trailing grid from fixed noise, guided at `scale`, in latent space."""
    ctx = model.encode_text(list(prompts) + [""] * len(prompts))
    cond, uncond = {"context": ctx[: len(prompts)]}, {"context": ctx[len(prompts) :]}
    sigmas = get_sigmas(model.alphas_cumprod, steps, "trailing")
    x = torch.randn(len(prompts), 4, 4, 4, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    inner = DiscreteTimeDenoiser(model.unet, parameterisation=model.parameterisation())

    def guided(x, sigma):
        return guided_prediction(inner, x, sigma, torch.full((x.shape[0],), scale), cond, uncond, embedded)

    return sample_ddim(guided, x, sigmas, disable=True)


def test_a_one_step_student_is_nearer_the_teachers_two_steps_than_the_teachers_one_step(shapes, teacher_file, tmp_path):
    cfg = student_config(
        shapes,
        tmp_path / "run",
        teacher_file,
        "distill.stage=2",
        "distill.scale_range=[3, 3]",
        "trainer.max_steps=60",
        "training.lr=2e-5",
        "data.batch_size=8",
    )
    module, _ = train(cfg)
    teacher = load_model(teacher_file.with_suffix(".yaml"), teacher_file, device="cpu")
    student = load_model(tmp_path / "run" / "model.yaml", tmp_path / "run" / "model.safetensors", device="cpu")
    assert student.guidance_embedded and not teacher.guidance_embedded
    with torch.no_grad():
        two = latent_samples(teacher, 2, 3.0, embedded=False)
        one = latent_samples(teacher, 1, 3.0, embedded=False)
        distilled = latent_samples(student, 1, 3.0, embedded=True)
    assert (distilled - two).pow(2).mean() < (one - two).pow(2).mean()


# ---- sampling a student -------------------------------------------------------------------------------------
def test_a_student_samples_with_one_evaluation_per_step_and_refuses_negative_prompts(shapes, teacher_file, tmp_path):
    from ldm.tasks.prompts import PromptError
    from ldm.tasks.txt2img import txt2img

    cfg = student_config(shapes, tmp_path / "run", teacher_file, "trainer.max_steps=1")
    train(cfg)
    student = load_model(tmp_path / "run" / "model.yaml", tmp_path / "run" / "model.safetensors", device="cpu")
    calls = []
    unet_forward = student.unet.forward
    student.unet.forward = lambda x, *a, **k: calls.append(x.shape[0]) or unet_forward(x, *a, **k)
    images = txt2img(student, "red circle", steps=4, guidance_scale=5.0, seed=0, spacing="trailing", progress=False)
    assert len(images) == 1 and calls == [1, 1, 1, 1]  # one image, one evaluation a step (no guidance pair)
    assert images.settings["steps"] == 4 and images.settings["guidance_scale"] == 5.0
    with pytest.raises(PromptError, match="negative prompt"):
        txt2img(student, "red circle", negative_prompt="blue", steps=2, progress=False)


# ---- runs ---------------------------------------------------------------------------------------------------
def test_resume_in_the_middle_of_a_stage_matches_an_uninterrupted_one(shapes, teacher_file, tmp_path):
    common = ["distill.stage=4", "logging.checkpoint_every_n_steps=3", "training.ema_decay=0.9"]
    train(student_config(shapes, tmp_path / "a", teacher_file, *common, "trainer.max_steps=6"))
    train(student_config(shapes, tmp_path / "b", teacher_file, *common, "trainer.max_steps=3"))
    assert cli_main(["train", "--resume", str(tmp_path / "b"), "trainer.max_steps=6"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert not any(k.startswith("teacher") for k in a["state_dict"])  # the teacher is not saved, only rebuilt
    differing = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differing, differing[:5]
    start = torch.load(tmp_path / "b" / "checkpoints" / "step-000003.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(
        start["model.unet.guidance_embed.2.weight"], b["state_dict"]["model.unet.guidance_embed.2.weight"]
    )


def test_ldm_distill_runs_the_stages_in_turn_and_resumes_after_the_finished_ones(shapes, teacher_file, tmp_path):
    from ldm.training.tiny import TINY_CONFIGS

    run_dir = tmp_path / "distill"
    args = [
        "distill",
        "--config",
        str(TINY_CONFIGS["ldm"]),
        f"data.root={shapes}",
        f"logging.run_dir={run_dir}",
        *QUIET,
        STUDENT,
        f"distill.teacher={teacher_file}",
        "distill.stages=[guidance, 4, 2]",
        "distill.steps_per_stage=[2, 2, 1]",
        "trainer.enable_progress_bar=false",
        "logging.tensorboard=false",
    ]
    assert cli_main(args) == 0
    exports = [run_dir / name / "model.safetensors" for name in ("guidance", "halve-4", "halve-2")]
    assert all(p.is_file() for p in exports)
    halve = torch.load(run_dir / "halve-2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert halve["ldm"]["config"]["distill"]["teacher"] == (run_dir / "halve-4" / "model.safetensors").as_posix()
    assert halve["global_step"] == 1
    stamps = [p.stat().st_mtime_ns for p in exports]
    assert cli_main(args + ["--resume"]) == 0  # every stage is finished: nothing is trained again
    assert [p.stat().st_mtime_ns for p in exports] == stamps
    assert cli_main(args) == 2  # without --resume the first stage's folder holds a run: refused in one line


def test_bad_distillation_settings_are_refused_in_one_line(shapes, teacher_file, tmp_path, capsys):
    with pytest.raises(TrainConfigError, match="distill.stage must be"):
        student_config(shapes, tmp_path, teacher_file, "distill.stage=3")
    with pytest.raises(TrainConfigError, match="scale_range"):
        student_config(shapes, tmp_path, teacher_file, "distill.scale_range=[5, 1]")
    with pytest.raises(TrainConfigError, match="unet.guidance_embed"):
        student_config(shapes, tmp_path, teacher_file, "lora.rank=2")
    with pytest.raises(TrainConfigError, match="init.lora"):
        student_config(shapes, tmp_path, teacher_file, f"init.lora={teacher_file}")
    from ldm.training.run import build_module

    plain = tiny_train_config("ldm", shapes, tmp_path, QUIET + [f"distill.teacher={teacher_file}"])
    with pytest.raises(DistillationError, match="guidance_embed"):
        build_module(plain)
    stage1_from_student = student_config(shapes, tmp_path / "x", teacher_file, "trainer.max_steps=1")
    train(stage1_from_student)
    again = student_config(shapes, tmp_path / "y", tmp_path / "x" / "model.safetensors")
    with pytest.raises(DistillationError, match="already takes the scale"):
        build_module(again)


def test_a_lora_student_keeps_one_adapter_and_each_stage_starts_as_its_teacher(shapes, teacher_file, tmp_path):
    from ldm.training.distill import stage_configs
    from ldm.training.run import build_module
    from ldm.training.tiny import TINY_CONFIGS

    run_dir = tmp_path / "distill"
    lora = [
        "lora.rank=2",
        "lora.targets=[attn, ff]",
        "lora.train_whole=[unet.guidance_embed]",
        "training.lr=1e-3",
        f"init.checkpoint={teacher_file}",
    ]
    args = [
        "distill",
        "--config",
        str(TINY_CONFIGS["ldm"]),
        f"data.root={shapes}",
        f"logging.run_dir={run_dir}",
        *QUIET,
        STUDENT,
        f"distill.teacher={teacher_file}",
        "distill.stages=[guidance, 2]",
        "distill.steps_per_stage=3",
        "trainer.enable_progress_bar=false",
        "logging.tensorboard=false",
        *lora,
    ]
    assert cli_main(args) == 0
    first, second = run_dir / "guidance" / "lora.safetensors", run_dir / "halve-2" / "lora.safetensors"
    assert first.is_file() and second.is_file() and not (run_dir / "halve-2" / "model.safetensors").exists()
    from ldm.io.checkpoint import load_state_dict

    # student.yaml beside it: the derived model's config, which the usual loader and txt2img take.
    from ldm.tasks.txt2img import txt2img

    model = load_model(run_dir / "halve-2" / "student.yaml", second, device="cpu")
    assert model.guidance_embedded
    assert len(txt2img(model, "red circle", steps=1, spacing="trailing", progress=False)) == 1
    state = load_state_dict(second)
    assert any(k.startswith("unet.guidance_embed.") for k in state) and any(k.endswith("lora_up.weight") for k in state)

    # Stage 2 again, as it starts: its student (base + stage 1's adapter, trainable) is its teacher exactly.
    cfg = stage_configs(
        tiny_train_config(
            "ldm",
            shapes,
            run_dir,
            QUIET + [STUDENT, f"distill.teacher={teacher_file}", "distill.stages=[guidance, 2]", *lora],
        )
    )[1]
    assert cfg["init"]["lora"] == str(first) and cfg["distill"]["teacher"] == str(first)
    module = build_module(cfg)
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([50, 900])
    c, w = module.model.encode_text(["red", "blue"]), torch.full((2,), 4.0)
    with torch.no_grad():
        student = module.model.unet(x, t, context=c, guidance=w)
        teacher = module.teacher.unet(x, t, context=c, guidance=w)
    assert torch.allclose(student, teacher, atol=1e-5)
    assert not torch.allclose(student, module.model.unet(x, t, context=c, guidance=torch.full((2,), 1.0)))
