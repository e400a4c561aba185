"""A latent U-Net with a learned variance (learned_variance: out_channels [eps, raw v]): hybrid-loss training,
the bound with its own variance, the learned-variance DDPM sampler, and the ordinary samplers on the eps half."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from factories import tiny_learned_variance_config, tiny_model
from PIL import Image

from ldm.core.config import instantiate
from ldm.core.errors import InvalidOptionError
from ldm.diffusion.likelihood import LearnedVarianceParameterisation
from ldm.evaluation.likelihood import latent_nll
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import save_state_dict
from ldm.tasks.base import PromptError
from ldm.tasks.txt2img import txt2img, txt2img_learned_variance
from ldm.training.ldm_module import LatentDiffusionModule

IMAGES = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_a_few_hybrid_steps_train_both_halves_and_stay_finite():
    torch.manual_seed(0)
    module = LatentDiffusionModule(tiny_model(learned_variance=True).train(), ema_decay=None, warmup_steps=0, lr=1e-3)
    assert isinstance(module.model.parameterisation(), LearnedVarianceParameterisation)
    opt = torch.optim.Adam([p for p in module.model.unet.parameters() if p.requires_grad], lr=1e-3)
    batch = {"image": IMAGES, "caption": ["a", "b", "c"]}
    out_conv = module.model.unet.out[-1].weight  # [2C, ...]: rows 0..3 eps, 4..7 raw v
    losses = []
    for step in range(4):
        opt.zero_grad()
        loss = module.loss(batch, torch.Generator().manual_seed(step))
        loss.backward()
        assert out_conv.grad[:4].abs().sum() > 0 and out_conv.grad[4:].abs().sum() > 0  # L_simple / L_vlb
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    # plain models are untouched: the simple loss on a 4-channel output
    assert type(tiny_model().parameterisation()).__name__ == "VPParameterisation"


def test_the_variance_half_gets_only_the_vlb_gradient():
    """L_vlb reaches the mean only through a stop-gradient, so with lambda's term alone eps gets no gradient."""
    model = tiny_model(learned_variance=True)
    par = model.parameterisation()
    out = torch.randn(2, 8, 4, 4, requires_grad=True)
    from ldm.diffusion.likelihood import hybrid_loss

    x0, noise, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([3, 500])
    x_t = par.q_sample(x0, t, noise)
    _, vlb = hybrid_loss(par.process, x0, x_t, t, noise, out[:, :4], out[:, 4:])
    total, _ = hybrid_loss(par.process, x0, x_t, t, noise, out[:, :4], out[:, 4:], lam=1.0)
    simple = torch.nn.functional.mse_loss(out[:, :4], noise)
    (total - simple).backward()
    assert out.grad[:, :4].abs().max() == 0 and out.grad[:, 4:].abs().max() > 0 and vlb.shape == (2,)


def test_the_bound_with_the_learned_variance_runs_in_latent_bits_per_dim():
    model = tiny_model(learned_variance=True)
    learned = latent_nll(model, IMAGES, ["a", "b", "c"], timesteps=8, variance="learned", batch_size=2)
    fixed = latent_nll(model, IMAGES, ["a", "b", "c"], timesteps=8, variance="fixed_large", batch_size=2)
    assert math.isfinite(learned.bits_per_dim) and learned.variance == "learned" and learned.images == 3
    assert learned.dims == 4 * (16 // model.downscale) ** 2 and "latent space" in learned.line()
    assert learned.bits_per_dim != fixed.bits_per_dim  # the U-Net's v is really used
    with pytest.raises(InvalidOptionError):
        latent_nll(tiny_model(), IMAGES, ["a"], variance="learned")


def test_ordinary_samplers_use_the_eps_half_and_the_variance_sampler_the_whole():
    model = tiny_model(learned_variance=True)
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    context = model.encode_text(["a"])
    eps = model.unet(x / (1 + sigma**2).sqrt(), model.parameterisation().sigma_to_t(sigma), context=context)[:, :4]
    torch.testing.assert_close(model.denoiser()(x, sigma, context=context), x - 2.0 * eps)
    for sampler in ("euler", "ddim", "dpmpp_2m"):
        image = txt2img(model, "a", steps=3, sampler=sampler, seed=1, progress=False)[0]
        assert image.size == (16, 16)
    first = txt2img_learned_variance(model, ["a", "b"], steps=4, seed=1, progress=False)
    again = txt2img_learned_variance(model, ["b"], steps=4, seed=2, progress=False)
    assert len(first) == 2 and first.settings["sampler"] == "ddpm_learned_variance"
    assert first[1].tobytes() == again[0].tobytes()  # image i is seed + i, as txt2img
    plain = txt2img(model, "a", steps=4, sampler="ddpm", seed=1, spacing="trailing", progress=False)[0]
    assert plain.tobytes() != first[0].tobytes()  # the learned step variance is not DDPM's beta~
    with pytest.raises(PromptError):
        txt2img_learned_variance(tiny_model(), "a", steps=2)


def test_a_learned_variance_needs_the_doubled_output():
    cfg = tiny_learned_variance_config()
    cfg["model"]["params"]["unet_config"]["params"]["out_channels"] = 4
    with pytest.raises(InvalidOptionError, match="out_channels"):
        instantiate(cfg["model"])
    cfg = tiny_learned_variance_config()
    cfg["model"]["params"]["parameterization"] = "v"
    with pytest.raises(InvalidOptionError, match="eps"):
        instantiate(cfg["model"])


def test_eval_nll_learned_on_the_command_line(tmp_path, capsys):
    cfg, ckpt = tmp_path / "lv.yaml", tmp_path / "lv.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_learned_variance_config()))
    save_state_dict(tiny_model(learned_variance=True).original_state_dict(), ckpt)
    for split in ("train", "heldout"):
        folder = tmp_path / "data" / split
        folder.mkdir(parents=True)
        rows = []
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / f"{i}.png")
            rows.append(json.dumps({"file": f"{i}.png", "caption": f"colour {i}"}))
        (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    argv = [
        "eval",
        "--nll",
        "--nll-variance",
        "learned",
        "--nll-timesteps",
        "4",
        "--nll-images",
        "2",
        "--data",
        str(tmp_path / "data"),
        "--config",
        str(cfg),
        "--ckpt",
        str(ckpt),
        "--device",
        "cpu",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "learned variance" in out and "latent space" in out and "2 held-out images" in out
