"""The optimizers, as data (timm's OptimInfo is the model): what ``--optimizer NAME`` builds and how
its learning rate follows the batch.

engine/optim.py builds any of them the same way: ``torch_class`` (imported by its dotted path,
so this module never imports torch) on the parameter groups, with ``lr``, ``weight_decay`` and
the keyword arguments named in ``options``. Adding an optimizer of ``torch.optim`` is one entry
here (plus its test and docs/recipes.md); the config's choices and ``--help`` follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer.

    help: what sets it apart, in a few words (--help shows it after the name).
    torch_class: its class as a dotted path (``"torch.optim.SGD"``).
    lr_scaling: how a learning rate stated for one batch size follows another: ``"linear"``
        (Goyal et al. 2017, for SGD) or ``"sqrt"`` (adaptive methods; Malladi et al. 2022, as timm).
    options: the keyword arguments it takes beyond lr and weight_decay; those that are settings
        (``momentum``, ``nesterov``) apply to it alone.
    """

    help: str
    torch_class: str
    lr_scaling: str
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.lr_scaling in LR_SCALING, f"lr_scaling must be one of {sorted(LR_SCALING)}"

    def scale(self, ratio: float) -> float:
        """The factor of a rate when the batch grows by ``ratio``."""
        return math.sqrt(ratio) if self.lr_scaling == "sqrt" else ratio

    def shown_ratio(self, ratio: str) -> str:
        """``scale``'s formula as a person reads it: ``"64/512"`` or ``"sqrt(64/512)"``."""
        return f"sqrt({ratio})" if self.lr_scaling == "sqrt" else ratio


# The scaling rules, and how --help says them.
LR_SCALING = {"linear": "linearly", "sqrt": "by sqrt"}

OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("Nesterov momentum by default", "torch.optim.SGD", "linear", ("momentum", "nesterov")),
    "adam": OptimizerSpec("weight decay as L2 in the gradient", "torch.optim.Adam", "sqrt", ("betas",)),
    "adamw": OptimizerSpec("decoupled weight decay", "torch.optim.AdamW", "sqrt", ("betas",)),
}


def optimizers_taking(option: str) -> tuple[str, ...]:
    """The optimizers a setting such as ``momentum`` applies to."""
    return tuple(name for name, spec in OPTIMIZERS.items() if option in spec.options)
