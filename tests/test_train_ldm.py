"""Training the tiny latent diffusion model on synthetic shapes: learning, EMA, export, resume, dropout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from factories import with_ctrl_c

from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import load_state_dict
from ldm.training.run import build_data, build_module, train
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=24)


def eval_loss(module, batch: dict, seeds: int = 6) -> float:
    """The diffusion loss at fixed noise/timesteps, averaged over a few draws: comparable before/after training."""
    module.eval()
    with torch.no_grad():
        losses = [module.loss(batch, torch.Generator().manual_seed(s), drop=False).item() for s in range(seeds)]
    return sum(losses) / len(losses)


def fixed_batch(cfg: dict) -> dict:
    data = build_data(cfg)
    data.setup()
    items = [data.train_set[i] for i in range(16)]
    return {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items]}


def test_ldm_learns_and_exports(shapes, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_train_config(
        "ldm",
        shapes,
        run_dir,
        [
            "trainer.max_steps=40",
            "logging.sample_every_n_steps=20",
            "logging.checkpoint_every_n_steps=20",
            "trainer.val_check_interval=20",
            "logging.tensorboard=true",
        ],
    )
    batch = fixed_batch(cfg)
    torch.manual_seed(0)
    before = eval_loss(build_module(cfg), batch)
    module, trainer = train(cfg)
    after = eval_loss(module, batch)
    assert trainer.global_step == 40
    assert after < 0.8 * before, (before, after)

    # Monitoring: CSV losses, TensorBoard events, sample grids, periodic and last checkpoints.
    rows = list(csv.DictReader(open(next((run_dir / "csv").glob("version_*/metrics.csv")))))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)
    assert list((run_dir / "tensorboard").glob("version_*/events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step-000020.png", "step-000040.png"]
    assert {"last.ckpt", "step-000020.ckpt", "step-000040.ckpt"} <= {
        p.name for p in (run_dir / "checkpoints").iterdir()
    }

    # Export: original key layout, EMA U-Net, estimated scale factor in the YAML; loads for inference.
    node = yaml.safe_load((run_dir / "model.yaml").read_text())
    assert node["model"]["params"]["scale_factor"] == pytest.approx(module.model.scale_factor)
    assert module.model.scale_factor != 1.0  # the config's 1.0 was replaced by the estimate
    state = load_state_dict(run_dir / "model.safetensors")
    assert any(k.startswith("model.diffusion_model.") for k in state)
    ema = module.ema.module.state_dict()
    key = "out.2.weight"
    assert torch.equal(state[f"model.diffusion_model.{key}"], ema[key])
    assert not torch.equal(ema[key], module.model.unet.state_dict()[key])  # EMA differs from the live weights
    model = load_model(run_dir / "model.yaml", run_dir / "model.safetensors")
    assert model.scale_factor == pytest.approx(module.model.scale_factor)
    assert torch.equal(model.unet.state_dict()[key], ema[key])

    out = tmp_path / "gen"
    rc = cli_main(
        [
            "txt2img",
            "red square",
            "--config",
            str(run_dir / "model.yaml"),
            "--ckpt",
            str(run_dir / "model.safetensors"),
            "--steps",
            "3",
            "--outdir",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (out / "samples" / "00000.png").is_file()


def test_resume_matches_uninterrupted_run(shapes, tmp_path):
    n = 4
    common = [
        "training.cond_dropout=0.5",
        "training.ema_decay=0.9",
        "data.flip=true",
        "data.val_fraction=0",
        "logging.sample_every_n_steps=0",
        f"logging.checkpoint_every_n_steps={n}",
        "training.warmup_steps=3",
    ]
    cfg_a = tiny_train_config("ldm", shapes, tmp_path / "a", common + [f"trainer.max_steps={2 * n}"])
    module_a, trainer_a = train(cfg_a)

    cfg_b = tiny_train_config("ldm", shapes, tmp_path / "b", common + [f"trainer.max_steps={n}"])
    train(cfg_b)
    # Resume through the command line with no --config: the config stored in the checkpoint is used.
    assert cli_main(["train", "--resume", str(tmp_path / "b"), f"trainer.max_steps={2 * n}"]) == 0

    ckpt_a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt_b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 2 * n
    assert ckpt_b["ldm"]["batches_seen"] == 2 * n
    assert ckpt_a["ldm"]["scale_factor"] == ckpt_b["ldm"]["scale_factor"]
    sa, sb = ckpt_a["state_dict"], ckpt_b["state_dict"]
    assert sa.keys() == sb.keys() and any(k.startswith("ema.module.") for k in sa)
    differing = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differing, differing[:5]
    # The exports (EMA weights) agree too, and training moved the weights at all.
    ea, eb = (
        load_state_dict(tmp_path / "a" / "model.safetensors"),
        load_state_dict(tmp_path / "b" / "model.safetensors"),
    )
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    start = torch.load(tmp_path / "b" / "checkpoints" / f"step-{n:06d}.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(start["model.unet.out.2.weight"], sb["model.unet.out.2.weight"])


def test_ctrl_c_saves_the_exact_step_and_resume_loses_nothing(shapes, tmp_path):
    """Ctrl-C (SIGINT, turned into Lightning's SIGTERM stop) mid-way writes last.ckpt at the step reached, not
    at the last periodic checkpoint; resuming from it ends with the same weights as a run never interrupted,
    whose last.ckpt holds its final step although that is no multiple of the checkpoint interval."""
    import signal
    import subprocess
    import sys
    import time

    common = [
        "training.ema_decay=0.9",
        "data.val_fraction=0",
        "logging.sample_every_n_steps=0",
        "logging.checkpoint_every_n_steps=5",
        "logging.csv=false",
    ]
    run_b = tmp_path / "b"
    cfg_b = tiny_train_config("ldm", shapes, run_b, common + ["trainer.max_steps=100000"])
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg_b))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldm.interfaces.cli.main", "train", "--config", str(tmp_path / "b.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=with_ctrl_c,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_b / "checkpoints" / "step-000005.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        time.sleep(0.5)  # somewhere between two periodic checkpoints
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stopped = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    k = stopped["global_step"]
    assert k >= 5 and stopped["ldm"]["batches_seen"] == k, err[-2000:]
    assert "continue with --resume" in err and "SIGTERMException" in err
    assert proc.returncode == 130, err[-2000:]  # Ctrl-C: not finished, so not 0 (128 + SIGINT)
    assert "Traceback" not in err and "stopped by SIGINT" in err
    assert not (run_b / "model.safetensors").exists()  # no export from an interrupted run

    assert cli_main(["train", "--resume", str(run_b), f"trainer.max_steps={k + 3}"]) == 0
    cfg_a = tiny_train_config("ldm", shapes, tmp_path / "a", common + [f"trainer.max_steps={k + 3}"])
    train(cfg_a)
    ckpt_a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt_b = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == k + 3
    sa, sb = ckpt_a["state_dict"], ckpt_b["state_dict"]
    differing = [key for key in sa if not torch.equal(sa[key], sb[key])]
    assert not differing, differing[:5]


def test_export_only_from_checkpoint(shapes, tmp_path):
    cfg = tiny_train_config(
        "ldm",
        shapes,
        tmp_path / "run",
        ["trainer.max_steps=2", "data.val_fraction=0", "logging.sample_every_n_steps=0"],
    )
    module, _ = train(cfg)
    out = tmp_path / "export"
    assert (
        cli_main(
            [
                "train",
                "--export-only",
                "--resume",
                str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    a, b = load_state_dict(tmp_path / "run" / "model.safetensors"), load_state_dict(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert yaml.safe_load((out / "model.yaml").read_text()) == yaml.safe_load(
        (tmp_path / "run" / "model.yaml").read_text()
    )


def test_scale_factor_estimate_is_inverse_latent_std(shapes, tmp_path):
    cfg = tiny_train_config("ldm", shapes, tmp_path, ["training.scale_factor=null"])
    module = build_module(cfg)
    batch = fixed_batch(cfg)
    latents = module.latents(batch["image"], torch.Generator().manual_seed(3))
    z = module.model.vae.encode(batch["image"]).sample(torch.Generator().manual_seed(3))
    assert module.model.scale_factor == pytest.approx(1.0 / z.std(unbiased=False).item(), rel=1e-4)
    assert latents.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)
    # Estimated once: later batches keep it.
    sf = module.model.scale_factor
    module.latents(batch["image"][:4] * 0.5, torch.Generator().manual_seed(4))
    assert module.model.scale_factor == sf
    fixed = build_module(tiny_train_config("ldm", shapes, tmp_path, ["training.scale_factor=0.5"]))
    assert fixed.model.scale_factor == 0.5 and not fixed.needs_scale_factor


def test_conditioning_dropout_rate(shapes, tmp_path):
    module = build_module(tiny_train_config("ldm", shapes, tmp_path, ["training.cond_dropout=0.25"]))
    g = torch.Generator().manual_seed(0)
    masks = torch.cat([module.drop_mask(16, g) for _ in range(250)])
    assert masks.float().mean().item() == pytest.approx(0.25, abs=0.02)
    captions = [f"c{i}" for i in range(64)]
    dropped = module.dropped_captions(captions, torch.Generator().manual_seed(1))
    mask = module.drop_mask(64, torch.Generator().manual_seed(1)).tolist()
    assert dropped == ["" if m else c for c, m in zip(captions, mask)]
    assert 0 < dropped.count("") < 64
    module.cond_dropout = 0.0
    assert not module.drop_mask(1000, g).any()
    module.cond_dropout = 1.0
    assert module.drop_mask(1000, g).all()


def test_text_cache_encodes_each_caption_once_with_the_same_contexts(shapes, tmp_path):
    module = build_module(tiny_train_config("ldm", shapes, tmp_path, ["training.text_cache=3"]))
    encoded: list[str] = []
    encode = module.model.encode_text
    module.model.encode_text = lambda prompts: (encoded.extend(prompts), encode(prompts))[1]
    captions = ["a red square", "", "a blue circle", "a red square"]
    first = module.encode_captions(captions)
    assert encoded == ["a red square", "", "a blue circle"]  # distinct captions only, once
    again = module.encode_captions(["a blue circle", "a green star", "a red square", "a green star"])
    assert encoded[3:] == ["a green star"]  # the cache is full (3): the new caption is encoded but not kept
    assert len(module._text_cache) == 3
    module.encode_captions(["a green star"])
    assert encoded[4:] == ["a green star"]
    plain = encode(["a red square", "", "a blue circle", "a green star"])
    torch.testing.assert_close(first, plain[[0, 1, 2, 0]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, plain[[2, 3, 0, 3]], rtol=1e-5, atol=1e-6)
    off = build_module(tiny_train_config("ldm", shapes, tmp_path))
    assert off.text_cache_size == 0
    off.encode_captions(captions)
    assert not off._text_cache


def test_latent_cache_encodes_each_image_once_and_draws_the_same_latents(shapes, tmp_path):
    cached = build_module(tiny_train_config("ldm", shapes, tmp_path, ["training.latent_cache=100"]))
    plain = build_module(tiny_train_config("ldm", shapes, tmp_path))
    plain.model.vae.load_state_dict(cached.model.vae.state_dict())
    encoded: list[int] = []
    encode = cached.model.vae.encode
    cached.model.vae.encode = lambda x: (encoded.append(len(x)), encode(x))[1]
    batch = fixed_batch(tiny_train_config("ldm", shapes, tmp_path))
    batch["key"] = [f"img{i % 8}" for i in range(len(batch["image"]))]
    batch["image"] = batch["image"][[i % 8 for i in range(len(batch["image"]))]]  # equal keys, equal images
    for step in range(2):
        g1, g2 = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        torch.testing.assert_close(
            cached.latents(batch["image"], g1, batch["key"]), plain.latents(batch["image"], g2), rtol=1e-5, atol=1e-5
        )
    assert encoded == [8]  # 8 distinct images, through the encoder once, on the first step only
    # the latents are still drawn afresh each step from the cached posterior
    a = cached.latents(batch["image"], torch.Generator().manual_seed(0), batch["key"])
    b = cached.latents(batch["image"], torch.Generator().manual_seed(1), batch["key"])
    assert not torch.equal(a, b)
    from ldm.training.config_checks import TrainConfigError

    with pytest.raises(TrainConfigError, match="center_crop"):
        tiny_train_config("ldm", shapes, tmp_path, ["training.latent_cache=10", "data.center_crop=false"])


def test_init_text_encoder_from_clip_weights(shapes, tmp_path):
    from safetensors.torch import save_file

    cfg = tiny_train_config("ldm", shapes, tmp_path)
    donor = build_module(cfg).model.text_encoder.model.state_dict()
    donor = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in donor.items()}
    clip_file = tmp_path / "clip.safetensors"  # open_clip keys, with a visual tower the text encoder drops
    save_file({**donor, "visual.proj": torch.zeros(2, 2)}, str(clip_file))
    module = build_module(tiny_train_config("ldm", shapes, tmp_path, [f"init.text_encoder={clip_file}"]))
    got = module.model.text_encoder.model.state_dict()
    assert all(torch.equal(got[k], donor[k]) for k in donor)


def test_gradient_checkpointing_gives_the_same_gradients(shapes, tmp_path):
    from ldm.models.unet import ResBlock

    batch = fixed_batch(tiny_train_config("ldm", shapes, tmp_path))
    batch = {"image": batch["image"][:4], "caption": batch["caption"][:4]}
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        module = build_module(tiny_train_config("ldm", shapes, tmp_path, [f"training.gradient_checkpointing={flag}"]))
        assert all(m.use_checkpoint == flag for m in module.model.unet.modules() if isinstance(m, ResBlock))
        with torch.no_grad():  # the zero-initialised output conv would stop every gradient before it
            module.model.unet.out[2].weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        module.train()
        module.loss(batch, torch.Generator().manual_seed(0)).backward()
        grads.append({n: p.grad.clone() for n, p in module.model.unet.named_parameters() if p.grad is not None})
    # a weight inside a checkpointed block, whose gradient needs the recomputed activations
    assert grads[0]["input_blocks.1.0.out_layers.3.weight"].abs().sum() > 0
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_bf16_accumulation_and_ema_counts(shapes, tmp_path):
    cfg = tiny_train_config(
        "ldm",
        shapes,
        tmp_path,
        [
            "trainer.max_steps=2",
            "training.accumulate=2",
            "data.val_fraction=0",
            "trainer.precision=bf16-mixed",
            "logging.sample_every_n_steps=0",
            "data.batch_size=2",
        ],
    )
    module, trainer = train(cfg)
    assert trainer.global_step == 2 and module.batches_seen == 4  # two micro-batches per optimiser step
    assert int(module.ema.n_averaged) == 2  # EMA updated per optimiser step, not per micro-batch
    assert all(torch.isfinite(p).all() for p in module.model.unet.parameters())
    assert module.model.unet.out[2].weight.dtype == torch.float32  # mixed precision keeps fp32 master weights


def test_compile_option_keeps_state_dict_keys(shapes, tmp_path):
    plain = build_module(tiny_train_config("ldm", shapes, tmp_path))
    compiled = build_module(tiny_train_config("ldm", shapes, tmp_path, ["training.compile=true"]))
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    assert compiled._unet_fn is not compiled.model.unet  # the loss calls the compiled forward


@pytest.mark.parametrize("kind", ["inpaint", "upscaler"])
def test_conditioning_kind_picks_the_module(shapes, tmp_path, kind):
    from factories import tiny_inpaint_config, tiny_upscaler_config

    from ldm.training.config import load_train_config
    from ldm.training.editing import InpaintingModule, UpscalerModule

    node = (tiny_inpaint_config() if kind == "inpaint" else tiny_upscaler_config())["model"]
    base = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-ldm.yaml"))
    base["model"] = node
    size = 16 if kind == "inpaint" else 64  # the upscaler's VAE downsamples by 4, its latents are 16 px
    cfg = load_train_config(
        None,
        [
            f"data.root={shapes}",
            f"logging.run_dir={tmp_path}",
            "trainer.max_steps=1",
            f"data.size={size}",
            "data.batch_size=2",
            "data.val_fraction=0",
            "logging.sample_every_n_steps=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "logging.tensorboard=false",
        ],
        base=base,
    )
    module, trainer = train(cfg)
    assert isinstance(module, InpaintingModule if kind == "inpaint" else UpscalerModule)
    assert trainer.global_step == 1
    model = load_model(tmp_path / "model.yaml", tmp_path / "model.safetensors")
    assert model.conditioning_key == module.model.conditioning_key
