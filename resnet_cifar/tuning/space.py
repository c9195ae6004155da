"""Search spaces: which settings a sweep varies, and over which values.

A space maps dotted TrainConfig keys (``"optim.lr"``) to a parameter spec, one of::

    {"type": "float", "low": 0.01, "high": 1.0, "log": true}        # optional "step" (not with log)
    {"type": "int", "low": 1, "high": 5}                             # optional "step" or "log"
    {"type": "categorical", "choices": [128, 256, 512]}

A space file is TOML or YAML and may write keys dotted or nested by section; these are equal::

    ["optim.lr"]                       [optim.lr]
    type = "float"                     type = "float"
    low = 0.01                         low = 0.01
    high = 1.0                         high = 1.0
    log = true                         log = true

    # YAML
    optim.lr: {type: float, low: 0.01, high: 1.0, log: true}
    optim:
      lr: {type: float, low: 0.01, high: 1.0, log: true}

The default space (``DEFAULT_SPACE``) varies the learning rate (log scale), batch size, weight decay
(log scale), optimizer, schedule, the augmentations (crop and flip on or off, cutout size, the
per-image policy, the mixup and cutmix alphas), label smoothing and dropout. ``load_space`` checks a file as a whole: unknown keys, settings that cannot
be searched (paths, the preset, the milestone list), a spec of the wrong kind for its setting (a
float range for an integer), malformed bounds and choices of the wrong type are a one-line
UsageError naming the file and the key. ``check_space`` then refuses, before any trial, a bound or
choice that the setting itself refuses given the sweep's fixed settings (a dropout of 1).
Combinations are checked per trial: a sampled config that does not validate (a batch size above
--limit-train) fails that trial only.
"""

from __future__ import annotations

import math
import numbers
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from resnet_cifar.choices.policies import POLICIES
from resnet_cifar.config import SECTIONS, ConfigValueError, TrainConfig, read_document, settings, unwrap_optional
from resnet_cifar.errors import UsageError
from resnet_cifar.files import shorten

KINDS = ("float", "int", "categorical")
# Settings a sweep must not vary: where data and runs live, the checkpoint to resume, the preset
# (it is a layer under the other settings, not a setting of its own).
NOT_SEARCHABLE = ("data.data_dir", "data.cache_dir", "run.out_dir", "run.resume", "run.preset")

# The built-in space. The lr range is wide on purpose: SGD wants ~0.05-0.5, Adam(W) ~1e-3; TPE
# learns which pairs work, and a pair that diverges fails its trial without stopping the sweep.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optim.lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "data.batch_size": {"type": "categorical", "choices": [128, 256, 512]},
    "optim.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "optim.optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "optim.schedule": {"type": "categorical", "choices": ["onecycle", "cosine"]},
    "data.crop": {"type": "categorical", "choices": [True, False]},
    "data.flip": {"type": "categorical", "choices": [True, False]},
    "data.cutout": {"type": "categorical", "choices": [0, 8, 16]},
    "data.augment": {"type": "categorical", "choices": list(POLICIES)},
    # 0 is off; 1.0 is the alpha mixup and cutmix use on CIFAR-10, 0.2 mixup's milder ImageNet one.
    "data.mixup": {"type": "categorical", "choices": [0.0, 0.2, 1.0]},
    "data.cutmix": {"type": "categorical", "choices": [0.0, 1.0]},
    "optim.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
}

_SPEC_FIELDS = {
    "float": ({"type", "low", "high"}, {"log", "step"}),
    "int": ({"type", "low", "high"}, {"log", "step"}),
    "categorical": ({"type", "choices"}, set()),
}


