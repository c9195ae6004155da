"""The ResNets of ``--depth`` and the stems of ``--stem``, as data.

models/resnet.py builds a depth from its spec (its block and the blocks of each stage, He et
al. 2015, table 1) and keeps one builder per block and per stem, bound to ``BLOCKS`` and
``STEMS`` at import; the config checks ``--depth`` and ``--stem`` against these and its --help
lists them. A new depth of an existing block is one entry in ``DEPTHS``.
"""

from __future__ import annotations

from dataclasses import dataclass

# "basic": two 3x3 convolutions (ResNet-18/34); "bottleneck": 1x1 reduce, 3x3, 1x1 expand by 4.
BLOCKS = ("basic", "bottleneck")


@dataclass(frozen=True)
class DepthSpec:
    """One ResNet depth: its block (one of ``BLOCKS``) and the number of blocks in each of the
    four stages."""

    block: str
    stage_blocks: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        assert self.block in BLOCKS, f"unknown block {self.block!r}"


DEPTHS: dict[int, DepthSpec] = {
    18: DepthSpec("basic", (2, 2, 2, 2)),
    34: DepthSpec("basic", (3, 4, 6, 3)),
    50: DepthSpec("bottleneck", (3, 4, 6, 3)),
    101: DepthSpec("bottleneck", (3, 4, 23, 3)),
    152: DepthSpec("bottleneck", (3, 8, 36, 3)),
}


@dataclass(frozen=True)
class StemSpec:
    """One stem: ``help`` says what it is (--help shows it after the name)."""

    help: str


STEMS: dict[str, StemSpec] = {
    # The usual choice for 32-pixel inputs: a 4x downsampling stem would leave layer4 at 1x1.
    "cifar": StemSpec("3x3 conv, no max-pool"),
    # torchvision's, for 224-pixel inputs and ImageNet weights.
    "imagenet": StemSpec("7x7/2 conv + max-pool"),
}
