"""Named choices as data: one registry ``{name: spec}`` per kind, read by the config and the CLI,
implemented by the rooms above.

A setting that picks one of several named things (``--optimizer``, ``--schedule``, ``--augment``,
``--monitor``, ``--pretrained``, ``--depth``, ``--stem``) takes its names from one registry here:
the config checks a value against it, the flag's --help lists it, and the module that implements
the choice reads the spec to build it. Registries are plain frozen data with no torch import, so reading a config
and ``resnet-cifar --help`` stay light; this room imports nothing else of the project.

Where an implementation cannot be data (a schedule's builder, a policy sampler's tensor and DALI
code), the implementing module keeps a table keyed by the same names and passes it through
``bound`` at import time: a name added here without its implementation, or the reverse, fails
the first import (so every test), never a user's run.

- ``optimizers``: name -> torch class (by dotted path, as timm's OptimInfo allows), learning-rate
  scaling rule, the options it takes.
- ``schedules``: name -> the settings it reads, whether its own rise is the warm-up.
- ``policies``: name -> the sampler, the op space with its magnitude ranges, the bins (and
  AutoAugment's sub-policies); both loaders execute these tables.
- ``monitors``: metric -> whether higher or lower is better.
- ``weights``: named ImageNet weights -> their file.
- ``models``: ResNet depth -> its block and blocks per stage; the stems.
- ``corruptions``: CIFAR-10-C corruption -> family, parameters per severity, or why it is left out
  (``eval --corruptions``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

# CIFAR-10's image side in pixels: the size the policies' ranges are stated for (a translation of
# 150/331 of it), the largest cutout square and the smallest --image-size.
IMAGE_SIDE = 32

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def one_of(names: Iterable[object], last: str = "or") -> str:
    """Names as a person lists them: ``"sgd, adam or adamw"``."""
    words = [str(name) for name in names]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def described(registry: Mapping[str, Any], last: str = "or") -> str:
    """A registry's names as --help lists them, each with its spec's ``help`` in brackets where it
    has one: ``"none, autoaugment (CIFAR-10 policy) or trivialaugment (Wide)"``."""
    return one_of((f"{name} ({spec.help})" if spec.help else name for name, spec in registry.items()), last)


def bound(implementations: Mapping[K, T], names: Iterable[K], what: str) -> Mapping[K, T]:
    """``implementations``, checked to cover exactly ``names`` (a registry's keys); called at import
    time by the module that implements a registry, so the two cannot drift apart."""
    wanted = list(names)
    missing = [name for name in wanted if name not in implementations]
    unknown = [name for name in implementations if name not in wanted]
    if missing or unknown:
        raise TypeError(f"{what}: no implementation of {missing or 'none'}; not registered: {unknown or 'none'}")
    return implementations
