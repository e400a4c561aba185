"""`ldm eval --nll` on a latent model and on a 2-D toy model file (ldm.evaluation.likelihood, ldm.toys.files)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from factories import tiny_inpaint_model, tiny_model
from safetensors.torch import save_file

from ldm.core.errors import InvalidOptionError
from ldm.evaluation.likelihood import latent_nll, toy_nll
from ldm.interfaces.cli.main import main as cli_main
from ldm.toys.files import load_toy, save_toy
from ldm.toys.points import ToyDiffusion, make_data


def test_the_latent_bound_is_finite_and_says_it_is_in_latent_space():
    model = tiny_model().eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = latent_nll(model, images, ["a", "b", "c"], timesteps=8, batch_size=2)
    T = model.parameterisation().num_timesteps  # the tiny model has only a few: all of them are evaluated
    assert math.isfinite(result.bits_per_dim) and result.images == 3 and result.timesteps == min(9, T)
    assert result.dims == model.latent_channels * (32 // model.downscale) ** 2
    assert "latent space" in result.line()
    small = latent_nll(model, images, ["a", "b", "c"], timesteps=8, variance="fixed_small", batch_size=2)
    assert small.bits_per_dim != result.bits_per_dim


def test_the_latent_bound_refuses_what_it_cannot_evaluate():
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(InvalidOptionError):
        latent_nll(tiny_model(), images, ["a"], variance="learned")
    with pytest.raises(InvalidOptionError):
        latent_nll(tiny_inpaint_model(), images, ["a"])


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    """A learned-variance toy trained briefly on the spiral, saved with ldm.toys.files (seconds)."""
    toy = ToyDiffusion(make_data("spiral", 500, seed=0), variance="learned", hidden=32, seed=0)
    toy.train(100)
    path = tmp_path_factory.mktemp("toy") / "spiral.safetensors"
    save_toy(toy, path)
    return toy, path


def test_a_saved_toy_loads_with_the_same_weights_and_config(toy_file):
    toy, path = toy_file
    loaded = load_toy(path)
    assert (loaded.variance, loaded.hidden, loaded.num_timesteps) == ("learned", 32, 1000)
    x, t = torch.randn(5, 2), torch.tensor([0, 1, 10, 500, 999])
    assert torch.equal(loaded.net(x, t), toy.net(x, t))


def test_the_cli_reports_the_toy_bound_in_data_space_as_the_python_function_does(toy_file, tmp_path, capsys):
    _, path = toy_file
    points = make_data("moons", 300, seed=3)
    np.save(tmp_path / "held.npy", points.numpy())
    np.savetxt(tmp_path / "held.csv", points.numpy(), delimiter=",")
    expected = toy_nll(load_toy(path), points, timesteps=20, variance="learned", seed=5)
    for data in ("held.npy", "held.csv"):
        out = tmp_path / f"{data}.json"
        assert (
            cli_main(
                [
                    "eval",
                    "--nll",
                    "--toy-model",
                    str(path),
                    "--toy-data",
                    str(tmp_path / data),
                    "--nll-timesteps",
                    "20",
                    "--nll-variance",
                    "learned",
                    "--seed",
                    "5",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        printed = capsys.readouterr().out
        assert "data space" in printed and "300 held-out points" in printed and "latent" not in printed
        saved = json.loads(out.read_text())
        assert saved["bits_per_dim"] == pytest.approx(expected.bits_per_dim, abs=1e-6) and saved["space"] == "data"
    # a named toy set: its held-out draw is make_data(name, --nll-points, seed=--toy-data-seed)
    named = toy_nll(load_toy(path), make_data("spiral", 200, seed=7), timesteps=20, seed=0)
    assert (
        cli_main(
            [
                "eval",
                "--nll",
                "--toy-model",
                str(path),
                "--toy-data",
                "spiral",
                "--nll-points",
                "200",
                "--toy-data-seed",
                "7",
                "--nll-timesteps",
                "20",
                "--out",
                str(tmp_path / "n.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "n.json").read_text())["bits_per_dim"] == pytest.approx(named.bits_per_dim, abs=1e-6)
    assert math.isfinite(named.bits_per_dim) and named.variance == "fixed_large"


def test_bad_toy_inputs_fail_in_one_line(toy_file, tmp_path, capsys):
    _, path = toy_file
    fixed = ToyDiffusion(make_data("moons", 50), hidden=16)
    save_toy(fixed, tmp_path / "fixed.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    np.save(tmp_path / "three.npy", np.zeros((4, 3), dtype=np.float32))
    (tmp_path / "text.csv").write_text("1,2\nx,y\n")
    cases = [
        ["--toy-model", str(tmp_path / "absent.safetensors"), "--toy-data", "spiral"],
        ["--toy-model", str(tmp_path / "junk.safetensors"), "--toy-data", "spiral"],
        ["--toy-model", str(tmp_path / "other.safetensors"), "--toy-data", "spiral"],
        ["--toy-model", str(path)],
        ["--toy-model", str(path), "--toy-data", "swirl"],
        ["--toy-model", str(path), "--toy-data", str(tmp_path / "absent.npy")],
        ["--toy-model", str(path), "--toy-data", str(tmp_path / "three.npy")],
        ["--toy-model", str(path), "--toy-data", str(tmp_path / "text.csv")],
        ["--toy-model", str(path), "--toy-data", "spiral", "--nll-points", "0"],
        ["--toy-model", str(tmp_path / "fixed.safetensors"), "--toy-data", "spiral", "--nll-variance", "learned"],
    ]
    for case in cases:
        assert cli_main(["eval", "--nll", *case]) != 0, case
        err = capsys.readouterr().err
        assert err.startswith("ldm eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, (case, err)
    assert cli_main(["eval", "--toy-model", str(path), "--toy-data", "spiral"]) != 0  # without --nll
    assert "go with --nll" in capsys.readouterr().err
