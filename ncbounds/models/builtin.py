"""Built-in architectures, written from scratch for small experiments and tests.

Conventions shared by every built-in:

- the last module is an ``nn.Linear`` classifier named ``fc``; the **penultimate features** are the
  input of ``fc`` (a forward pre-hook on ``model.fc`` sees them);
- every layer is a named submodule (activations included, as ``nn.ReLU`` modules), so
  ``model.named_modules()`` gives stable, meaningful names to hook for layerwise statistics;
- constructors take keyword arguments with defaults only, so ``build_model("mlp:width=512")`` works;
  invalid values raise ``ValueError`` (``build_model`` turns it into a one-sentence ``UsageError``);
- no pretrained weights, nothing is downloaded; initialization is PyTorch's default.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "CNN1D", "LeNet5", "ResNet18CIFAR", "BasicBlock"]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class MLP(nn.Module):
    """Fully connected ReLU network.

    Layout: ``features`` = ``depth`` blocks of ``Linear(·, width)`` + ``ReLU`` (names
    ``features.0`` (Linear), ``features.1`` (ReLU), ``features.2`` (Linear), ...), then ``fc`` =
    ``Linear(width, num_classes)``. With ``depth=0`` ``fc`` acts on the inputs directly (a linear
    model). Inputs of any shape ``(B, *)`` are flattened to ``(B, prod(*))``, which must equal
    ``input_dim`` (e.g. 64 for 8×8 digits, 40 for MNIST-1D).
    """

    def __init__(
        self,
        input_dim: int = 64,
        num_classes: int = 10,
        width: int = 128,
        depth: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(input_dim=input_dim, num_classes=num_classes, width=width)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
        self.input_dim = input_dim
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        dim = input_dim
        for _ in range(depth):
            layers += [nn.Linear(dim, width, bias=bias), nn.ReLU()]
            dim = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(dim, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.flatten(1)))


class CNN1D(nn.Module):
    """Small 1-D convolutional network for MNIST-1D (sequences of length 40).

    Layout: ``features`` = ``depth`` blocks of ``Conv1d(kernel 5, padding 2)`` + ``ReLU``; the first
    block has stride 1 and the following ones stride 2 (names ``features.0`` (Conv1d),
    ``features.1`` (ReLU), ...); then ``pool`` (global average pooling over length), ``flatten``,
    and ``fc`` = ``Linear(channels, num_classes)``. Inputs ``(B, L)`` are treated as one channel;
    ``(B, in_channels, L)`` is used as is. Thanks to global pooling any length ``L >= 1`` works;
    ``input_length`` is recorded as metadata only.
    """

    def __init__(
        self,
        input_length: int = 40,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: int = 32,
        depth: int = 3,
    ) -> None:
        super().__init__()
        _check_positive(
            input_length=input_length,
            in_channels=in_channels,
            num_classes=num_classes,
            channels=channels,
            depth=depth,
        )
        self.input_length = input_length
        self.in_channels = in_channels
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv1d(c_in, channels, kernel_size=5, stride=stride, padding=2),
                nn.ReLU(),
            ]
            c_in = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.fc(self.flatten(self.pool(self.features(x))))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) in its modern form: ReLU activations and max pooling.

    Layout: ``conv1`` (6 maps, 5×5) ``act1`` ``pool1`` (2×2) ``conv2`` (16 maps, 5×5) ``act2``
    ``pool2`` ``flatten`` ``fc1`` (120) ``act3`` ``fc2`` (84) ``act4`` ``fc`` (num_classes). Inputs
    are ``(B, in_channels, input_size, input_size)``; ``(B, input_size²)`` and ``(B, H, W)`` are
    reshaped for one channel.

    Padding is chosen from ``input_size`` so small images work: ``conv1`` is padded by 2 for inputs
    smaller than 32 (the usual MNIST 28×28 convention, equivalent to LeNet's 32×32 input) and not at
    all from 32 up (classic LeNet on CIFAR); ``conv2`` is padded by 2 only when the map after
    ``pool1`` is too small for an unpadded 5×5 convolution (e.g. 8×8 digits). The flattened size
    seen by ``fc1`` is computed from these rules (16·5·5 = 400 for 28 and 32, 16·2·2 = 64 for 8).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, input_size=input_size)
        pad1 = 2 if input_size < 32 else 0
        s1 = (input_size + 2 * pad1 - 4) // 2
        if s1 < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet5 (need at least 4)")
        pad2 = 0 if s1 - 4 >= 2 else 2
        s2 = (s1 + 2 * pad2 - 4) // 2
        if s2 < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet5 (need at least 4)")
        self.in_channels = in_channels
        self.input_size = input_size
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad1)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=pad2)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(16 * s2 * s2, 120)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = nn.ReLU()
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.input_size, self.input_size)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(self.flatten(x)))
        x = self.act4(self.fc2(x))
        return self.fc(x)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv + BatchNorm, identity or 1×1-conv ``downsample`` shortcut.

    Submodule names follow torchvision (``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2``,
    ``downsample``), so ``layer2.0.downsample.0`` etc. mean the same as there.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18CIFAR(nn.Module):
    """The standard CIFAR ResNet-18 (He et al. 2016, as in most CIFAR training code).

    Layout: ``conv1`` (3×3, stride 1, no bias) ``bn1`` ``relu`` — no max pooling — then
    ``layer1``..``layer4`` of two :class:`BasicBlock` each with ``width``, 2·, 4·, 8·``width``
    channels (strides 1, 2, 2, 2), ``avgpool`` (adaptive, to 1×1), ``flatten`` and
    ``fc`` = ``Linear(8·width, num_classes)``. Penultimate dimension: 512 for ``width=64``.
    Contains BatchNorm, so it must be evaluated in ``eval()`` mode. Inputs
    ``(B, in_channels, H, W)`` of any spatial size (32×32 for CIFAR).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        planes = [width, 2 * width, 4 * width, 8 * width]
        strides = [1, 2, 2, 2]
        in_planes = width
        for i, (p, s) in enumerate(zip(planes, strides, strict=True), start=1):
            self.add_module(
                f"layer{i}", nn.Sequential(BasicBlock(in_planes, p, s), BasicBlock(p, p))
            )
            in_planes = p
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))
