"""``TrainConfig``: a run's six sections as one frozen value, built from plain values in one way,
and the run's learning rate, resolved in one place.

``TrainConfig.to_dict``/``from_dict`` turn a config into plain types and back (checkpoints, JSON,
config.toml). ``resolve_lr`` is the one learning-rate rule: a TrainConfig built without an
``lr`` gets it for one process, and ``resolve_config`` for the run's processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from resnet_cifar.choices.optimizers import OPTIMIZERS
from resnet_cifar.config.fields import ConfigValueError, Section, flag_for, tidy
from resnet_cifar.config.keys import sectioned
from resnet_cifar.config.sections import (
    SECTIONS,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    RunConfig,
)
from resnet_cifar.errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, one validated section per concern."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for name, section_class in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, section_class):
                raise UsageError(f"TrainConfig.{name} must be a {section_class.__name__}, got {type(value).__name__}")
        # The one setting that spans two sections: a learning rate not given comes from the batch
        # size (one process here; resolve_config resolves it for several before it gets here).
        if self.optim.lr is None:
            object.__setattr__(self, "optim", resolve_lr(self.optim, self.data.batch_size))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain types (str, int, float, bool, None, lists), for checkpoints
        (``torch.load(weights_only=True)`` reads them) and JSON."""
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> TrainConfig:
        """The inverse of ``to_dict``. Unknown sections or keys are refused; missing ones take
        their default (``data.data_dir`` has none). ``where`` prefixes error messages."""
        if not isinstance(values, Mapping):
            raise UsageError(f"{where}a config must be a table of sections, got {type(values).__name__}")
        return cls(**build_sections(sectioned(values, where=where)))


def build_sections(values: Mapping[str, Mapping[str, Any]], *, world_size: int = 1, lr_per_process: bool = False) -> dict[str, Section]:
    """Each section from its checked names (``sectioned``'s result), with the learning rate
    resolved for ``world_size`` processes (see ``resolve_lr``)."""
    sections: dict[str, Any] = {}
    for name, section_class in SECTIONS.items():
        entries = values.get(name, {})
        for required in section_class.required():
            if required not in entries:
                key = f"{name}.{required}"
                raise ConfigValueError(key, f"{flag_for(key)} is required (or {required} in the [{name}] section)")
        sections[name] = section_class(**entries)
    sections["optim"] = resolve_lr(
        sections["optim"], sections["data"].batch_size, world_size=world_size, per_process=lr_per_process
    )
    return sections


def resolve_lr(optim: OptimConfig, batch_size: int, *, world_size: int = 1, per_process: bool = False) -> OptimConfig:
    """``optim`` with the run's learning rate, decided here and nowhere else.

    A given ``lr`` is used as given, unless ``per_process`` (``--scale-lr`` under torchrun) says it
    is stated for one process's batch: it then becomes ``lr_base`` at ``batch_size``. A rate not
    given is ``lr_base`` scaled by the optimizer's rule from ``lr_base_batch_size`` to the global
    batch, ``batch_size x world_size``."""
    if optim.lr is not None and per_process and world_size > 1:
        optim = replace(optim, lr=None, lr_base=optim.lr, lr_base_batch_size=batch_size)
    if optim.lr is not None:
        return optim
    return replace(optim, lr=scaled_lr(optim, batch_size * world_size))


def scaled_lr(optim: OptimConfig, global_batch_size: int) -> float:
    """``optim.lr_base`` scaled from ``optim.lr_base_batch_size`` to ``global_batch_size`` images by
    the optimizer's rule: linearly for SGD, by the square root for Adam and AdamW."""
    ratio = global_batch_size / optim.lr_base_batch_size
    return tidy(optim.lr_base * OPTIMIZERS[optim.optimizer].scale(ratio))


def describe_lr(optim: OptimConfig, global_batch_size: int) -> str:
    """The resolved rate and, when it came from the scaling rule, how: ``"0.05 = 0.4 x 64/512"``."""
    assert optim.lr is not None, "a resolved config always has its lr"
    shown = f"{optim.lr:.4g}"
    if global_batch_size == optim.lr_base_batch_size or optim.lr != scaled_lr(optim, global_batch_size):
        return shown
    ratio = OPTIMIZERS[optim.optimizer].shown_ratio(f"{global_batch_size}/{optim.lr_base_batch_size}")
    return f"{shown} = {optim.lr_base:.4g} x {ratio}"
