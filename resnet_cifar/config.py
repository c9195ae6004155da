"""Frozen, validated configuration, one dataclass per concern, and how a run's config is resolved.

Each section (``DataConfig``, ``ModelConfig``, ``OptimConfig``, ``PrecisionConfig``,
``EarlyStoppingConfig``, ``RunConfig``) checks and normalizes its own values once, in
``__post_init__``: wrong types and out-of-range values raise ``UsageError`` (exit 2) with a one-line
message naming the CLI flag, e.g. ``--lr must be positive, got 0``. Builders take only their section;
no module below the CLI sees raw CLI arguments.

``resolve_config`` layers the sources of a run's settings, lowest first::

    dataclass defaults < ``defaults`` (environment-derived, e.g. the data folder)
        < the preset (``PRESETS``) < the config file (TOML or YAML) < ``overrides`` (CLI flags)

``TrainConfig.to_dict``/``from_dict`` turn a config into plain types and back (checkpoints, JSON),
and ``save_config`` writes the resolved config beside a run so that
``resolve_config(file=that_file)`` gives the same ``TrainConfig`` back. docs/recipes.md explains the
presets and the file format.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import numbers
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Union

from resnet_cifar.errors import UsageError

LOADER_KINDS = ("auto", "tensor", "dali")
# resnet_cifar.data.augment.POLICIES, repeated so reading a config never imports torch; a test
# keeps the two lists equal.
AUGMENT_POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")
RANDAUGMENT_MAX_OPS = 10
RANDAUGMENT_BINS = 31
DEPTHS = (18, 34, 50, 101, 152)
STEMS = ("cifar", "imagenet")
# The named sources of resnet_cifar.models.pretrained (torchvision's ResNet-50 ImageNet weights),
# repeated here so reading a config never imports torch; a test keeps the two lists equal.
PRETRAINED_NAMES = ("imagenet1k-v1", "imagenet1k-v2")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("bf16", "fp16")
MONITORS = ("val_acc", "val_loss")
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")
# numpy's generators take seeds in [0, 2**32); torch takes more, but one range for every seed is simpler.
SEED_LIMIT = 2**32
IMAGE_SIDE = 32

# CLI flags whose name is not the field name with dashes (see flag_for).
_FLAG_EXCEPTIONS = {
    "run.out_dir": "--out",
    # The split/shuffle/augmentation seed; the CLI may set it together with run.seed from --seed.
    "data.seed": "--data-seed",
}


def flag_for(key: str) -> str:
    """The CLI flag of a dotted setting name: ``"optim.lr"`` -> ``"--lr"``."""
    return _FLAG_EXCEPTIONS.get(key, "--" + key.split(".", 1)[-1].replace("_", "-"))


class ConfigValueError(UsageError):
    """A bad value for one setting. ``key`` is its dotted name (``"optim.lr"``), so the caller that
    knows where the value came from (a config file) can say so."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _show(value: Any) -> str:
    """A value as the user would have typed it: 0 rather than 0.0, strings quoted."""
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _choices(options: tuple[Any, ...]) -> str:
    return ", ".join(str(option) for option in options)


