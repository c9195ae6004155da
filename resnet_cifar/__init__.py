"""resnet-cifar: a hand-written ResNet-50 trained and evaluated on CIFAR-10.

The package never imports torchvision, and imports DALI only when a DALI loader is asked for.
"""

from resnet_cifar.errors import DataError, ResnetCifarError, UsageError

__version__ = "0.1.0"

__all__ = ["DataError", "ResnetCifarError", "UsageError", "__version__"]
