"""The orientation network of Lian et al. (2022, Fig. 2) and a narrow CPU variant.

``OrientationNet`` maps a batch of square images to unit quaternions ``(w, x, y, z)``:

1. each image is scaled to (-1, 1) by its own min and max (a constant image becomes
   0) and, for ``architecture="vgg16"``, repeated to 3 channels;
2. VGG16 ``conv1_1 ... conv3_3`` (3 x 3 convs, ReLU) with their three 2 x 2 max pools
   -> ``(256, S/8, S/8)``, i.e. 256 x 16 x 16 at the paper's ``S = 128``;
3. two 3 x 3 stride-2 convs with ReLU, ``down1`` 256 -> 1024 and ``down2``
   1024 -> 2048 (our choice: the paper gives only the shapes) -> 2048 x 4 x 4;
4. max pooling to a ``k x k`` map, ``k = min(2, ceil(S / 32))`` (an adaptive max pool:
   the paper's 2 x 2 pool at 128 px, the identity at 64 px, 1 x 1 at 32 px);
5. fully connected ``2048 k^2 -> 1024`` with ReLU and ``1024 -> 4`` (our choice of
   hidden width), divided by the norm.

``architecture="small"`` is **our addition, not the paper's**: the same structure with
a quarter of the widths (VGG blocks 16 / 32 / 64, ``down1`` 64 -> 128, ``down2``
128 -> 256, hidden FC width 256), one input channel instead of three identical ones,
batch norm after each VGG-block conv, and a 64 px default input. It is the
configuration for CPU work (CI, examples); it also runs at 32 px.

``image_size`` ``S`` may be any multiple of 16 from 32 up; the feature maps are then
``S/8`` after the VGG blocks and ``ceil(S/32)`` after ``down2``. Batch norm (optional
for both architectures) follows the VGG-block convs only: ``down2``'s 1 x 1 map at
32 px would make batch norm fail on a batch of one image.

``output="axis_angle"`` is the paper's alternative head (Table 3): three numbers, each
squashed to (-pi, pi) by ``pi * tanh``, read as a rotation vector (its length, the
angle, can exceed pi; the quaternion wraps) and converted with
:func:`skpose.geometry.rotations.axis_angle_to_quat`. Both heads return ``(n, 4)`` unit
quaternions; the quaternion head does not canonicalise (the losses are sign-invariant).
"""

from __future__ import annotations

import math
import numbers
import os
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from skpose.geometry.rotations import axis_angle_to_quat

__all__ = [
    "TORCHVISION_VGG16_LAYERS",
    "OrientationNet",
    "resolve_image_size",
]

#: torchvision's ``vgg16().features`` index of each conv we take -> our layer path.
TORCHVISION_VGG16_LAYERS = {
    "features.0": "features.conv1_1",
    "features.2": "features.conv1_2",
    "features.5": "features.conv2_1",
    "features.7": "features.conv2_2",
    "features.10": "features.conv3_1",
    "features.12": "features.conv3_2",
    "features.14": "features.conv3_3",
}


class _Config(NamedTuple):
    blocks: tuple[int, int, int]  # widths of the three VGG blocks
    down: tuple[int, int]  # widths of down1 and down2
    hidden: int  # width of fc1
    in_channels: int
    image_size: int  # default
    batch_norm: bool  # default


_CONFIGS = {
    "vgg16": _Config((64, 128, 256), (1024, 2048), 1024, 3, 128, False),
    "small": _Config((16, 32, 64), (128, 256), 256, 1, 64, True),
}
_CONVS_PER_BLOCK = (2, 2, 3)
_OUTPUTS = ("quaternion", "axis_angle")


def _check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"The '{name}' parameter of OrientationNet must be one of "
            f"{', '.join(repr(c) for c in choices)}. Got {value!r} instead."
        )
    return value


def _check_image_size(image_size) -> int:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, numbers.Integral)
        or image_size < 32
        or image_size % 16
    ):
        raise ValueError(
            "The 'image_size' parameter of OrientationNet must be an int >= 32 and a "
            f"multiple of 16. Got {image_size!r} instead."
        )
    return int(image_size)


def _check_options(architecture, image_size, output, pretrained, batch_norm):
    """Validate the constructor's options; resolve the ``None`` defaults."""
    config = _CONFIGS[_check_choice(architecture, "architecture", _CONFIGS)]
    _check_choice(output, "output", _OUTPUTS)
    image_size = _check_image_size(
        config.image_size if image_size is None else image_size
    )
    batch_norm = config.batch_norm if batch_norm is None else batch_norm
    if not isinstance(batch_norm, bool):
        raise ValueError(
            "The 'batch_norm' parameter of OrientationNet must be a bool or None. "
            f"Got {batch_norm!r} instead."
        )
    if pretrained is not None and architecture != "vgg16":
        raise ValueError(
            "The 'pretrained' parameter of OrientationNet needs architecture="
            f"'vgg16' (VGG16 weights). Got architecture={architecture!r}."
        )
    return config, image_size, batch_norm


