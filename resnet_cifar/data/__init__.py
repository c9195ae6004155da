"""CIFAR-10 data: sources on disk, download, split, and the tensor and DALI loaders.

`build_loaders(data_cfg, device)` is the one entry point the engine uses: it reads the data,
carves the validation split from train, applies the --limit subsets and builds three loaders that
honour one contract (see `BatchLoader`).

Importing this package imports neither torch nor numpy: its functions import what they use when
called, so `resnet-cifar download` and `--help` reach `download` without either, and `resnet-cifar
data` the torch-free modules (sources, load, cache, split) without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from resnet_cifar.config import LOADER_KINDS, DataConfig
from resnet_cifar.errors import UsageError

if TYPE_CHECKING:
    import torch

    from resnet_cifar.data.types import CifarSplit


class BatchLoader(Protocol):
    """(images, labels) batches: images normalized float [N,3,H,W] (NCHW or channels_last) on the
    device, labels int64 [N], or soft targets float32 [N, C] from a train loader with mixup or
    cutmix. Train drops the last partial batch; eval yields every sample once."""

    num_samples: int

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class Loaders:
    train: BatchLoader
    val: BatchLoader
    test: BatchLoader
    classes: tuple[str, ...]
    kind: str  # "tensor" or "dali", after resolving "auto"
    fingerprint: str = ""  # CifarSplits.fingerprint of the data read ("" when not taken)


def resolve_loader_kind(requested: str, device: torch.device, dali_installed: Callable[[], bool]) -> str:
    """``requested`` (one of LOADER_KINDS, which DataConfig checked) with auto resolved: DALI on a
    GPU when it is installed, else the tensor loader. ``dali_installed`` is asked only when the
    answer matters (--loader dali, or auto on a GPU): importing DALI to find out takes about half
    a second, which a CPU run or a tensor-loader run should not pay."""
    assert requested in LOADER_KINDS, f"unknown loader {requested!r}"
    if requested == "auto":
        return "dali" if device.type == "cuda" and dali_installed() else "tensor"
    if requested == "dali" and not dali_installed():
        raise UsageError("--loader dali needs NVIDIA DALI: pip install nvidia-dali-cuda120")
    return requested


def validation_split(
    train: CifarSplit, cfg: DataConfig, *, limit_val: int | None = None
) -> tuple[CifarSplit, CifarSplit]:
    """The run's (train, val) splits carved from the training split: stratified and seeded by
    ``cfg.seed``, then the ``--limit-train`` and ``--limit-val`` subsets (``limit_val`` given
    replaces the config's, as ``eval --split val --limit N`` does). Training and evaluation of a
    checkpoint both call this, so they see the same images in the same order."""
    from resnet_cifar.data.split import limit_split, train_val_split

    kept, val = train_val_split(train, cfg.val_fraction, cfg.seed)
    limit = cfg.limit_val if limit_val is None else limit_val
    return limit_split(kept, cfg.limit_train, cfg.seed), limit_split(val, limit, cfg.seed)


def build_loaders(
    cfg: DataConfig,
    device: torch.device,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    shard_id: int = 0,
    num_shards: int = 1,
) -> Loaders:
    """The train, val and test loaders of ``cfg`` for shard ``shard_id`` of ``num_shards`` on
    ``device``; ``dtype`` and ``channels_last`` are the images' (dtype None: float32). One
    LoaderSpec says it all: the training loader's, and the evaluation loaders' made from it."""
    import torch

    from resnet_cifar.data.augment import Augmentation
    from resnet_cifar.data.dali_loader import DaliLoader, dali_available
    from resnet_cifar.data.load import load_cifar10
    from resnet_cifar.data.loader_spec import LoaderSpec
    from resnet_cifar.data.split import limit_split
    from resnet_cifar.data.tensor_loader import TensorLoader

    kind = resolve_loader_kind(cfg.loader, device, dali_available)
    splits = load_cifar10(cfg.data_dir, verify=cfg.verify, cache_dir=cfg.cache_dir)
    if len(splits.train.classes) < 2:  # it would "train" to accuracy 1.0, then no command accepts it
        found = ", ".join(splits.train.classes)
        raise UsageError(f"{cfg.data_dir}: a classifier needs at least two classes, the data has one ({found})")
    train, val = validation_split(splits.train, cfg)
    if len(train) < cfg.batch_size * num_shards:
        raise UsageError(
            f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images"
            + (f" shared by {num_shards} processes" if num_shards > 1 else "")
        )
    spec = LoaderSpec(
        batch_size=cfg.batch_size,
        train=True,
        seed=cfg.seed,
        shard_id=shard_id,
        num_shards=num_shards,
        device=device,
        dtype=torch.float32 if dtype is None else dtype,
        channels_last=channels_last,
        augmentation=Augmentation.from_config(cfg),
    )
    evaluation = spec.for_evaluation(cfg.eval_batch_size)
    loader_class: type[TensorLoader] | type[DaliLoader] = DaliLoader if kind == "dali" else TensorLoader
    return Loaders(
        train=loader_class(train, spec),
        val=loader_class(val, evaluation),
        test=loader_class(limit_split(splits.test, cfg.limit_test, cfg.seed), evaluation),
        classes=splits.train.classes,
        kind=kind,
        fingerprint=splits.fingerprint(),
    )
