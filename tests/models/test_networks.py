import pytest
import torch
from torch import nn

from models.networks import NLayerDiscriminator, ResnetGenerator, count_parameters, init_weights


@pytest.mark.parametrize(
    "input_nc,output_nc,ngf,n_blocks,size",
    [(1, 1, 8, 2, 32), (1, 2, 8, 3, 64), (3, 3, 4, 0, 32), (1, 1, 8, 1, 48)],
)
def test_generator_shapes(input_nc, output_nc, ngf, n_blocks, size):
    net = ResnetGenerator(input_nc, output_nc, ngf=ngf, n_blocks=n_blocks)
    y = net(torch.randn(2, input_nc, size, size))
    assert y.shape == (2, output_nc, size, size)
    assert y.abs().max() <= 1.0  # tanh head


def test_segmentor_head_has_no_tanh():
    net = ResnetGenerator(1, 2, ngf=8, n_blocks=2, tanh=False)
    assert not any(isinstance(m, nn.Tanh) for m in net.modules())
    init_weights(net, gain=1.0, generator=torch.Generator().manual_seed(0))  # large weights -> logits beyond 1
    assert net(torch.randn(1, 1, 32, 32)).abs().max() > 1.0


@pytest.mark.parametrize("size,n_layers,expected", [(256, 3, 30), (64, 3, 6), (32, 3, 2), (64, 2, 14)])
def test_discriminator_shapes(size, n_layers, expected):
    net = NLayerDiscriminator(1, ndf=8, n_layers=n_layers)
    assert net(torch.randn(2, 1, size, size)).shape == (2, 1, expected, expected)


def test_norms_are_instance_norm_without_affine_and_padding_is_reflection():
    g = ResnetGenerator(1, 1, ngf=8, n_blocks=2)
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine for m in norms)
    assert any(isinstance(m, nn.ReflectionPad2d) for m in g.modules())
    d = NLayerDiscriminator(1, ndf=8)
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))


def test_parameter_counts_match_the_cycleGAN_reference():
    # pytorch-CycleGAN-and-pix2pix prints 11.378 M for resnet_9blocks and 2.765 M for the basic D (RGB, 64 filters).
    assert count_parameters(ResnetGenerator(3, 3)) == 11_378_179
    assert count_parameters(NLayerDiscriminator(3)) == 2_764_737
    assert count_parameters(None) == 0


@pytest.mark.parametrize(
    "factory,arg",
    [
        (lambda: ResnetGenerator(0, 1), "input_nc"),
        (lambda: ResnetGenerator(1, 0), "output_nc"),
        (lambda: ResnetGenerator(1, 1, ngf=0), "ngf"),
        (lambda: ResnetGenerator(1, 1, n_blocks=-1), "n_blocks"),
        (lambda: ResnetGenerator(1, 1, ngf=2.5), "ngf"),
        (lambda: NLayerDiscriminator(0), "input_nc"),
        (lambda: NLayerDiscriminator(1, ndf=-3), "ndf"),
        (lambda: NLayerDiscriminator(1, n_layers=0), "n_layers"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(factory, arg):
    with pytest.raises(ValueError, match=arg):
        factory()


def test_init_weights_is_seeded_and_normal():
    a = init_weights(ResnetGenerator(1, 1, ngf=8, n_blocks=2), 0.02, torch.Generator().manual_seed(3))
    b = init_weights(ResnetGenerator(1, 1, ngf=8, n_blocks=2), 0.02, torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    conv = a.model[1]
    assert abs(conv.weight.std().item() - 0.02) < 0.005
    assert torch.count_nonzero(conv.bias) == 0
    with pytest.raises(ValueError, match="gain"):
        init_weights(a, gain=0.0)