class _Section:
    """Shared behaviour of the section dataclasses: type normalization, errors, plain dicts."""

    section: ClassVar[str]

    def _fail(self, name: str, message: str) -> NoReturn:
        raise ConfigValueError(f"{self.section}.{name}", message)

    def _flag(self, name: str) -> str:
        return flag_for(f"{self.section}.{name}")

    def _normalize(self) -> None:
        """Check every field against its annotation and convert where it is lossless:
        str/PathLike -> Path (with ~ expanded), int -> float, list -> tuple."""
        hints = _type_hints(type(self))
        for item in fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            converted = _convert(value, hints[item.name], f"{self.section}.{item.name}")
            if converted is not value:
                object.__setattr__(self, item.name, converted)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (paths as strings, tuples as lists, None kept), fit for TOML, JSON and checkpoints."""
        return {item.name: _plain(getattr(self, item.name)) for item in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> Any:
        """The section from plain values; unknown keys are refused, missing ones take their default."""
        known = {item.name: item for item in fields(cls)}  # type: ignore[arg-type]
        unknown = [str(key) for key in values if key not in known]
        if unknown:
            raise UsageError(f"{where}{_unknown_key_message(cls.section, unknown[0])}")
        for name, item in known.items():
            if name not in values and item.default is MISSING and item.default_factory is MISSING:
                key = f"{cls.section}.{name}"
                raise ConfigValueError(key, f"{flag_for(key)} is required (or {name} in the [{cls.section}] section)")
        return cls(**values)


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where the data is, how it is split, batched and augmented.

    ``seed`` drives the train/validation split, the --limit subsets, shuffling and augmentation.
    Augmentation applies to training batches only: ``crop`` is a random 32x32 crop of the image
    padded by 4 pixels, ``flip`` a random horizontal flip, ``cutout`` the side in pixels of one
    square, centred anywhere in the image and clipped at its border, set to 0 after normalization
    (the dataset mean), as DeVries & Taylor 2017 do; 0 turns cutout off. ``augment`` is a per-sample
    policy on the cropped and flipped image, before normalization and cutout: AutoAugment's
    CIFAR-10 policy, RandAugment (``randaugment_ops`` ops at magnitude bin ``randaugment_magnitude``
    of 31) or TrivialAugment Wide, with torchvision's op set and ranges. ``mixup`` and ``cutmix``
    are Beta alphas (0 = off) for batch mixing with soft targets; with both on, a mixed batch is
    one or the other with equal odds; ``mix_prob`` is the chance that a batch is mixed.
    """

    section: ClassVar[str] = "data"

    data_dir: Path
    batch_size: int = 512
    eval_batch_size: int = 1024
    val_fraction: float = 0.1
    loader: str = "auto"
    seed: int = 0
    limit_train: int | None = None
    limit_val: int | None = None
    # A stratified subset of the test split for the final report of quick runs (never for selection).
    limit_test: int | None = None
    verify: bool = True
    # Where decoded image folders are cached; None disables the cache.
    cache_dir: Path | None = None
    crop: bool = True
    flip: bool = True
    cutout: int = 0
    augment: str = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        self._normalize()
        if self.batch_size <= 0:
            self._fail("batch_size", f"--batch-size must be positive, got {self.batch_size}")
        if self.eval_batch_size <= 0:
            self._fail("eval_batch_size", f"--eval-batch-size must be positive, got {self.eval_batch_size}")
        if not 0.0 < self.val_fraction < 1.0:
            self._fail("val_fraction", f"--val-fraction must be in (0, 1), got {_show(self.val_fraction)}")
        if self.loader not in LOADER_KINDS:
            self._fail("loader", f"--loader must be one of {_choices(LOADER_KINDS)}, got {self.loader!r}")
        if not 0 <= self.seed < SEED_LIMIT:
            self._fail("seed", f"{self._flag('seed')} must be in [0, 2**32), got {self.seed}")
        for name in ("limit_train", "limit_val", "limit_test"):
            limit = getattr(self, name)
            if limit is not None and limit <= 0:
                self._fail(name, f"{self._flag(name)} must be positive, got {limit}")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            # The training loader drops the last partial batch, so not one step would run.
            self._fail(
                "limit_train",
                f"--limit-train {self.limit_train} is smaller than --batch-size {self.batch_size}, "
                "so no full training batch would remain",
            )
        if not 0 <= self.cutout <= IMAGE_SIDE:
            self._fail("cutout", f"--cutout must be a square side in [0, {IMAGE_SIDE}] pixels, got {self.cutout}")
        if self.augment not in AUGMENT_POLICIES:
            self._fail("augment", f"--augment must be one of {_choices(AUGMENT_POLICIES)}, got {self.augment!r}")
        if not 1 <= self.randaugment_ops <= RANDAUGMENT_MAX_OPS:
            self._fail(
                "randaugment_ops",
                f"--randaugment-ops must be in [1, {RANDAUGMENT_MAX_OPS}], got {self.randaugment_ops}",
            )
        if not 0 <= self.randaugment_magnitude < RANDAUGMENT_BINS:
            self._fail(
                "randaugment_magnitude",
                f"--randaugment-magnitude must be in [0, {RANDAUGMENT_BINS - 1}], got {self.randaugment_magnitude}",
            )
        for name in ("mixup", "cutmix"):
            alpha = getattr(self, name)
            if not (math.isfinite(alpha) and alpha >= 0.0):
                self._fail(name, f"{self._flag(name)} must be a Beta alpha >= 0 (0 = off), got {_show(alpha)}")
        if not 0.0 <= self.mix_prob <= 1.0:
            self._fail("mix_prob", f"--mix-prob must be in [0, 1], got {_show(self.mix_prob)}")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Which ResNet, how it starts (random or pretrained) and what of it trains.

    ``pretrained`` is ``"imagenet1k-v1"``, ``"imagenet1k-v2"`` (torchvision's ResNet-50 weights) or a
    weights file path. ImageNet weights have a 7x7 conv1, so with ``stem="cifar"`` they need
    ``reinit_conv1`` (a fresh 3x3 conv1). ``image_size`` upsamples batches before the model (fine-tuning
    at ImageNet-like sizes). ``freeze_backbone`` trains only the top; on a random backbone that is
    legal but rarely useful. ``backbone_lr_mult`` scales the backbone's learning rate. ``sync_bn``
    turns batch norms into SyncBatchNorm under multi-process (DDP) training on GPUs, so their batch
    statistics cover the global batch; in a single process it changes nothing.
    """

    section: ClassVar[str] = "model"

    depth: int = 50
    stem: str = "cifar"
    dropout: float = 0.0
    zero_init_residual: bool = False
    pretrained: str | None = None
    reinit_conv1: bool = False
    image_size: int | None = None
    freeze_backbone: bool = False
    backbone_lr_mult: float = 1.0
    sync_bn: bool = False

    def __post_init__(self) -> None:
        self._normalize()
        if self.depth not in DEPTHS:
            self._fail("depth", f"--depth must be one of {_choices(DEPTHS)}, got {self.depth}")
        if self.stem not in STEMS:
            self._fail("stem", f"--stem must be one of {_choices(STEMS)}, got {self.stem!r}")
        if not 0.0 <= self.dropout < 1.0:
            self._fail("dropout", f"--dropout must be in [0, 1), got {_show(self.dropout)}")
        if self.pretrained is not None and not self.pretrained.strip():
            self._fail("pretrained", f"--pretrained must be {_choices(PRETRAINED_NAMES)} or a weights file, got ''")
        if self.image_size is not None and self.image_size < IMAGE_SIDE:
            self._fail("image_size", f"--image-size must be at least {IMAGE_SIDE}, got {self.image_size}")
        if self.backbone_lr_mult <= 0.0:
            self._fail("backbone_lr_mult", f"--backbone-lr-mult must be positive, got {_show(self.backbone_lr_mult)}")
        if self.sync_bn and self.freeze_backbone:
            # A frozen backbone's batch norms run on their running statistics: nothing to synchronize.
            self._fail("sync_bn", "--sync-bn has no effect with --freeze-backbone (its batch norms are frozen)")
        if self.pretrained in PRETRAINED_NAMES:
            if self.depth != 50:
                self._fail(
                    "depth",
                    f"--pretrained {self.pretrained} holds ResNet-50 weights, so it needs --depth 50, got {self.depth}",
                )
            if self.stem == "cifar" and not self.reinit_conv1:
                self._fail(
                    "reinit_conv1",
                    f"--pretrained {self.pretrained} has ImageNet's 7x7 conv1: use --stem imagenet, "
                    "or --reinit-conv1 to keep the cifar stem with a fresh 3x3 conv1",
                )


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer, learning-rate schedule and loss regularizers. Defaults are the default recipe's.

    Epoch counts (``epochs``, ``warmup_epochs``, ``step_size``, ``milestones``) are in epochs; the
    engine converts them to steps. ``momentum`` and ``nesterov`` apply to SGD; Adam and AdamW keep
    their own betas. ``warmup_epochs`` is a linear warm-up before the schedule, except for
    ``onecycle`` where it is the rising phase of the cycle (OneCycleLR's ``pct_start`` =
    warmup_epochs / epochs) and must be positive. ``milestones`` are for ``multistep`` only, and
    ``step_size``/``gamma`` are read by ``step`` (and ``gamma`` by ``multistep``); decay epochs count
    from the start of training and must fall after the warm-up. ``min_lr_ratio`` is the floor of
    ``cosine`` and the end of ``onecycle``, as a fraction of the peak rate (0: down to 0 for cosine,
    OneCycleLR's own lr / 25e4 for onecycle).
    ``decay_norm_and_bias`` False keeps weight decay off batch-norm and bias parameters.
    ``scale_lr`` applies the linear scaling rule (Goyal et al. 2017) under multi-process training:
    the rate used is ``lr`` times the number of processes (``batch_size`` is per process, so the
    global batch grows with them); without it ``lr`` is used as given. docs/distributed.md.
    """

    section: ClassVar[str] = "optim"

    optimizer: str = "sgd"
    lr: float = 0.4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    schedule: str = "onecycle"
    epochs: int = 30
    warmup_epochs: float = 9.0
    step_size: int = 10
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    ema: bool = False
    ema_decay: float = 0.999
    scale_lr: bool = False

    def __post_init__(self) -> None:
        self._normalize()
        if self.optimizer not in OPTIMIZERS:
            self._fail("optimizer", f"--optimizer must be one of {_choices(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr <= 0.0:
            self._fail("lr", f"--lr must be positive, got {_show(self.lr)}")
        if not 0.0 <= self.momentum < 1.0:
            self._fail("momentum", f"--momentum must be in [0, 1), got {_show(self.momentum)}")
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0.0:
            self._fail("nesterov", "--nesterov needs a positive --momentum (use --no-nesterov with --momentum 0)")
        if self.weight_decay < 0.0:
            self._fail("weight_decay", f"--weight-decay must be at least 0, got {_show(self.weight_decay)}")
        if self.schedule not in SCHEDULES:
            self._fail("schedule", f"--schedule must be one of {_choices(SCHEDULES)}, got {self.schedule!r}")
        if self.epochs <= 0:
            self._fail("epochs", f"--epochs must be positive, got {self.epochs}")
        if not 0.0 <= self.warmup_epochs < self.epochs:
            self._fail(
                "warmup_epochs",
                f"--warmup-epochs must be in [0, --epochs {self.epochs}), got {_show(self.warmup_epochs)}",
            )
        if self.schedule == "onecycle" and self.warmup_epochs == 0.0:
            self._fail("warmup_epochs", "--warmup-epochs must be positive with --schedule onecycle (its rising phase)")
        if self.step_size <= 0:
            self._fail("step_size", f"--step-size must be a positive number of epochs, got {self.step_size}")
        if self.schedule == "step" and self.step_size <= self.warmup_epochs:
            self._fail(
                "step_size",
                f"--step-size {self.step_size} must be longer than --warmup-epochs {_show(self.warmup_epochs)}",
            )
        if not 0.0 < self.gamma <= 1.0:
            self._fail("gamma", f"--gamma must be in (0, 1], got {_show(self.gamma)}")
        self._check_milestones()
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            self._fail("min_lr_ratio", f"--min-lr-ratio must be in [0, 1], got {_show(self.min_lr_ratio)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            self._fail("label_smoothing", f"--label-smoothing must be in [0, 1), got {_show(self.label_smoothing)}")
        if self.grad_clip is not None and self.grad_clip <= 0.0:
            self._fail(
                "grad_clip", f"--grad-clip must be positive (leave it out for no clipping), got {_show(self.grad_clip)}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            self._fail("ema_decay", f"--ema-decay must be in (0, 1), got {_show(self.ema_decay)}")

    def _check_milestones(self) -> None:
        if self.schedule != "multistep":
            if self.milestones:
                self._fail("milestones", f"--milestones only applies to --schedule multistep, not {self.schedule}")
            return
        if not self.milestones:
            self._fail("milestones", "--schedule multistep needs --milestones (the epochs at which the lr drops)")
        increasing = all(earlier < later for earlier, later in zip(self.milestones, self.milestones[1:]))
        in_range = all(1 <= epoch < self.epochs for epoch in self.milestones)
        shown = ", ".join(str(epoch) for epoch in self.milestones)
        if not (increasing and in_range):
            self._fail(
                "milestones",
                f"--milestones must be increasing epochs in [1, --epochs {self.epochs}), got {shown}",
            )
        if self.milestones[0] <= self.warmup_epochs:
            self._fail(
                "milestones",
                f"--milestones must come after --warmup-epochs {_show(self.warmup_epochs)}, got {shown}",
            )


@dataclass(frozen=True)
class PrecisionConfig(_Section):
    """Device and numeric precision.

    ``amp`` None means on for CUDA (in ``amp_dtype``, and for bf16 only where the GPU supports it),
    off elsewhere; ``channels_last`` None means on for CUDA. ``amp_dtype`` without amp changes nothing.
    Use ``use_amp``/``use_channels_last`` once the device is known.
    """

    section: ClassVar[str] = "precision"

    device: str = "auto"
    amp: bool | None = None
    amp_dtype: str = "bf16"
    channels_last: bool | None = None
    compile: bool = False
    deterministic: bool = False

    def __post_init__(self) -> None:
        self._normalize()
        if self.device not in DEVICES:
            self._fail("device", f"--device must be one of {_choices(DEVICES)}, got {self.device!r}")
        if self.amp_dtype not in AMP_DTYPES:
            self._fail("amp_dtype", f"--amp-dtype must be one of {_choices(AMP_DTYPES)}, got {self.amp_dtype!r}")

    def use_amp(self, device_type: str, *, bf16_supported: bool = True) -> bool:
        """Whether to autocast on ``device_type`` (``"cpu"`` or ``"cuda"``); an explicit choice wins."""
        if self.amp is not None:
            return self.amp
        return device_type == "cuda" and (self.amp_dtype == "fp16" or bf16_supported)

    def use_channels_last(self, device_type: str) -> bool:
        """Whether model and batches go channels_last on ``device_type``; an explicit choice wins."""
        return self.channels_last if self.channels_last is not None else device_type == "cuda"


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """Lightning's semantics: stop after ``patience`` validation checks without an improvement larger
    than ``min_delta`` in ``monitor`` (maximized for val_acc, minimized for val_loss). None = off."""

    section: ClassVar[str] = "early_stopping"

    monitor: str = "val_acc"
    patience: int | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        self._normalize()
        if self.monitor not in MONITORS:
            self._fail("monitor", f"--monitor must be one of {_choices(MONITORS)}, got {self.monitor!r}")
        if self.patience is not None and self.patience < 0:
            message = f"--patience must be at least 0 (leave it out to turn early stopping off), got {self.patience}"
            self._fail("patience", message)
        if self.min_delta < 0.0:
            self._fail("min_delta", f"--min-delta must be at least 0, got {_show(self.min_delta)}")

    @property
    def mode(self) -> str:
        """``"max"`` for accuracy, ``"min"`` for loss."""
        return "max" if self.monitor == "val_acc" else "min"


@dataclass(frozen=True)
class RunConfig(_Section):
    """Where the run writes, its seed (weights, dropout, everything but the data), the checkpoint to
    resume from, and the name of the preset it was resolved from."""

    section: ClassVar[str] = "run"

    out_dir: Path = Path("runs")
    seed: int = 0
    resume: Path | None = None
    preset: str = "default"

    def __post_init__(self) -> None:
        self._normalize()
        if not 0 <= self.seed < SEED_LIMIT:
            self._fail("seed", f"--seed must be in [0, 2**32), got {self.seed}")
        if self.preset not in PRESETS:
            self._fail("preset", f"--preset must be one of {_choices(tuple(PRESETS))}, got {self.preset!r}")


SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "precision": PrecisionConfig,
    "early_stopping": EarlyStoppingConfig,
    "run": RunConfig,
}


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
        # The sections hold no constraint that spans two of them: each checks its own fields
        # (warm-up against epochs, milestones against the schedule, pretrained against the stem).

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
        for name, entries in values.items():
            if name not in SECTIONS:
                holds_a_value = not isinstance(entries, Mapping)
                raise UsageError(f"{where}{_unknown_section_message(str(name), holds_a_value=holds_a_value)}")
        sections: dict[str, Any] = {}
        for name, section_class in SECTIONS.items():
            entries = values.get(name, {})
            if not isinstance(entries, Mapping):
                raise UsageError(f"{where}[{name}] must be a table of settings, got {_show(entries)}")
            sections[name] = section_class.from_dict(entries, where=where)
        return cls(**sections)


# Recipes, as partial nested dicts laid over the dataclass defaults. docs/recipes.md gives the
# reasons and sources for each value. A preset never sets a field that may be None: TOML has no
# null, so a saved config leaves None fields out, and reloading it must not pick up a preset value.

# >= 94% test accuracy from scratch (cifar-stem ResNet-50) in 30 epochs: one-cycle SGD.
_DEFAULT_RECIPE: dict[str, dict[str, Any]] = {
    "data": {"batch_size": 512, "crop": True, "flip": True, "cutout": 0},
    "model": {"depth": 50, "stem": "cifar", "dropout": 0.0, "zero_init_residual": True},
    "optim": {
        "optimizer": "sgd",
        "lr": 0.4,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "decay_norm_and_bias": False,
        "schedule": "onecycle",
        "epochs": 30,
        "warmup_epochs": 9.0,
        "label_smoothing": 0.1,
    },
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": _DEFAULT_RECIPE,
    # >= 96%: the default recipe's model and SGD, for 200 epochs of cosine annealing with
    # AutoAugment's CIFAR-10 policy then cutout 16, as Cubuk et al. 2019 train (docs/recipes.md).
    "long": {
        "data": {**_DEFAULT_RECIPE["data"], "cutout": 16, "augment": "autoaugment"},
        "model": dict(_DEFAULT_RECIPE["model"]),
        "optim": {**_DEFAULT_RECIPE["optim"], "schedule": "cosine", "epochs": 200, "warmup_epochs": 5.0},
    },
    # A quick CPU check that the pipeline trains, not a recipe: pair it with --limit-train/--limit-val.
    "smoke": {
        "data": {"batch_size": 64, "eval_batch_size": 256},
        "model": {"depth": 18, "stem": "cifar"},
        "optim": {"lr": 0.05, "schedule": "onecycle", "epochs": 2, "warmup_epochs": 0.5},
    },
}

DEFAULT_PRESET = "default"


def resolve_config(
    *,
    preset: str | None = None,
    file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Layer a run's settings and validate the result once.

    Lowest to highest: the dataclass defaults; ``defaults`` (values the caller derives from the
    environment, e.g. ``{"data.data_dir": default_data_dir(os.environ)}``); the preset; the config
    ``file`` (.toml, .yaml or .yml, sections [data], [model], [optim], [precision],
    [early_stopping], [run]); ``overrides`` (the flags the user gave).

    The preset is ``preset`` if given, else ``overrides["run.preset"]``, else the file's
    ``run.preset``, else ``"default"``; ``run.preset`` of the result names it.

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
        return TrainConfig.from_dict(merged)
    except ConfigValueError as error:
        if error.key in from_file:
            raise ConfigValueError(error.key, f"{error} ({error.key} in {file_path})") from None
        raise


def read_config_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The sections of a TOML or YAML config file, checked for unknown sections and keys (types and
    values are checked when the config is built). Errors are one line naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise UsageError(f"{path}: a config file must end in {', '.join(CONFIG_SUFFIXES)}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a config file") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: a config file must be UTF-8 text") from None
    document = _parse_toml(text, path) if suffix == ".toml" else _parse_yaml(text, path)
    return _check_document(document, path)


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as TOML or YAML (by suffix), atomically: a temp file in the same folder, fsync,
    os.replace. TOML has no null, so None settings are left out; absent means default, and every
    field that may be None defaults to None, so ``resolve_config(file=path)`` returns ``cfg``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise UsageError(f"{path}: a config file must end in {', '.join(CONFIG_SUFFIXES)}")
    values = cfg.to_dict()
    if suffix == ".toml":
        import tomli_w

        body = tomli_w.dumps({name: _without_none(entries) for name, entries in values.items()})
        text = "# resnet-cifar resolved config. A setting left out is None (its default).\n\n" + body
    else:
        import yaml

        text = "# resnet-cifar resolved config.\n" + yaml.safe_dump(values, sort_keys=False, default_flow_style=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, text)
    except OSError as error:
        raise UsageError(f"{path}: cannot write the config ({error.strerror or error})") from None
    return path


# --- helpers -------------------------------------------------------------------------------------


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside, whether None is allowed) for ``X``, ``X | None`` and ``Optional[X]``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(hint))
    return hint, False


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` and converted where lossless; ConfigValueError otherwise."""
    flag = flag_for(key)
    base, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigValueError(key, f"{flag} must be set, got None")

    def wrong(kind: str) -> NoReturn:
        raise ConfigValueError(key, f"{flag} must be {kind}, got {value!r}")

    if base is bool:
        return value if isinstance(value, bool) else wrong("true or false")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            wrong("an integer")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            wrong("a number")
        number = float(value)
        if not math.isfinite(number):
            wrong("a finite number")
        return number
    if base is str:
        return value if isinstance(value, str) else wrong("a string")
    if base is Path:
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            return Path(value).expanduser()
        wrong("a path")
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            wrong("a list")
        item_hint = typing.get_args(base)[0]
        return tuple(_convert(item, item_hint, key) for item in value)
    raise TypeError(f"no conversion for {key}: {hint!r}")  # a field type this module does not handle


def _field_names(cls: type) -> set[str]:
    return {item.name for item in fields(cls)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _without_none(entries: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in entries.items() if value is not None}


def _suggestion(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown_section_message(name: str, *, holds_a_value: bool = False) -> str:
    """Why ``name`` is not a section; ``holds_a_value`` when it carries a value rather than a table,
    as a setting written outside any section does."""
    owners = [section for section, cls in SECTIONS.items() if name in _field_names(cls)]
    if owners and holds_a_value:
        return f"{name!r} is not a section: settings go in a section, here [{owners[0]}]"
    return f"unknown section [{name}]{_suggestion(name, list(SECTIONS))}; sections are {', '.join(SECTIONS)}"


def _unknown_key_message(section: str, name: str) -> str:
    owners = [other for other, cls in SECTIONS.items() if other != section and name in _field_names(cls)]
    if owners:
        return f"unknown key {section}.{name}: {name} belongs in [{owners[0]}]"
    return f"unknown key {section}.{name}{_suggestion(name, sorted(_field_names(SECTIONS[section])))}"


def _nest(values: Mapping[str, Any], *, what: str) -> dict[str, dict[str, Any]]:
    """Dotted or sectioned settings as {section: {name: value}}, unknown names refused, None dropped."""
    nested: dict[str, dict[str, Any]] = {}

    def add(section: str, name: str, value: Any) -> None:
        if section not in SECTIONS:
            raise UsageError(f"{what} {section}.{name}: {_unknown_section_message(section)}")
        if name not in _field_names(SECTIONS[section]):
            raise UsageError(f"{what}: {_unknown_key_message(section, name)}")
        if value is not None:
            nested.setdefault(section, {})[name] = value

    for key, value in values.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for name, inner in value.items():
                add(key, str(name), inner)
        elif isinstance(key, str) and "." in key:
            section, name = key.split(".", 1)
            add(section, name, value)
        else:
            raise UsageError(f"{what} {key!r} must be a dotted name such as 'optim.lr'")
    return nested


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
        message = f"--preset must be one of {_choices(tuple(PRESETS))}, got {chosen!r}{where}"
        raise ConfigValueError("run.preset", message)
    return chosen


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _parse_toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: invalid TOML: {_one_line(error)}") from None


# YAML 1.1 (PyYAML) reads 5e-4 as a string: only 5.0e-4 is a float there. YAML 1.2 and TOML take
# both, so the loader also resolves exponent floats without a dot.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _yaml_loader() -> Any:
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """SafeLoader (plain data only, never objects) that also reads 5e-4 as a float."""

    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return ConfigLoader


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        document = yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: invalid YAML: {_one_line(error)}") from None
    return {} if document is None else document


def _check_document(document: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(document, Mapping):
        kind = type(document).__name__
        raise UsageError(f"{path}: a config file must hold sections ([data], [model], ...), got {kind}")
    sections: dict[str, dict[str, Any]] = {}
    for name, entries in document.items():
        name = str(name)
        if name not in SECTIONS:
            holds_a_value = entries is not None and not isinstance(entries, Mapping)
            raise UsageError(f"{path}: {_unknown_section_message(name, holds_a_value=holds_a_value)}")
        if entries is None:  # an empty YAML section
            entries = {}
        if not isinstance(entries, Mapping):
            raise UsageError(f"{path}: [{name}] must be a table of settings, got {entries!r}")
        known = _field_names(SECTIONS[name])
        for key in entries:
            if str(key) not in known:
                raise UsageError(f"{path}: {_unknown_key_message(name, str(key))}")
        sections[name] = {str(key): value for key, value in entries.items()}
    return sections


def _write_atomically(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never a half-written one."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; a config is for reading
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
