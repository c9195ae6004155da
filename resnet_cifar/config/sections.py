"""The six sections of a run's config, each a frozen dataclass whose defaults ARE the default recipe.

Each section (``DataConfig``, ``ModelConfig``, ``OptimConfig``, ``PrecisionConfig``,
``EarlyStoppingConfig``, ``RunConfig``) checks and normalizes its own values once, in
``__post_init__``: wrong types and out-of-range values raise ``ConfigValueError`` (a UsageError,
exit 2) with a one-line message naming the CLI flag, e.g. ``--lr must be positive, got 0``. This is
the one place a value is checked: builders take a validated section and trust it. Named choices
(optimizers, schedules, policies, monitors, weights) come from the registries of
resnet_cifar.choices, so their lists and --help follow the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from resnet_cifar.choices import IMAGE_SIDE, described, one_of
from resnet_cifar.choices.models import DEPTHS, STEMS
from resnet_cifar.choices.monitors import METRIC_MODES
from resnet_cifar.choices.optimizers import LR_SCALING, OPTIMIZERS, optimizers_taking
from resnet_cifar.choices.policies import POLICIES, RANDAUGMENT_BINS, RANDAUGMENT_MAX_OPS
from resnet_cifar.choices.schedules import SCHEDULES, schedules_reading
from resnet_cifar.choices.weights import PRETRAINED_DEPTH, PRETRAINED_FILES
from resnet_cifar.config.fields import Section, listed, setting, show, tidy
from resnet_cifar.config.presets import PRESETS
from resnet_cifar.files import shorten

LOADER_KINDS = ("auto", "tensor", "dali")
PRETRAINED_NAMES = tuple(PRETRAINED_FILES)
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("bf16", "fp16")
# numpy's generators take seeds in [0, 2**32); torch takes more, but one range for every seed is simpler.
SEED_LIMIT = 2**32
# As --help names them: the schedule whose rise is its warm-up, and each optimizer's scaling rule.
_RISING = one_of(name for name, spec in SCHEDULES.items() if spec.rises)
_LR_RULES = ", ".join(
    f"{one_of(names, 'and')} {said}"
    for rule, said in LR_SCALING.items()
    if (names := [name for name, spec in OPTIMIZERS.items() if spec.lr_scaling == rule])
)


# --image-size's ceiling: about 7x ImageNet's 224, past any fine-tuning recipe; one batch of 512
# images at this size is already 14 GB of input (far larger values only fail in an allocation).
MAX_IMAGE_SIZE = 1536

@dataclass(frozen=True)
class DataConfig(Section):
    """Where the data is, how it is split, batched and augmented.

    ``seed`` drives the train/validation split, the --limit subsets, shuffling and augmentation.
    Augmentation applies to training batches only: ``crop`` is a random 32x32 crop of the image
    padded by 4 pixels, ``flip`` a random horizontal flip, ``cutout`` the side in pixels of one
    square, centred anywhere in the image and clipped at its border, set to 0 after normalization
    (the dataset mean), as DeVries & Taylor 2017 do; 0 turns cutout off. ``augment`` is a per-sample
    policy on the cropped and flipped image, before normalization and cutout, from the registry
    resnet_cifar.choices.policies: AutoAugment's CIFAR-10 policy, RandAugment (``randaugment_ops``
    ops at magnitude bin ``randaugment_magnitude`` of 31) or TrivialAugment Wide, with
    torchvision's op set and ranges. ``mixup`` and ``cutmix`` are Beta alphas (0 = off) for batch
    mixing with soft targets; with both on, a mixed batch is one or the other with equal odds;
    ``mix_prob`` is the chance that a batch is mixed.
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
    augment: str = setting("none", f"Per-image policy after crop and flip: {described(POLICIES)}.")
    randaugment_ops: int = setting(2, f"RandAugment: ops per image, in [1, {RANDAUGMENT_MAX_OPS}].")
    randaugment_magnitude: int = setting(9, f"RandAugment: magnitude bin, in [0, {RANDAUGMENT_BINS - 1}].")
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
            self._fail("val_fraction", f"--val-fraction must be in (0, 1), got {show(self.val_fraction)}")
        if self.loader not in LOADER_KINDS:
            self._fail("loader", f"--loader must be one of {listed(LOADER_KINDS)}, got {shorten(self.loader)}")
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
        if self.augment not in POLICIES:
            self._fail("augment", f"--augment must be one of {listed(POLICIES)}, got {shorten(self.augment)}")
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
                self._fail(name, f"{self._flag(name)} must be a Beta alpha >= 0 (0 = off), got {show(alpha)}")
        if not 0.0 <= self.mix_prob <= 1.0:
            self._fail("mix_prob", f"--mix-prob must be in [0, 1], got {show(self.mix_prob)}")


