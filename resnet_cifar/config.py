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

import difflib
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Union

from resnet_cifar.choices.policies import POLICIES, RANDAUGMENT_BINS, RANDAUGMENT_MAX_OPS
from resnet_cifar.errors import ResnetCifarError, UsageError
from resnet_cifar.files import atomic_write, one_line

LOADER_KINDS = ("auto", "tensor", "dali")
# The policy registry (torch-free), which the loaders execute too.
AUGMENT_POLICIES = POLICIES
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
FLAG_EXCEPTIONS = {
    "run.out_dir": "--out",
    # The split/shuffle/augmentation seed: the CLI's --seed sets it together with run.seed.
    "data.seed": "--seed",
}


def setting(default: Any = MISSING, help: str = "", *, shown: str | None = None) -> Any:
    """A config field with its one-line ``--help`` text. ``shown`` is what ``--help`` says in place
    of the default value where the bare value would not explain it (a device-dependent None)."""
    metadata = {"help": help, "shown": shown}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_for(key: str) -> str:
    """The CLI flag of a dotted setting name: ``"optim.lr"`` -> ``"--lr"``."""
    return FLAG_EXCEPTIONS.get(key, "--" + key.split(".", 1)[-1].replace("_", "-"))


class ConfigValueError(UsageError):
    """A bad value for one setting. ``key`` is its dotted name (``"optim.lr"``), so the caller that
    knows where the value came from (a config file) can say so."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check_cutout(cutout: int) -> None:
    """The cutout sides DataConfig and both loaders accept. The message names the flag, because a
    user (or a sweep) sets cutout there; the loaders check it again for callers of the library."""
    if not 0 <= cutout <= IMAGE_SIDE:
        raise ConfigValueError("data.cutout", f"--cutout must be a square side in [0, {IMAGE_SIDE}] pixels, got {cutout}")


def _show(value: Any) -> str:
    """A value as the user would have typed it: 0 rather than 0.0, strings quoted."""
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _tidy(value: float) -> float:
    """``value`` to 12 significant digits: products like 0.3 x 3 become the decimal a person means."""
    return float(f"{value:.12g}")


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

    data_dir: Path = setting(help="CIFAR-10 folder: the python or binary release, or train/ and test/ image folders.")
    batch_size: int = setting(512, "Training batch size (per process under torchrun).")
    eval_batch_size: int = setting(1024, "Batch size of validation and test passes.")
    val_fraction: float = setting(0.1, "Share of the training split held out for validation (stratified).")
    loader: str = setting(
        "auto", "auto, tensor (the split resident on the device) or dali.", shown="dali on CUDA when installed, else tensor"
    )
    seed: int = setting(0, "Seed of the data: split, subsets, order and augmentation.")
    limit_train: int | None = setting(None, "Train on a stratified subset of N images.", shown="all")
    limit_val: int | None = setting(None, "Validate on a stratified subset of N images.", shown="all")
    # A stratified subset of the test split for the final report of quick runs (never for selection).
    limit_test: int | None = setting(None, "Report test accuracy on a stratified subset of N images.", shown="all")
    verify: bool = setting(True, "Check the md5 of the official release files.")
    # Where decoded image folders are cached; None disables the cache.
    cache_dir: Path | None = setting(None, "Folder of the decoded image-folder cache.")
    crop: bool = setting(True, "Random 32x32 crop of the image padded by 4 pixels.")
    flip: bool = setting(True, "Random horizontal flip.")
    cutout: int = setting(0, "Cutout square side in pixels (0 = off).")
    augment: str = setting("none", "Per-image policy after crop and flip: none, autoaugment, randaugment or trivialaugment.")
    randaugment_ops: int = setting(2, "RandAugment: ops per image.")
    randaugment_magnitude: int = setting(9, "RandAugment: magnitude bin, in [0, 30].")
    mixup: float = setting(0.0, "Mixup's Beta alpha (0 = off); soft targets.")
    cutmix: float = setting(0.0, "CutMix's Beta alpha (0 = off); soft targets.")
    mix_prob: float = setting(1.0, "Share of training batches mixed when --mixup or --cutmix is on.")

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
        check_cutout(self.cutout)
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

    depth: int = setting(50, "ResNet depth: 18, 34, 50, 101 or 152.")
    stem: str = setting("cifar", "cifar (3x3 conv, no max-pool) or imagenet (7x7/2 conv + max-pool).")
    dropout: float = setting(0.0, "Dropout before the top layer, in [0, 1).")
    zero_init_residual: bool = setting(True, "Start each residual branch's last batch norm at zero.")
    pretrained: str | None = setting(None, "Start from imagenet1k-v1, imagenet1k-v2 or a weights file.", shown="random")
    reinit_conv1: bool = setting(False, "With --stem cifar and ImageNet weights: a fresh 3x3 conv1.")
    image_size: int | None = setting(None, "Upsample batches on the device to N pixels before the model.", shown="32")
    freeze_backbone: bool = setting(False, "Train only the top layer (a linear probe).")
    backbone_lr_mult: float = setting(1.0, "Scale the backbone's learning rate by this.")
    sync_bn: bool = setting(False, "Under torchrun on GPUs: batch-norm statistics over the global batch.")

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

    **Learning rate.** ``lr_base`` is the recipe's peak rate for a global batch of
    ``lr_base_batch_size`` images (timm's ``--lr-base``/``--lr-base-size``). When ``lr`` is not given,
    the run's rate is scaled from it to the run's global batch (``batch_size`` x processes): linearly
    for SGD (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), by the square root for Adam and
    AdamW (as timm does; Malladi et al. 2022 argue it for adaptive methods). A given ``lr`` is used
    as given. Either way the resolved ``lr`` is what the config records, so a saved config replays it.

    **Warm-up.** ``warmup_fraction`` is the schedule's warm-up as a share of the run: for
    ``onecycle`` its rising phase (OneCycleLR's ``pct_start``, so it must be positive), otherwise a
    linear ramp before the schedule. It keeps a preset's shape for any ``epochs``. ``warmup_epochs``,
    when given, is the warm-up in epochs and wins (it must be below ``epochs``); when not given it
    resolves to ``warmup_fraction x epochs``, and the two always agree in a resolved config.

    Epoch counts (``epochs``, ``warmup_epochs``, ``step_size``, ``milestones``) are in epochs; the
    engine converts them to steps. ``momentum`` and ``nesterov`` apply to SGD; Adam and AdamW keep
    their own betas. ``milestones`` are for ``multistep`` only, and ``step_size``/``gamma`` are read
    by ``step`` (and ``gamma`` by ``multistep``); decay epochs count from the start of training and
    must fall after the warm-up. ``min_lr_ratio`` is the floor of ``cosine`` and the end of
    ``onecycle``, as a fraction of the peak rate (0: down to 0 for cosine, OneCycleLR's own
    lr / 25e4 for onecycle). ``decay_norm_and_bias`` False keeps weight decay off batch-norm and
    bias parameters.
    """

    section: ClassVar[str] = "optim"

    optimizer: str = setting("sgd", "sgd, adam or adamw.")
    lr: float | None = setting(
        None,
        "Peak learning rate, used as given; left out, --lr-base scaled to the global batch (SGD linearly, Adam by sqrt).",
        shown="0.4 at batch 512, scaled with the batch",
    )
    lr_base: float = setting(0.4, "Peak learning rate for a global batch of --lr-base-batch-size images.")
    lr_base_batch_size: int = setting(512, "The global batch size --lr-base is stated for.")
    momentum: float = setting(0.9, "SGD momentum, in [0, 1).")
    nesterov: bool = setting(True, "Nesterov momentum (SGD).")
    weight_decay: float = setting(5e-4, "L2 weight decay.")
    decay_norm_and_bias: bool = setting(False, "Apply weight decay to batch-norm and bias parameters too.")
    schedule: str = setting("onecycle", "constant, step, multistep, cosine or onecycle.")
    epochs: int = setting(30, "Training epochs.")
    warmup_fraction: float = setting(0.3, "Warm-up as a share of the run (one-cycle: its rising phase).")
    warmup_epochs: float | None = setting(
        None, "Warm-up in epochs, overriding --warmup-fraction; below --epochs.", shown="--warmup-fraction x --epochs"
    )
    step_size: int = setting(10, "Epochs between step decays (--schedule step).")
    gamma: float = setting(0.1, "Decay factor of step and multistep.")
    milestones: tuple[int, ...] = setting((), "Multistep decay epochs, comma-separated (e.g. 60,120,160).", shown="none")
    min_lr_ratio: float = setting(0.0, "Final rate of cosine and one-cycle, as a share of the peak (0 = default floor).")
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy loss, in [0, 1).")
    grad_clip: float | None = setting(None, "Clip the gradient norm to this (after unscaling).", shown="off")
    ema: bool = setting(False, "Keep, validate and test an exponential moving average of the weights.")
    ema_decay: float = setting(0.999, "Decay of the weights' EMA, in (0, 1).")

    def __post_init__(self) -> None:
        self._normalize()
        if self.optimizer not in OPTIMIZERS:
            self._fail("optimizer", f"--optimizer must be one of {_choices(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr is not None and self.lr <= 0.0:
            self._fail("lr", f"--lr must be positive, got {_show(self.lr)}")
        if self.lr_base <= 0.0:
            self._fail("lr_base", f"--lr-base must be positive, got {_show(self.lr_base)}")
        if self.lr_base_batch_size <= 0:
            self._fail("lr_base_batch_size", f"--lr-base-batch-size must be positive, got {self.lr_base_batch_size}")
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
        self._resolve_warmup()
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

    def _resolve_warmup(self) -> None:
        """``warmup_epochs`` from ``warmup_fraction`` when not given, else the fraction from it."""
        if not 0.0 <= self.warmup_fraction < 1.0:
            self._fail("warmup_fraction", f"--warmup-fraction must be in [0, 1), got {_show(self.warmup_fraction)}")
        # Rounded to 12 digits so that 0.3 x 3 records as 0.9, not 0.8999999999999999.
        if self.warmup_epochs is None:
            object.__setattr__(self, "warmup_epochs", _tidy(self.warmup_fraction * self.epochs))
        elif not 0.0 <= self.warmup_epochs < self.epochs:
            self._fail(
                "warmup_epochs",
                f"--warmup-epochs must be in [0, --epochs {self.epochs}), got {_show(self.warmup_epochs)}",
            )
        else:
            object.__setattr__(self, "warmup_fraction", _tidy(self.warmup_epochs / self.epochs))
        if self.schedule == "onecycle" and self.warmup_epochs == 0.0:
            self._fail("warmup_epochs", "--warmup-epochs must be positive with --schedule onecycle (its rising phase)")

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
    off elsewhere. ``channels_last`` None means on where the device's best measured settings use it:
    on CUDA, and on a CPU that autocasts to bf16 (docs/performance.md: bf16 + channels_last trains
    ResNet-50 2.23x faster than eager fp32 on this project's CPU, bf16 alone 1.69x), else off.
    ``amp_dtype`` without amp changes nothing. Use ``use_amp``/``use_channels_last`` once the
    device is known.
    """

    section: ClassVar[str] = "precision"

    device: str = setting("auto", "auto (CUDA when available), cpu or cuda.", shown="cuda when available, else cpu")
    amp: bool | None = setting(None, "Autocast to --amp-dtype.", shown="on for CUDA, off for the CPU")
    amp_dtype: str = setting("bf16", "bf16, or fp16 (with a GradScaler; CUDA only).")
    channels_last: bool | None = setting(
        None, "NHWC memory format for the model and batches.", shown="on for CUDA and for the CPU with --amp, else off"
    )
    compile: bool = setting(False, "torch.compile the model.")
    deterministic: bool = setting(False, "Deterministic kernels (bit-exact resume on the CPU).")

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

    def use_channels_last(self, device_type: str, *, amp: bool) -> bool:
        """Whether model and batches go channels_last on ``device_type`` (``amp``: whether the run
        autocasts, as ``use_amp`` decided); an explicit choice wins."""
        if self.channels_last is not None:
            return self.channels_last
        return device_type == "cuda" or (amp and self.amp_dtype == "bf16")


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """Lightning's semantics: stop after ``patience`` validation checks without an improvement larger
    than ``min_delta`` in ``monitor`` (maximized for val_acc, minimized for val_loss). None = off."""

    section: ClassVar[str] = "early_stopping"

    monitor: str = setting("val_acc", "Early stopping's metric: val_acc or val_loss.")
    patience: int | None = setting(None, "Stop after N validation checks without improvement.", shown="off")
    min_delta: float = setting(0.0, "Early stopping: a change of at most this is no improvement.")

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
    resume from, the name of the preset it was resolved from, and whether TensorBoard event files
    are written (into ``out_dir/tensorboard``)."""

    section: ClassVar[str] = "run"

    out_dir: Path = setting(Path("runs"), "Run folder: config, metrics, checkpoints, curves and result.")
    seed: int = setting(0, "Seed of the run and of the data (split, order, augmentation).")
    resume: Path | None = setting(None, "Continue from a checkpoint (last.pt) with its own settings.", shown="none")
    preset: str = setting(
        "default",
        "Recipe: default (>= 94% in 30 epochs), fast (94% in the fewest seconds), long (>= 96%), "
        "finetune (ImageNet weights, 6 epochs at 128 px), smoke (a quick CPU check).",
    )
    checkpoint_every: int = setting(1, "Write last.pt every N epochs (and at the end and on a stop request).")
    eval_from: int = setting(1, "Validate from epoch N on (earlier epochs train only); the last epoch always validates.")
    target_acc: float | None = setting(None, "Stop once validation accuracy reaches this (e.g. 0.94).", shown="off")
    test_tta: bool = setting(False, "Score the final test pass with flip test-time augmentation.")
    tensorboard: bool = setting(False, "Write TensorBoard event files under OUT/tensorboard/ (rank 0).")

    def __post_init__(self) -> None:
        self._normalize()
        if not 0 <= self.seed < SEED_LIMIT:
            self._fail("seed", f"--seed must be in [0, 2**32), got {self.seed}")
        if self.checkpoint_every < 1:
            self._fail("checkpoint_every", f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
        if self.eval_from < 1:
            self._fail("eval_from", f"--eval-from must be at least 1, got {self.eval_from}")
        if self.target_acc is not None and not 0.0 < self.target_acc <= 1.0:
            self._fail("target_acc", f"--target-acc must be in (0, 1], got {_show(self.target_acc)}")
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
        # The one setting that spans two sections: a learning rate not given comes from the batch
        # size (one process here; resolve_config scales it for several).
        if self.optim.lr is None:
            object.__setattr__(self, "optim", replace(self.optim, lr=scaled_lr(self.optim, self.data.batch_size)))

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


# Recipes, as partial nested dicts laid over the dataclass defaults, which ARE the default recipe
# (>= 94% test accuracy from scratch with the cifar-stem ResNet-50 in 30 epochs of one-cycle SGD).
# A preset states only what differs; docs/recipes.md gives the reasons and sources for each value.
# TOML has no null, so a saved config leaves None fields out, and reloading it must not pick up a
# preset value there. So a preset states its learning rate as lr_base at lr_base_batch_size and its
# warm-up as warmup_fraction (both follow --batch-size and --epochs), and sets a field that may be
# None only where no ratio can replace it (finetune's weights and image size); resolve_config then
# refuses a null for that field (a YAML file's), so its resolved value is never None and round-trips.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # 94% in the fewest seconds on one GPU (docs/recipes.md): a third fewer epochs than the default,
    # a shorter rise, validation only in the last epochs, and flip TTA on the final test pass.
    "fast": {
        "optim": {"epochs": 20, "warmup_fraction": 0.2},
        "run": {"eval_from": 15, "test_tta": True},
    },
    # >= 96%: the default recipe's model and SGD, for 200 epochs of cosine annealing (5 of them of
    # linear warm-up) with AutoAugment's CIFAR-10 policy then cutout 16, as Cubuk et al. 2019 train.
    "long": {
        "data": {"cutout": 16, "augment": "autoaugment"},
        "optim": {"schedule": "cosine", "epochs": 200, "warmup_fraction": 0.025},
    },
    # A quick CPU check that the pipeline trains, not a recipe: pair it with --limit-train/--limit-val.
    "smoke": {
        "data": {"batch_size": 64, "eval_batch_size": 256},
        # Zero-initialized residual branches learn slowly in the first steps: off for a 2-epoch check.
        "model": {"depth": 18, "zero_init_residual": False},
        "optim": {"lr_base": 0.05, "lr_base_batch_size": 64, "epochs": 2, "warmup_fraction": 0.25},
    },
    # Fine-tuning torchvision's ImageNet ResNet-50 (docs/recipes.md, "finetune"): BiT's HyperRule
    # rate 0.003 at batch 512 for the pretrained backbone (0.03 x 0.1), ten times that for the new
    # 10-class top, its ~500-step budget (6 epochs of 87 steps), ~100 steps of warm-up, no weight
    # decay, plain momentum, and its 128 px for small images (the cifar-stem model's cost at 32 px).
    "finetune": {
        "model": {"stem": "imagenet", "pretrained": "imagenet1k-v2", "image_size": 128, "backbone_lr_mult": 0.1},
        "optim": {
            "lr_base": 0.03,
            "nesterov": False,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "epochs": 6,
            "warmup_fraction": 0.2,
        },
    },
}

DEFAULT_PRESET = "default"


def scaled_lr(optim: OptimConfig, global_batch_size: int) -> float:
    """``optim.lr_base`` scaled from ``optim.lr_base_batch_size`` to ``global_batch_size`` images:
    linearly for SGD, by the square root for Adam and AdamW (see OptimConfig)."""
    ratio = global_batch_size / optim.lr_base_batch_size
    return _tidy(optim.lr_base * (ratio if optim.optimizer == "sgd" else math.sqrt(ratio)))


def describe_lr(optim: OptimConfig, global_batch_size: int) -> str:
    """The resolved rate and, when it came from the scaling rule, how: ``"0.05 = 0.4 x 64/512"``."""
    assert optim.lr is not None, "a resolved config always has its lr"
    shown = f"{optim.lr:.4g}"
    if global_batch_size == optim.lr_base_batch_size or optim.lr != scaled_lr(optim, global_batch_size):
        return shown
    ratio = f"{global_batch_size}/{optim.lr_base_batch_size}"
    return f"{shown} = {optim.lr_base:.4g} x " + (ratio if optim.optimizer == "sgd" else f"sqrt({ratio})")


def resolve_config(
    *,
    preset: str | None = None,
    file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    world_size: int = 1,
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
        cfg = TrainConfig.from_dict(merged)
        if "lr" not in merged["optim"] and world_size != 1:
            lr = scaled_lr(cfg.optim, cfg.data.batch_size * world_size)
            cfg = replace(cfg, optim=replace(cfg.optim, lr=lr))
        return cfg
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
                    key, f"{flag_for(key)} cannot be null with --preset {chosen}, which sets it to {_show(value)}"
                )


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
    document = parse_toml(text, path) if suffix == ".toml" else parse_yaml(text, path)
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
        atomic_write(path, text)
    except OSError as error:
        # A full or read-only disk is a failed run (exit 1), not a bad command line.
        raise ResnetCifarError(f"{path}: cannot write the config ({error.strerror or error})") from None
    return path


# --- helpers -------------------------------------------------------------------------------------


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside, whether None is allowed) for ``X``, ``X | None`` and ``Optional[X]``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(hint))
    return hint, False


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` and converted where lossless; ConfigValueError otherwise."""
    flag = flag_for(key)
    base, optional = unwrap_optional(hint)
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


def parse_toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: invalid TOML: {one_line(error)}") from None


# YAML 1.1 (PyYAML) reads 5e-4 as a string: only 5.0e-4 is a float there. YAML 1.2 and TOML take
# both, so the loader also resolves exponent floats without a dot.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _yaml_loader() -> Any:
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """SafeLoader (plain data only, never objects) that also reads 5e-4 as a float."""

    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return ConfigLoader


def parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        document = yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: invalid YAML: {one_line(error)}") from None
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
