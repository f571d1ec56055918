"""The U-Net: output shapes for several depths and widths, argument checks, and the classic ~31 M parameter size."""
import pytest
import torch
from torch import nn

from models.networks import count_parameters
from models.unet import UNet


@pytest.mark.parametrize("in_channels,out_channels,base,depth,size", [
    (1, 2, 4, 1, 16), (1, 2, 8, 2, 32), (3, 3, 4, 3, 32), (1, 1, 4, 4, 48), (2, 5, 6, 2, 24),
])
def test_output_has_input_size_and_class_channels(in_channels, out_channels, base, depth, size):
    net = UNet(in_channels, out_channels, base=base, depth=depth)
    y = net(torch.randn(2, in_channels, size, size))
    assert y.shape == (2, out_channels, size, size)


def test_non_square_input_and_config_round_trip():
    net = UNet(1, 2, base=4, depth=2)
    assert net(torch.randn(1, 1, 16, 28)).shape == (1, 2, 16, 28)
    again = UNet(**net.config())
    again.load_state_dict(net.state_dict())  # same architecture from the stored arguments


def test_classic_structure_two_convs_bn_relu_per_level_transposed_up():
    net = UNet(1, 2, base=4, depth=3)
    convs3 = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 2 * (2 * 3 + 1)  # encoder depth+1 levels + decoder depth levels, two convs each
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == len(convs3)
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 3 and all(m.stride == (2, 2) for m in ups)
    widths = [m.out_channels for m in convs3[::2][:4]]
    assert widths == [4, 8, 16, 32]  # doubling per level down to the bottleneck


def test_base64_depth4_is_the_31M_parameter_unet():
    n = count_parameters(UNet(1, 2, base=64, depth=4))
    assert 30_000_000 <= n <= 32_000_000, n
    assert n == 31_036_546
    assert 1_800_000 <= count_parameters(UNet(1, 2, base=16, depth=4)) <= 2_000_000  # the quick preset


@pytest.mark.parametrize("kwargs,arg", [
    ({"in_channels": 0}, "in_channels"), ({"out_channels": -1}, "out_channels"), ({"base": 0}, "base"),
    ({"base": 2.5}, "base"), ({"depth": 0}, "depth"), ({"depth": 9}, "depth"), ({"depth": True}, "depth"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        UNet(**kwargs)


@pytest.mark.parametrize("shape", [(1, 1, 20, 32), (1, 1, 32, 36), (1, 2, 32, 32), (1, 32, 32)])
def test_bad_input_raises_a_clear_error(shape):
    net = UNet(1, 2, base=4, depth=3)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 8|must be \\[B, 1, H, W\\]"):
        net(torch.randn(*shape))