@dataclass(frozen=True)
class ModelConfig(Section):
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

    depth: int = setting(50, f"ResNet depth: {one_of(DEPTHS)}.")
    stem: str = setting("cifar", f"{described(STEMS)}.")
    dropout: float = setting(0.0, "Dropout before the top layer, in [0, 1).")
    zero_init_residual: bool = setting(True, "Start each residual branch's last batch norm at zero.")
    pretrained: str | None = setting(None, f"Start from {one_of([*PRETRAINED_NAMES, 'a weights file'])}.", shown="random")
    reinit_conv1: bool = setting(False, "With --stem cifar and ImageNet weights: a fresh 3x3 conv1.")
    image_size: int | None = setting(
        None, f"Upsample batches on the device to N pixels before the model (at most {MAX_IMAGE_SIZE}).", shown="32"
    )
    freeze_backbone: bool = setting(False, "Train only the top layer (a linear probe).")
    backbone_lr_mult: float = setting(1.0, "Scale the backbone's learning rate by this.")
    sync_bn: bool = setting(False, "Under torchrun on GPUs: batch-norm statistics over the global batch.")

    def __post_init__(self) -> None:
        self._normalize()
        if self.depth not in DEPTHS:
            self._fail("depth", f"--depth must be one of {listed(DEPTHS)}, got {self.depth}")
        if self.stem not in STEMS:
            self._fail("stem", f"--stem must be one of {listed(STEMS)}, got {shorten(self.stem)}")
        if not 0.0 <= self.dropout < 1.0:
            self._fail("dropout", f"--dropout must be in [0, 1), got {show(self.dropout)}")
        if self.pretrained is not None and not self.pretrained.strip():
            self._fail("pretrained", f"--pretrained must be {listed(PRETRAINED_NAMES)} or a weights file, got ''")
        if self.image_size is not None and self.image_size < IMAGE_SIDE:
            self._fail("image_size", f"--image-size must be at least {IMAGE_SIDE}, got {self.image_size}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            self._fail("image_size", f"--image-size must be at most {MAX_IMAGE_SIZE}, got {show(self.image_size)}")
        if self.backbone_lr_mult <= 0.0:
            self._fail("backbone_lr_mult", f"--backbone-lr-mult must be positive, got {show(self.backbone_lr_mult)}")
        if self.sync_bn and self.freeze_backbone:
            # A frozen backbone's batch norms run on their running statistics: nothing to synchronize.
            self._fail("sync_bn", "--sync-bn has no effect with --freeze-backbone (its batch norms are frozen)")
        if self.pretrained in PRETRAINED_NAMES:
            if self.depth != PRETRAINED_DEPTH:
                self._fail(
                    "depth",
                    f"--pretrained {self.pretrained} holds ResNet-{PRETRAINED_DEPTH} weights, "
                    f"so it needs --depth {PRETRAINED_DEPTH}, got {self.depth}",
                )
            if self.stem == "cifar" and not self.reinit_conv1:
                self._fail(
                    "reinit_conv1",
                    f"--pretrained {self.pretrained} has ImageNet's 7x7 conv1: use --stem imagenet, "
                    "or --reinit-conv1 to keep the cifar stem with a fresh 3x3 conv1",
                )


@dataclass(frozen=True)
class OptimConfig(Section):
    """Optimizer, learning-rate schedule and loss regularizers. Defaults are the default recipe's.

    **Learning rate.** ``lr_base`` is the recipe's peak rate for a global batch of
    ``lr_base_batch_size`` images (timm's ``--lr-base``/``--lr-base-size``). When ``lr`` is not given,
    the run's rate is scaled from it to the run's global batch (``batch_size`` x processes) by the
    optimizer's rule (resnet_cifar.choices.optimizers): linearly for SGD (Goyal et al. 2017,
    "Accurate, Large Minibatch SGD"), by the square root for Adam and AdamW (as timm does; Malladi
    et al. 2022 argue it for adaptive methods). A given ``lr`` is used as given. Either way the
    resolved ``lr`` is what the config records, so a saved config replays it; ``resolve_lr`` in
    config/train.py is the one place this is decided.

    **Warm-up.** ``warmup_fraction`` is the schedule's warm-up as a share of the run: for
    ``onecycle`` its rising phase (OneCycleLR's ``pct_start``, so it must be positive), otherwise a
    linear ramp before the schedule. It keeps a preset's shape for any ``epochs``. ``warmup_epochs``,
    when given, is the warm-up in epochs and wins (it must be below ``epochs``); when not given it
    resolves to ``warmup_fraction x epochs``, and the two always agree in a resolved config.

    Epoch counts (``epochs``, ``warmup_epochs``, ``step_size``, ``milestones``) are in epochs; the
    engine converts them to steps. ``momentum`` and ``nesterov`` apply to the optimizers that take
    them (SGD); Adam and AdamW keep their own betas. A schedule reads the settings its registry
    entry names (resnet_cifar.choices.schedules): ``milestones`` for ``multistep`` only (refused
    elsewhere), ``step_size`` for ``step``, ``gamma`` for both; decay epochs count from the start
    of training and must fall after the warm-up. ``min_lr_ratio`` is the floor of ``cosine`` and
    the end of ``onecycle``, as a fraction of the peak rate (0: down to 0 for cosine, OneCycleLR's
    own lr / 25e4 for onecycle). ``decay_norm_and_bias`` False keeps weight decay off batch-norm
    and bias parameters.
    """

    section: ClassVar[str] = "optim"

    optimizer: str = setting("sgd", f"{described(OPTIMIZERS)}.")
    lr: float | None = setting(
        None,
        f"Peak learning rate, used as given; left out, --lr-base scaled to the global batch ({_LR_RULES}).",
        shown="0.4 at batch 512, scaled with the batch",
    )
    lr_base: float = setting(0.4, "Peak learning rate for a global batch of --lr-base-batch-size images.")
    lr_base_batch_size: int = setting(512, "The global batch size --lr-base is stated for.")
    momentum: float = setting(0.9, f"Momentum ({one_of(optimizers_taking('momentum'))} only), in [0, 1).")
    nesterov: bool = setting(True, f"Nesterov momentum ({one_of(optimizers_taking('nesterov'))} only).")
    weight_decay: float = setting(5e-4, "L2 weight decay.")
    decay_norm_and_bias: bool = setting(False, "Apply weight decay to batch-norm and bias parameters too.")
    schedule: str = setting("onecycle", f"{described(SCHEDULES)}.")
    epochs: int = setting(30, "Training epochs.")
    warmup_fraction: float = setting(0.3, f"Warm-up as a share of the run ({_RISING}: its rising phase).")
    warmup_epochs: float | None = setting(
        None, "Warm-up in epochs, overriding --warmup-fraction; below --epochs.", shown="--warmup-fraction x --epochs"
    )
    step_size: int = setting(10, f"Epochs between step decays (--schedule {one_of(schedules_reading('step_size'))}).")
    gamma: float = setting(0.1, f"Decay factor of {one_of(schedules_reading('gamma'), 'and')}.")
    milestones: tuple[int, ...] = setting(
        (), f"Decay epochs of {one_of(schedules_reading('milestones'))}, comma-separated (e.g. 60,120,160).", shown="none"
    )
    min_lr_ratio: float = setting(
        0.0, f"Final rate of {one_of(schedules_reading('min_lr_ratio'), 'and')}, as a share of the peak (0 = default floor)."
    )
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy loss, in [0, 1).")
    grad_clip: float | None = setting(None, "Clip the gradient norm to this (after unscaling).", shown="off")
    ema: bool = setting(False, "Keep, validate and test an exponential moving average of the weights.")
    ema_decay: float = setting(0.999, "Decay of the weights' EMA, in (0, 1).")

    def __post_init__(self) -> None:
        self._normalize()
        if self.optimizer not in OPTIMIZERS:
            self._fail("optimizer", f"--optimizer must be one of {listed(OPTIMIZERS)}, got {shorten(self.optimizer)}")
        if self.lr is not None and self.lr <= 0.0:
            self._fail("lr", f"--lr must be positive, got {show(self.lr)}")
        if self.lr_base <= 0.0:
            self._fail("lr_base", f"--lr-base must be positive, got {show(self.lr_base)}")
        if self.lr_base_batch_size <= 0:
            self._fail("lr_base_batch_size", f"--lr-base-batch-size must be positive, got {self.lr_base_batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            self._fail("momentum", f"--momentum must be in [0, 1), got {show(self.momentum)}")
        if "nesterov" in OPTIMIZERS[self.optimizer].options and self.nesterov and self.momentum == 0.0:
            self._fail("nesterov", "--nesterov needs a positive --momentum (use --no-nesterov with --momentum 0)")
        if self.weight_decay < 0.0:
            self._fail("weight_decay", f"--weight-decay must be at least 0, got {show(self.weight_decay)}")
        if self.schedule not in SCHEDULES:
            self._fail("schedule", f"--schedule must be one of {listed(SCHEDULES)}, got {shorten(self.schedule)}")
        if self.epochs <= 0:
            self._fail("epochs", f"--epochs must be positive, got {self.epochs}")
        self._resolve_warmup()
        if self.step_size <= 0:
            self._fail("step_size", f"--step-size must be a positive number of epochs, got {self.step_size}")
        if "step_size" in SCHEDULES[self.schedule].options and self.step_size <= self.warmup_epochs:
            self._fail(
                "step_size",
                f"--step-size {self.step_size} must be longer than --warmup-epochs {show(self.warmup_epochs)}",
            )
        if not 0.0 < self.gamma <= 1.0:
            self._fail("gamma", f"--gamma must be in (0, 1], got {show(self.gamma)}")
        self._check_milestones()
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            self._fail("min_lr_ratio", f"--min-lr-ratio must be in [0, 1], got {show(self.min_lr_ratio)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            self._fail("label_smoothing", f"--label-smoothing must be in [0, 1), got {show(self.label_smoothing)}")
        if self.grad_clip is not None and self.grad_clip <= 0.0:
            self._fail(
                "grad_clip", f"--grad-clip must be positive (leave it out for no clipping), got {show(self.grad_clip)}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            self._fail("ema_decay", f"--ema-decay must be in (0, 1), got {show(self.ema_decay)}")

    def _resolve_warmup(self) -> None:
        """``warmup_epochs`` from ``warmup_fraction`` when not given, else the fraction from it."""
        if not 0.0 <= self.warmup_fraction < 1.0:
            self._fail("warmup_fraction", f"--warmup-fraction must be in [0, 1), got {show(self.warmup_fraction)}")
        # Rounded to 12 digits so that 0.3 x 3 records as 0.9, not 0.8999999999999999.
        if self.warmup_epochs is None:
            object.__setattr__(self, "warmup_epochs", tidy(self.warmup_fraction * self.epochs))
        elif not 0.0 <= self.warmup_epochs < self.epochs:
            self._fail(
                "warmup_epochs",
                f"--warmup-epochs must be in [0, --epochs {self.epochs}), got {show(self.warmup_epochs)}",
            )
        else:
            object.__setattr__(self, "warmup_fraction", tidy(self.warmup_epochs / self.epochs))
        if SCHEDULES[self.schedule].rises and self.warmup_epochs == 0.0:
            self._fail("warmup_epochs", f"--warmup-epochs must be positive with --schedule {self.schedule} (its rising phase)")

    def _check_milestones(self) -> None:
        if "milestones" not in SCHEDULES[self.schedule].options:
            if self.milestones:
                readers = one_of(schedules_reading("milestones"))
                self._fail("milestones", f"--milestones only applies to --schedule {readers}, not {self.schedule}")
            return
        if not self.milestones:
            self._fail("milestones", f"--schedule {self.schedule} needs --milestones (the epochs at which the lr drops)")
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
                f"--milestones must come after --warmup-epochs {show(self.warmup_epochs)}, got {shown}",
            )


@dataclass(frozen=True)
class PrecisionConfig(Section):
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
            self._fail("device", f"--device must be one of {listed(DEVICES)}, got {shorten(self.device)}")
        if self.amp_dtype not in AMP_DTYPES:
            self._fail("amp_dtype", f"--amp-dtype must be one of {listed(AMP_DTYPES)}, got {shorten(self.amp_dtype)}")

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
class EarlyStoppingConfig(Section):
    """Lightning's semantics: stop after ``patience`` validation checks without an improvement larger
    than ``min_delta`` in ``monitor`` (maximized for val_acc, minimized for val_loss). None = off."""

    section: ClassVar[str] = "early_stopping"

    monitor: str = setting("val_acc", f"Early stopping's metric: {one_of(METRIC_MODES)}.")
    patience: int | None = setting(None, "Stop after N validation checks without improvement.", shown="off")
    min_delta: float = setting(0.0, "Early stopping: a change of at most this is no improvement.")

    def __post_init__(self) -> None:
        self._normalize()
        if self.monitor not in METRIC_MODES:
            self._fail("monitor", f"--monitor must be one of {listed(METRIC_MODES)}, got {shorten(self.monitor)}")
        if self.patience is not None and self.patience < 0:
            message = f"--patience must be at least 0 (leave it out to turn early stopping off), got {self.patience}"
            self._fail("patience", message)
        if self.min_delta < 0.0:
            self._fail("min_delta", f"--min-delta must be at least 0, got {show(self.min_delta)}")


@dataclass(frozen=True)
class RunConfig(Section):
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
            self._fail("target_acc", f"--target-acc must be in (0, 1], got {show(self.target_acc)}")
        if self.preset not in PRESETS:
            self._fail("preset", f"--preset must be one of {listed(tuple(PRESETS))}, got {shorten(self.preset)}")


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "precision": PrecisionConfig,
    "early_stopping": EarlyStoppingConfig,
    "run": RunConfig,
}
