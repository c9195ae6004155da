"""A run's config from its layers, lowest first::

    dataclass defaults < ``defaults`` (environment-derived, e.g. the data folder)
        < the preset (``PRESETS``) < the config file (TOML or YAML) < ``overrides`` (CLI flags)

then validated once, with the learning rate resolved for the run's processes. docs/recipes.md
explains the presets and the file format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resnet_cifar.config.fields import ConfigValueError, flag_for, listed, show
from resnet_cifar.config.files import read_config_file
from resnet_cifar.config.keys import sectioned
from resnet_cifar.config.presets import DEFAULT_PRESET, PRESETS
from resnet_cifar.config.sections import SECTIONS
from resnet_cifar.config.train import TrainConfig, build_sections
from resnet_cifar.files import shorten


def resolve_config(
    *,
    preset: str | None = None,
    file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    world_size: int = 1,
    lr_per_process: bool = False,
) -> TrainConfig:
    """Layer a run's settings and validate the result once.

    Lowest to highest: the dataclass defaults; ``defaults`` (values the caller derives from the
    environment, e.g. ``{"data.data_dir": default_data_dir(os.environ)}``); the preset; the config
    ``file`` (.toml, .yaml or .yml, sections [data], [model], [optim], [precision],
    [early_stopping], [run]); ``overrides`` (the flags the user gave).

    The preset is ``preset`` if given, else ``overrides["run.preset"]``, else the file's
    ``run.preset``, else ``"default"``; ``run.preset`` of the result names it.

    ``world_size`` is the number of training processes: a learning rate that no layer gives is
    scaled from ``optim.lr_base`` to the global batch, ``batch_size x world_size``.
    ``lr_per_process`` (``--scale-lr``): the ``optim.lr`` of ``overrides`` is stated for one
    process's batch, and is scaled to the global batch the same way (config.train's ``resolve_lr``).

    ``overrides`` and ``defaults`` map dotted names (``{"optim.lr": 0.1}``) or sections
    (``{"optim": {"lr": 0.1}}``) to values; a None value counts as not given.

    Raises:
        UsageError: an unknown preset, section or key; a missing, unreadable or malformed file;
            a wrong type or invalid value (the message names the flag, and the key and file when
            the value came from the file).
    """
    file_path = Path(file) if file is not None else None
    file_values = read_config_file(file_path) if file_path is not None else {}
    override_values = _nest(overrides or {}, what="override")
    default_values = _nest(defaults or {}, what="default")
    chosen = _choose_preset(preset, override_values, file_values, file_path)

    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    from_file: set[str] = set()
    for layer in (default_values, PRESETS[chosen], file_values, override_values):
        for section, entries in layer.items():
            for name, value in entries.items():
                merged[section][name] = value
                key = f"{section}.{name}"
                if layer is file_values:
                    from_file.add(key)
                else:
                    from_file.discard(key)
    merged["run"]["preset"] = chosen
    try:
        _refuse_null_over_preset(chosen, merged)
        per_process = lr_per_process and "lr" in override_values.get("optim", {})
        return TrainConfig(**build_sections(merged, world_size=world_size, lr_per_process=per_process))
    except ConfigValueError as error:
        if error.key in from_file:
            raise ConfigValueError(error.key, f"{error} ({error.key} in {file_path})") from None
        raise


def _refuse_null_over_preset(chosen: str, merged: Mapping[str, Mapping[str, Any]]) -> None:
    """A null (a YAML file's) for a setting the preset sets: a saved TOML would leave it out and its
    reload would bring the preset's value back, so the run could not be repeated from its config."""
    for section, entries in PRESETS[chosen].items():
        for name, value in entries.items():
            if name in merged.get(section, {}) and merged[section][name] is None:
                key = f"{section}.{name}"
                raise ConfigValueError(
                    key, f"{flag_for(key)} cannot be null with --preset {chosen}, which sets it to {show(value)}"
                )


def _choose_preset(
    preset: str | None,
    override_values: dict[str, dict[str, Any]],
    file_values: dict[str, dict[str, Any]],
    file_path: Path | None,
) -> str:
    where = ""
    if preset is not None:
        chosen: Any = preset
    elif "preset" in override_values.get("run", {}):
        chosen = override_values["run"]["preset"]
    elif "preset" in file_values.get("run", {}):
        chosen = file_values["run"]["preset"]
        where = f" (run.preset in {file_path})"
    else:
        chosen = DEFAULT_PRESET
    if not isinstance(chosen, str) or chosen not in PRESETS:
        message = f"--preset must be one of {listed(PRESETS)}, got {shorten(chosen)}{where}"
        raise ConfigValueError("run.preset", message)
    return chosen


def _nest(values: Mapping[str, Any], *, what: str) -> dict[str, dict[str, Any]]:
    """Dotted or sectioned settings as {section: {name: value}}, unknown names refused, None dropped."""
    nested = sectioned(values, where=f"{what}: ", dotted=True)
    return {section: {name: value for name, value in entries.items() if value is not None} for section, entries in nested.items()}
