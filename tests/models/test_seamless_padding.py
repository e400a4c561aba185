"""ldm.models.seamless: circular padding on the chosen axes for the `with` block only, undone on error too."""

import pytest
import torch
from factories import tiny_model
from torch import nn

from ldm.core.errors import InvalidOptionError
from ldm.models.seamless import seamless, tiling_choice


def test_tiling_choices():
    assert [tiling_choice(v) for v in (True, False, None, "xy", "X", "y", "both")] == [
        "xy",
        None,
        None,
        "xy",
        "x",
        "y",
        "xy",
    ]
    with pytest.raises(InvalidOptionError, match="tiling must be x, y or xy"):
        tiling_choice("z")


def test_one_axis_wraps_and_the_other_pads_with_zeros():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    net = nn.Module()
    net.unet = nn.Sequential(conv)
    nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 3] = 1.0  # on the right edge, away from the top and bottom ones
    with torch.no_grad(), seamless(net, "x"):
        wrapped = conv(x)
    assert wrapped[0, 0, 1, 0] == 1  # the left edge sees the right edge's sample
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 3, 1] = 1.0  # on the bottom edge: "x" leaves the top edge blind to it
    with torch.no_grad(), seamless(net, "x"):
        assert conv(x)[0, 0, 0, 1] == 0
    with torch.no_grad(), seamless(net, "y"):
        assert conv(x)[0, 0, 0, 1] == 1


def test_the_networks_are_restored_even_on_error():
    model = tiny_model()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        before = model.decode_latent(z)
        with pytest.raises(RuntimeError, match="mid-run"), seamless(model, "xy"):
            assert not torch.equal(model.decode_latent(z), before)
            raise RuntimeError("mid-run")
        assert torch.equal(model.decode_latent(z), before)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all("_conv_forward" not in m.__dict__ for m in convs)
