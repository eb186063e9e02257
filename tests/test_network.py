"""OrientationNet: the paper's shapes, unit outputs, invariances, VGG16 weights."""

import math
import pickle

import pytest
import torch

from skpose.geometry.rotations import axis_angle_to_quat
from skpose.learn.network import TORCHVISION_VGG16_LAYERS, OrientationNet

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(scope="module")
def vgg32():
    """The paper's architecture at 32 px: cheap forward passes, same VGG layers."""
    torch.manual_seed(0)
    return OrientationNet("vgg16", image_size=32)


def fake_vgg16_state_dict(net, seed=0):
    """A random state dict in torchvision's vgg16 layout, with keys we must ignore."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for tv_prefix, ours in TORCHVISION_VGG16_LAYERS.items():
        conv = net.get_submodule(ours)
        state[f"{tv_prefix}.weight"] = torch.randn(conv.weight.shape, generator=gen)
        state[f"{tv_prefix}.bias"] = torch.randn(conv.bias.shape, generator=gen)
    state["features.17.weight"] = torch.randn(512, 256, 3, 3, generator=gen)
    state["classifier.6.bias"] = torch.randn(1000, generator=gen)
    return state


def test_paper_feature_shapes_at_128px():
    torch.manual_seed(0)
    net = OrientationNet().eval()  # the defaults are the paper's network
    assert net.image_size == 128
    with torch.no_grad():
        feats = net.forward_features(torch.randn(1, 128, 128))
        q = net.head(feats["pooled"])
    assert feats["input"].shape == (1, 3, 128, 128)
    assert torch.equal(feats["input"][:, 0], feats["input"][:, 2])
    assert feats["vgg"].shape == (1, 256, 16, 16)
    assert feats["down"].shape == (1, 2048, 4, 4)
    assert feats["pooled"].shape == (1, 2048, 2, 2)
    assert torch.equal(
        feats["pooled"], torch.nn.functional.max_pool2d(feats["down"], 2)
    )
    assert q.shape == (1, 4)
    assert net.head.fc1.in_features == 8192
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("output", ["quaternion", "axis_angle"])
@pytest.mark.parametrize(
    ("architecture", "size"),
    [("small", 32), ("small", 48), ("small", 64), ("small", 96), ("vgg16", 32)],
)
def test_outputs_are_unit_quaternions(architecture, size, output):
    torch.manual_seed(0)
    net = OrientationNet(architecture, image_size=size, output=output)
    q = net(torch.randn(3, size, size))
    assert q.shape == (3, 4)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(3))
    if output == "axis_angle":
        assert (q[:, 0] >= 0).all()


def test_axis_angle_head_is_tanh_squashed_rotation_vector():
    torch.manual_seed(0)
    net = OrientationNet("small", image_size=32, output="axis_angle").eval()
    x = torch.randn(4, 32, 32)
    with torch.no_grad():
        raw = net.head(net.forward_features(x)["pooled"])
        expected = axis_angle_to_quat(math.pi * torch.tanh(raw))
        assert raw.shape == (4, 3)
        torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_parameters(dtype, device):
    torch.manual_seed(0)
    net = OrientationNet("small", image_size=32).to(device=device, dtype=dtype)
    x = torch.randn(2, 32, 32, dtype=torch.float64, device=device)
    q = net(x)
    assert q.dtype == dtype and q.device.type == device
    torch.testing.assert_close(
        q.norm(dim=-1).double().cpu(), torch.ones(2, dtype=torch.float64),
        atol=TOL[dtype], rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("output", ["quaternion", "axis_angle"])
def test_gradients_reach_every_parameter(output):
    torch.manual_seed(0)
    net = OrientationNet("small", image_size=32, output=output).train()
    target = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    loss = (1 - (net(torch.randn(4, 32, 32)) * target).sum(-1) ** 2).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_channel_dimension_is_optional():
    torch.manual_seed(0)
    net = OrientationNet("small", image_size=32).eval()
    x = torch.randn(3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x[:, None]))


def test_input_scaling_is_per_image_and_affine_invariant():
    torch.manual_seed(0)
    net = OrientationNet("small", image_size=32).eval()
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    y = x.clone()
    y[0] = 250.0 * x[0] + 17.0
    y[1] = 0.01 * x[1] - 3.0  # each image gets its own affine map
    with torch.no_grad():
        scaled = net.forward_features(y)["input"]
        assert scaled.amin(dim=(1, 2, 3)).tolist() == pytest.approx([-1, -1, -1])
        assert scaled.amax(dim=(1, 2, 3)).tolist() == pytest.approx([1, 1, 1])
        torch.testing.assert_close(net(y), net(x), atol=1e-5, rtol=0)
        const = net.forward_features(torch.full((1, 32, 32), 5.0))["input"]
        assert torch.equal(const, torch.zeros_like(const))


def test_same_seed_same_network_and_output():
    x = torch.randn(2, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = OrientationNet("small", image_size=32)
        outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    torch.manual_seed(124)
    assert not torch.equal(OrientationNet("small", image_size=32)(x), outs[0])


def test_small_config_layers():
    net = OrientationNet("small", image_size=64)
    assert net.in_channels == 1
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 256]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 7
    assert net.head.fc1.in_features == 256 * 2 * 2
    assert OrientationNet("small", image_size=32).head.fc1.in_features == 256
    assert OrientationNet("small", batch_norm=False).image_size == 64


def test_pretrained_copies_the_seven_vgg_convs(tmp_path, vgg32):
    state = fake_vgg16_state_dict(vgg32)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    net = OrientationNet("vgg16", image_size=32, pretrained=path)
    for tv_prefix, ours in TORCHVISION_VGG16_LAYERS.items():
        conv = net.get_submodule(ours)
        assert torch.equal(conv.weight, state[f"{tv_prefix}.weight"])
        assert torch.equal(conv.bias, state[f"{tv_prefix}.bias"])
    assert net(torch.randn(2, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda s: s.update({"features.0.weight": torch.zeros(32, 3, 3, 3)}),
            r"features\.0\.weight has shape \(32, 3, 3, 3\), expected \(64, 3, 3, 3\)",
        ),
        (lambda s: s.pop("features.12.bias"), r"has no tensor 'features\.12\.bias'"),
        (
            lambda s: s.update({"features.14.weight": [1.0]}),
            r"has no tensor 'features\.14\.weight'",
        ),
    ],
)
def test_pretrained_mismatched_state_dict(tmp_path, vgg32, edit, match):
    state = fake_vgg16_state_dict(vgg32)
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    before = vgg32.features.conv1_1.weight.clone()
    with pytest.raises(ValueError, match=match) as info:
        vgg32.load_vgg16_weights(path)
    assert "bad.pth" in str(info.value)
    assert torch.equal(vgg32.features.conv1_1.weight, before)  # nothing copied


def test_pretrained_file_errors(tmp_path, vgg32):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        OrientationNet("vgg16", image_size=32, pretrained=missing)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_a_dict)
    with pytest.raises(ValueError, match=r"list\.pth' to hold a state dict, got list"):
        vgg32.load_vgg16_weights(not_a_dict)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"Could not read .*garbage\.pth"):
        vgg32.load_vgg16_weights(garbage)
    with pytest.raises(TypeError, match="'pretrained'"):
        vgg32.load_vgg16_weights(3)


def test_pretrained_needs_vgg16(tmp_path):
    with pytest.raises(ValueError, match=r"'pretrained' .* architecture='vgg16'"):
        OrientationNet("small", pretrained=tmp_path / "vgg16.pth")


@pytest.mark.parametrize("image_size", [16, 31, 40, 100, 64.0, "64", True])
def test_bad_image_size(image_size):
    with pytest.raises(ValueError, match=r"'image_size' .* multiple of 16\. Got"):
        OrientationNet("small", image_size=image_size)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"architecture": "resnet"}, r"'architecture' .* 'vgg16', 'small'\. Got 're"),
        ({"architecture": None}, r"'architecture' .* Got None instead"),
        ({"output": "euler"}, r"'output' .* 'quaternion', 'axis_angle'\. Got 'eu"),
        ({"batch_norm": "yes"}, r"'batch_norm' .* bool or None\. Got 'yes'"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrientationNet(**{"architecture": "small", **kwargs})


@pytest.mark.parametrize("shape", [(2, 64, 64), (2, 3, 32, 32), (2, 32, 16), (32, 32)])
def test_wrong_input_shape(shape):
    net = OrientationNet("small", image_size=32)
    with pytest.raises(ValueError, match=r"'images' .* \(n, 32, 32\) or \(n, 1, 32"):
        net(torch.randn(shape))


def test_pickle_round_trip():
    torch.manual_seed(0)
    net = OrientationNet("small", image_size=32, output="axis_angle").eval()
    clone = pickle.loads(pickle.dumps(net))
    x = torch.randn(2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), net(x), atol=0, rtol=0)