def resolve_image_size(architecture: str, image_size: int | None) -> int:
    """The input side an ``OrientationNet`` would use, without building it.

    Validates ``architecture`` and ``image_size`` exactly as the constructor does.
    """
    config = _CONFIGS[_check_choice(architecture, "architecture", _CONFIGS)]
    return _check_image_size(config.image_size if image_size is None else image_size)


def _vgg_blocks(in_channels: int, widths, batch_norm: bool) -> nn.Sequential:
    layers = OrderedDict()
    for block, width in enumerate(widths, start=1):
        for i in range(1, _CONVS_PER_BLOCK[block - 1] + 1):
            name = f"{block}_{i}"
            layers[f"conv{name}"] = nn.Conv2d(in_channels, width, 3, padding=1)
            if batch_norm:
                layers[f"bn{name}"] = nn.BatchNorm2d(width)
            layers[f"relu{name}"] = nn.ReLU(inplace=True)
            in_channels = width
        layers[f"pool{block}"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


def _scale_to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of ``(n, 1, H, W)`` to (-1, 1); constant -> 0."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
    ok = span > 0
    scaled = 2 * (x - lo) / torch.where(ok, span, torch.ones_like(span)) - 1
    return torch.where(ok, scaled, torch.zeros_like(scaled))


class OrientationNet(nn.Module):
    """Images -> unit quaternions: the paper's network, or our narrow CPU variant.

    Parameters
    ----------
    architecture : {"vgg16", "small"}, default="vgg16"
        ``"vgg16"`` is the paper's network (see the module docstring); ``"small"`` is
        our CPU configuration with a quarter of the channel widths and batch norm.
    image_size : int or None, default=None
        Side ``S`` of the square input images in pixels: an int >= 32, multiple of 16.
        ``None`` takes the architecture's default (128 for ``"vgg16"``, 64 for
        ``"small"``).
    output : {"quaternion", "axis_angle"}, default="quaternion"
        ``"quaternion"``: 4 numbers divided by their norm (the paper's choice).
        ``"axis_angle"``: 3 numbers, each ``pi * tanh``-squashed to (-pi, pi), read
        as a rotation vector (radians) and converted to a canonical quaternion.
    pretrained : str, os.PathLike or None, default=None
        ``None``: random initialisation (Kaiming-normal convs, ``N(0, 0.01)`` linear
        layers, zero biases). Otherwise a local VGG16 weights file in torchvision's
        ``state_dict`` layout (``features.0.weight`` ...); the seven convs
        ``conv1_1 ... conv3_3`` are copied from it (see
        ``TORCHVISION_VGG16_LAYERS``), other keys are ignored. ``"vgg16"`` only.
    batch_norm : bool or None, default=None
        Batch norm after each conv of the VGG blocks. ``None`` takes the
        architecture's default: off for ``"vgg16"`` (the paper), on for ``"small"``.

    Attributes
    ----------
    features, down, pool, head : torch.nn.Module
        VGG blocks, the two stride-2 convs, the final max pool, the FC layers.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = OrientationNet("small", image_size=32)
    >>> q = net(torch.randn(5, 32, 32))
    >>> q.shape
    torch.Size([5, 4])
    >>> bool(torch.allclose(q.norm(dim=-1), torch.ones(5)))
    True
    """

    def __init__(
        self,
        architecture: str = "vgg16",
        image_size: int | None = None,
        output: str = "quaternion",
        pretrained: str | os.PathLike | None = None,
        batch_norm: bool | None = None,
    ):
        super().__init__()
        config, self.image_size, batch_norm = _check_options(
            architecture, image_size, output, pretrained, batch_norm
        )
        self.architecture, self.output = architecture, output
        self.in_channels = config.in_channels
        self.features = _vgg_blocks(self.in_channels, config.blocks, batch_norm)
        c3, (c4, c5) = config.blocks[-1], config.down
        self.down = nn.Sequential(OrderedDict(
            down1=nn.Conv2d(c3, c4, 3, stride=2, padding=1), relu1=nn.ReLU(True),
            down2=nn.Conv2d(c4, c5, 3, stride=2, padding=1), relu2=nn.ReLU(True),
        ))  # fmt: skip
        pool_side = min(2, math.ceil(self.image_size / 32))
        self.pool = nn.AdaptiveMaxPool2d(pool_side)
        n_out = 4 if self.output == "quaternion" else 3
        self.head = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(), fc1=nn.Linear(c5 * pool_side**2, config.hidden),
            relu=nn.ReLU(True), fc2=nn.Linear(config.hidden, n_out),
        ))  # fmt: skip
        self._init_weights()
        if pretrained is not None:
            self.load_vgg16_weights(pretrained)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def load_vgg16_weights(self, path: str | os.PathLike) -> None:
        """Copy ``conv1_1 ... conv3_3`` from a torchvision VGG16 ``state_dict`` file.

        Parameters
        ----------
        path : str or os.PathLike
            File written by ``torch.save(torchvision.models.vgg16(...).state_dict())``.
            Read with ``weights_only=True`` on the CPU; nothing is downloaded.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is not a state dict, or a needed key is missing or has the
            wrong shape (the message names the first such key).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                "The 'pretrained' parameter of OrientationNet must be None or a path. "
                f"Got {type(path).__name__} instead."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG16 weights file '{path}' does not exist.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"Could not read VGG16 weights file '{path}' as a torch state dict: "
                f"{exc}"
            ) from exc
        if not isinstance(state, dict):
            raise ValueError(
                f"Expected VGG16 weights file '{path}' to hold a state dict, got "
                f"{type(state).__name__}."
            )
        pairs = []
        for tv_prefix, ours in TORCHVISION_VGG16_LAYERS.items():
            conv = self.get_submodule(ours)
            for name in ("weight", "bias"):
                key, target = f"{tv_prefix}.{name}", getattr(conv, name)
                value = state.get(key)
                if not isinstance(value, torch.Tensor):
                    raise ValueError(
                        f"VGG16 weights file '{path}' has no tensor '{key}'."
                    )
                if value.shape != target.shape:
                    raise ValueError(
                        f"In VGG16 weights file '{path}', {key} has shape "
                        f"{tuple(value.shape)}, expected {tuple(target.shape)}."
                    )
                pairs.append((target, value))
        with torch.no_grad():
            for target, value in pairs:
                target.copy_(value)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check the shape, scale each image to (-1, 1), repeat to ``in_channels``."""
        shape, side = tuple(images.shape), self.image_size
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.shape[1:] != (1, side, side):
            raise ValueError(
                f"Expected 'images' to have shape (n, {side}, {side}) or "
                f"(n, 1, {side}, {side}) for OrientationNet(image_size={side}), got "
                f"{shape}."
            )
        x = _scale_to_unit_range(images.to(self.features.conv1_1.weight.dtype))
        return x.expand(-1, self.in_channels, -1, -1)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate feature maps, e.g. to check the paper's shapes.

        Parameters
        ----------
        images : torch.Tensor of shape (n, S, S) or (n, 1, S, S)
            Images at ``S = image_size``; any intensity scale.

        Returns
        -------
        dict of str to torch.Tensor
            ``"input"``: ``(n, C, S, S)`` scaled to (-1, 1), ``C`` = 3 (``"vgg16"``)
            or 1 (``"small"``); ``"vgg"``: after ``conv3_3`` and its pool,
            ``(256, S/8, S/8)`` per image for ``"vgg16"``; ``"down"``: after the two
            stride-2 convs, ``(2048, ceil(S/32), ceil(S/32))``; ``"pooled"``: after
            the final max pool, ``(2048, k, k)``, ``k = min(2, ceil(S/32))``.
        """
        x = self._prepare(images)
        vgg = self.features(x)
        down = self.down(vgg)
        return {"input": x, "vgg": vgg, "down": down, "pooled": self.pool(down)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit quaternions of a batch of images.

        Parameters
        ----------
        images : torch.Tensor of shape (n, S, S) or (n, 1, S, S)
            Images at ``S = image_size``. Each is min-max scaled on its own, so the
            output does not change under ``a * image + b`` with ``a > 0``.

        Returns
        -------
        torch.Tensor of shape (n, 4)
            Unit quaternions, scalar first (w, x, y, z), in the parameters' dtype.
            Not canonical for ``output="quaternion"`` (q and -q are one rotation);
            canonical (``w >= 0``) for ``output="axis_angle"``.
        """
        raw = self.head(self.forward_features(images)["pooled"])
        if self.output == "axis_angle":
            return axis_angle_to_quat(math.pi * torch.tanh(raw))
        return nn.functional.normalize(raw, dim=-1, eps=1e-12)
