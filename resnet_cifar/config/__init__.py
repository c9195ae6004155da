"""Frozen, validated configuration, one dataclass per concern, and how a run's config is resolved.

    fields.py     a field with its --help and flag, ConfigValueError, Section: type checks and
                  lossless conversion, plain dicts
    sections.py   DataConfig, ModelConfig, OptimConfig, PrecisionConfig, EarlyStoppingConfig,
                  RunConfig: defaults ARE the default recipe; each value validated here, once
    presets.py    PRESETS: each recipe as its differences from the defaults
    keys.py       settings/sectioned: the one check of section and setting names, for every document
    train.py      TrainConfig (to_dict/from_dict); resolve_lr, the one learning-rate rule
    files.py      TOML/YAML read (read_document, read_config_file) and save_config
    resolve.py    resolve_config: defaults < preset < file < flags

Named choices (optimizers, schedules, policies, monitors, weights) are the registries of
resnet_cifar.choices; nothing here imports torch, so reading a config and ``--help`` stay light.
Errors are ``UsageError`` (exit 2) with a one-line message naming the CLI flag, e.g.
``--lr must be positive, got 0``. Builders take only their section; no module below the CLI sees
raw CLI arguments. ``save_config`` writes the resolved config beside a run so that
``resolve_config(file=that_file)`` gives the same ``TrainConfig`` back. docs/recipes.md explains
the presets and the file format.
"""

from resnet_cifar.choices import IMAGE_SIDE
from resnet_cifar.choices.models import DEPTHS, STEMS
from resnet_cifar.choices.monitors import METRIC_MODES
from resnet_cifar.choices.optimizers import OPTIMIZERS
from resnet_cifar.choices.policies import POLICIES, RANDAUGMENT_BINS, RANDAUGMENT_MAX_OPS
from resnet_cifar.choices.schedules import SCHEDULES
from resnet_cifar.config.fields import FLAG_EXCEPTIONS, ConfigValueError, Section, flag_for, setting, unwrap_optional
from resnet_cifar.config.files import (
    CONFIG_SUFFIXES,
    config_text,
    parse_toml,
    parse_yaml,
    read_config_file,
    read_document,
    save_config,
)
from resnet_cifar.config.keys import sectioned, settings
from resnet_cifar.config.presets import DEFAULT_PRESET, PRESETS
from resnet_cifar.config.resolve import resolve_config
from resnet_cifar.config.sections import (
    AMP_DTYPES,
    DEVICES,
    LOADER_KINDS,
    PRETRAINED_NAMES,
    SECTIONS,
    SEED_LIMIT,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    RunConfig,
)
from resnet_cifar.config.train import TrainConfig, describe_lr, resolve_lr, scaled_lr

# The policy registry, under the name the config has always given it.
AUGMENT_POLICIES = POLICIES

__all__ = [
    "AMP_DTYPES",
    "AUGMENT_POLICIES",
    "CONFIG_SUFFIXES",
    "DEFAULT_PRESET",
    "DEPTHS",
    "DEVICES",
    "FLAG_EXCEPTIONS",
    "IMAGE_SIDE",
    "LOADER_KINDS",
    "METRIC_MODES",
    "OPTIMIZERS",
    "POLICIES",
    "PRESETS",
    "PRETRAINED_NAMES",
    "RANDAUGMENT_BINS",
    "RANDAUGMENT_MAX_OPS",
    "SCHEDULES",
    "SECTIONS",
    "SEED_LIMIT",
    "STEMS",
    "ConfigValueError",
    "DataConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "OptimConfig",
    "PrecisionConfig",
    "RunConfig",
    "Section",
    "TrainConfig",
    "config_text",
    "describe_lr",
    "flag_for",
    "parse_toml",
    "parse_yaml",
    "read_config_file",
    "read_document",
    "resolve_config",
    "resolve_lr",
    "save_config",
    "scaled_lr",
    "sectioned",
    "setting",
    "settings",
    "unwrap_optional",
]
