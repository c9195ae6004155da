"""A hand-written ResNet family (He et al., 2015), laid out so its state dicts match torchvision's.

The Bottleneck puts the stride on its 3x3 convolution ("ResNet v1.5", as torchvision and NVIDIA
do), which is slightly more accurate than the paper's stride on the first 1x1 convolution.

Module names, registration order and tensor shapes follow ``torchvision.models.resnet*`` exactly
(conv1, bn1, layerN.i.conv1..3/bn1..3, layerN.0.downsample.0/1, fc), so torchvision's published
ImageNet weights load without any key mapping. Modules without state (ReLU, pools, dropout) add
no keys, which is why the optional dropout can sit before ``fc`` without changing the state dict.

Two stems:
- ``"imagenet"``: torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool (4x downsampling),
  meant for 224-pixel inputs;
- ``"cifar"``: a 3x3 stride-1 convolution and no max-pool, the usual choice for 32-pixel inputs,
  where a 4x downsampling in the stem would leave layer4 with a 1x1 feature map.

The depths, blocks and stems are the registry resnet_cifar.choices.models (which the config
checks ``--depth`` and ``--stem`` against); this module binds its blocks, stems and builders to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from resnet_cifar.choices import bound
from resnet_cifar.choices.models import BLOCKS, DEPTHS, STEMS
from resnet_cifar.errors import UsageError


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1; no bias, because batch norm follows and has its own."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (batch norm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def init_conv_weight(conv: nn.Conv2d) -> None:
    """He initialisation (fan-out, ReLU gain) as torchvision uses; shared with weight loading."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Projection shortcut: keys ``downsample.0`` (conv) and ``downsample.1`` (bn), as torchvision."""
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (ResNet-18/34)."""

    expansion: int = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The shortcut is computed after the branch so its output is not held alive during it.
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a skip connection (ResNet-50+)."""

    expansion: int = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # The shortcut is computed after the branch so its output is not held alive during it.
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, four stages of residual blocks, global average pool, optional dropout, the linear top layer (``fc``).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        stage_blocks: number of blocks in each of the four stages.
        num_classes: outputs of the top layer.
        stem: ``"cifar"`` (3x3 stride-1 conv, no max-pool) or ``"imagenet"`` (7x7/2 conv, 3x3/2 max-pool).
        dropout: probability of the dropout before the top layer (``fc``); 0 disables it.
        zero_init_residual: start each residual branch's last batch-norm scale at zero, so every
            block begins as the identity (Goyal et al., 2017), as torchvision's flag does.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        stage_blocks: tuple[int, int, int, int],
        *,
        num_classes: int = 10,
        stem: str = "cifar",
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _check_options(num_classes=num_classes, dropout=dropout)
        assert stem in STEMS, f"unknown stem {stem!r}"  # the config names the flag's choices
        self.stem = stem
        self.num_classes = num_classes
        stem_channels = 64
        self.conv1, self.maxpool = _STEM_LAYERS[stem](stem_channels)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

        self._in_channels = stem_channels
        self.layer1 = self._make_stage(block, 64, stage_blocks[0], stride=1)
        self.layer2 = self._make_stage(block, 128, stage_blocks[1], stride=2)
        self.layer3 = self._make_stage(block, 256, stage_blocks[2], stride=2)
        self.layer4 = self._make_stage(block, 512, stage_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # Identity rather than Dropout(0) so the default model does no extra work; neither has state.
        self.dropout: nn.Module = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                init_conv_weight(module)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn.weight)

    def _make_stage(
        self, block: type[BasicBlock] | type[Bottleneck], width: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = _projection(self._in_channels, out_channels, stride)
        blocks: list[nn.Module] = [block(self._in_channels, width, stride, downsample)]
        self._in_channels = out_channels
        blocks.extend(block(out_channels, width) for _ in range(1, num_blocks))
        return nn.Sequential(*blocks)

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features, shape ``[N, 512 * expansion]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if torch.are_deterministic_algorithms_enabled():
            # AdaptiveAvgPool2d's CUDA backward has no deterministic kernel (--deterministic
            # raises there); a mean over H and W is the same average, with no state of its own.
            pooled = x.mean(dim=(2, 3), keepdim=True)
        else:
            pooled = self.avgpool(x)
        return torch.flatten(pooled, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.features(x)))


def _cifar_stem(channels: int) -> tuple[nn.Conv2d, nn.Module]:
    """(conv1, maxpool): a 3x3 stride-1 convolution, no max-pool."""
    return conv3x3(3, channels), nn.Identity()


def _imagenet_stem(channels: int) -> tuple[nn.Conv2d, nn.Module]:
    """(conv1, maxpool): torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool."""
    conv = nn.Conv2d(3, channels, kernel_size=7, stride=2, padding=3, bias=False)
    return conv, nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


_STEM_LAYERS: dict[str, Callable[[int], tuple[nn.Conv2d, nn.Module]]] = dict(
    bound({"cifar": _cifar_stem, "imagenet": _imagenet_stem}, STEMS, "ResNet stems")
)
_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = dict(
    bound({"basic": BasicBlock, "bottleneck": Bottleneck}, BLOCKS, "ResNet blocks")
)


def _check_options(*, num_classes: int, dropout: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout!r}")


def _resnet(
    depth: int, *, num_classes: int, stem: str, dropout: float, zero_init_residual: bool
) -> ResNet:
    spec = DEPTHS[depth]
    return ResNet(
        _BLOCKS[spec.block],
        spec.stage_blocks,
        num_classes=num_classes,
        stem=stem,
        dropout=dropout,
        zero_init_residual=zero_init_residual,
    )


def resnet18(
    *, num_classes: int = 10, stem: str = "cifar", dropout: float = 0.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2)."""
    return _resnet(18, num_classes=num_classes, stem=stem, dropout=dropout, zero_init_residual=zero_init_residual)


def resnet34(
    *, num_classes: int = 10, stem: str = "cifar", dropout: float = 0.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3)."""
    return _resnet(34, num_classes=num_classes, stem=stem, dropout=dropout, zero_init_residual=zero_init_residual)


def resnet50(
    *, num_classes: int = 10, stem: str = "cifar", dropout: float = 0.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3): the project's model.

    23,520,842 parameters with the defaults (10 classes, cifar stem); 25,557,032 with
    ``num_classes=1000, stem="imagenet"``, the same as ``torchvision.models.resnet50()``.
    """
    return _resnet(50, num_classes=num_classes, stem=stem, dropout=dropout, zero_init_residual=zero_init_residual)


def resnet101(
    *, num_classes: int = 10, stem: str = "cifar", dropout: float = 0.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-101 (Bottleneck, 3-4-23-3)."""
    return _resnet(101, num_classes=num_classes, stem=stem, dropout=dropout, zero_init_residual=zero_init_residual)


def resnet152(
    *, num_classes: int = 10, stem: str = "cifar", dropout: float = 0.0, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-152 (Bottleneck, 3-8-36-3)."""
    return _resnet(152, num_classes=num_classes, stem=stem, dropout=dropout, zero_init_residual=zero_init_residual)


# The builders by depth, for code that picks the depth from a config (trainer, evaluation).
RESNET_BUILDERS: dict[int, Callable[..., ResNet]] = dict(
    bound({18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101, 152: resnet152}, DEPTHS, "ResNet builders")
)
