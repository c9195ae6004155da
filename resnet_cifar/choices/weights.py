"""The named pretrained weights of ``--pretrained``: torchvision's ResNet-50 ImageNet-1k files.

v1 is the original recipe (76.1% top-1), v2 the 2021 "new training recipe" (80.9% top-1). Both
hold a ResNet-50 with ImageNet's 7x7 conv1; models/pretrained.py downloads and checks the file
(the hash is in its name).
"""

from __future__ import annotations

PRETRAINED_FILES: dict[str, str] = {
    "imagenet1k-v1": "resnet50-0676ba61.pth",
    "imagenet1k-v2": "resnet50-11ad3fa6.pth",
}
# What every named file holds: the depth and stem they need.
PRETRAINED_DEPTH = 50