@dataclass(frozen=True)
class Parameter:
    """One searched setting: ``key`` is a dotted TrainConfig key, also the Optuna parameter name."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def distribution(self) -> Any:
        """The Optuna distribution ``suggest`` draws from (to compare with a study's earlier trials)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)
        return CategoricalDistribution(list(self.choices))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[Parameter, ...]
    source: str = "the search space"  # the file it came from, for error messages

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(parameter.key for parameter in self.parameters)

    def without(self, keys: Iterable[str]) -> SearchSpace:
        """The space less ``keys`` (settings the user fixed with a flag)."""
        fixed = set(keys)
        kept = tuple(parameter for parameter in self.parameters if parameter.key not in fixed)
        return SearchSpace(kept, self.source)

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {parameter.key: parameter.suggest(trial) for parameter in self.parameters}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {parameter.key: parameter.to_dict() for parameter in self.parameters}


def default_space() -> SearchSpace:
    return parse_space(DEFAULT_SPACE, source="the default space")


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and check a TOML or YAML space file; every error is one line naming the file. It is
    read as a config file is, so numbers (YAML's 5e-4 too) mean the same in both."""
    return parse_space(read_document(path, "search space file"), source=str(path))


def parse_space(document: Any, *, source: str) -> SearchSpace:
    """A checked SearchSpace from a mapping of dotted (or section-nested) keys to specs."""
    if not isinstance(document, Mapping):
        raise UsageError(f"{source}: a search space must map settings to specs, got {type(document).__name__}")
    # The config's one check of setting names: dotted keys or a section's table of specs, in order.
    named = settings(document, where=f"{source}: ", dotted=True, noun="setting")
    parameters = [_parameter(f"{section}.{name}", spec, source) for section, name, spec in named]
    if not parameters:
        raise UsageError(f"{source}: the search space is empty")
    return SearchSpace(tuple(parameters), source)


# --- helpers -------------------------------------------------------------------------------------


def _field_type(key: str, source: str) -> tuple[type, bool]:
    """(the setting's base type, whether it may be None) of a known setting; unsearchable ones refused."""
    section, _, name = key.partition(".")
    if key in NOT_SEARCHABLE:
        raise UsageError(f"{source}: {key} cannot be searched; set it with its flag")
    base, optional = unwrap_optional(typing.get_type_hints(SECTIONS[section])[name])
    if base not in (bool, int, float, str):
        raise UsageError(f"{source}: {key} cannot be searched; set it with its flag")
    return base, optional


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _parameter(key: str, spec: Any, source: str) -> Parameter:
    base, optional = _field_type(key, source)
    where = f"{source}: {key}"
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where} must be a table such as {{type = \"float\", low = 0.01, high = 1.0}}, got {shorten(spec)}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise UsageError(f"{where}: type must be one of {', '.join(KINDS)}, got {shorten(kind)}")
    required, optional_fields = _SPEC_FIELDS[kind]
    unknown = sorted(str(name) for name in spec if name not in required | optional_fields)
    if unknown:
        raise UsageError(f"{where}: unknown field {shorten(unknown[0])} for type {kind}")
    missing = sorted(required - set(spec))
    if missing:
        raise UsageError(f"{where}: type {kind} needs {shorten(missing[0])}")

    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: choices must be a non-empty list, got {shorten(choices)}")
        for choice in choices:
            if not (choice is None and optional):
                _check_type(key, choice, base, where, "choice")
        return Parameter(key, kind, choices=tuple(choices))

    if base is not float and not (kind == "int" and base is int):
        kinds = "int or categorical" if base is int else "categorical"
        raise UsageError(f"{where}: a {kind} range does not fit a {base.__name__} setting; use type {kinds}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, bound in (("low", low), ("high", high)):
        if not _is_number(bound) or (kind == "int" and not float(bound).is_integer()):
            raise UsageError(f"{where}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got {shorten(bound)}")
    if not low < high:
        raise UsageError(f"{where}: low must be below high, got low {low} and high {high}")
    if not isinstance(log, bool):
        raise UsageError(f"{where}: log must be true or false, got {shorten(log)}")
    if log and low <= 0:
        raise UsageError(f"{where}: a log scale needs low > 0, got {low}")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
            raise UsageError(f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}, got {shorten(step)}")
        if log:
            raise UsageError(f"{where}: step and log cannot be combined")
    if kind == "int":
        return Parameter(key, kind, low=int(low), high=int(high), log=log, step=None if step is None else int(step))
    return Parameter(key, kind, low=float(low), high=float(high), log=log, step=None if step is None else float(step))


def _check_type(key: str, value: Any, base: type, where: str, what: str) -> None:
    """A bound or choice must have the setting's type (an int is a fine float)."""
    fits = {
        bool: isinstance(value, bool),
        int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
        float: _is_number(value),
        str: isinstance(value, str),
    }[base]
    if not fits:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
        raise UsageError(f"{where}: {what} {shorten(value)} does not fit the setting: it must be {kind}")


def check_space(space: SearchSpace, base: TrainConfig) -> None:
    """Refuse a bound or choice that the setting refuses with the sweep's fixed settings (``base``),
    e.g. a dropout of 1, so a bad space fails before any trial rather than in every trial.

    Only errors about the parameter's own key count: one about another key (a batch size above
    --limit-train) is a matter of combination, which fails the trial that samples it."""
    plain = base.to_dict()
    for parameter in space.parameters:
        section, _, name = parameter.key.partition(".")
        values = parameter.choices if parameter.kind == "categorical" else (parameter.low, parameter.high)
        for value in values:
            if parameter.kind == "int":
                value = int(value)
            trial = {**plain, section: {**plain[section], name: value}}
            try:
                TrainConfig.from_dict(trial)
            except ConfigValueError as error:
                if error.key == parameter.key:
                    raise UsageError(f"{space.source}: {parameter.key}: {shorten(value)} is refused: {error}") from None
