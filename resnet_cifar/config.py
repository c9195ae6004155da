"""Frozen, validated configuration, one dataclass per concern.

The CLI turns flags (and later a config file) into these once; builders take only their own part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resnet_cifar.errors import UsageError

LOADER_KINDS = ("auto", "tensor", "dali")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split and batched."""

    data_dir: Path
    batch_size: int = 512
    eval_batch_size: int = 1024
    val_fraction: float = 0.1
    loader: str = "auto"
    seed: int = 0
    limit_train: int | None = None
    limit_val: int | None = None
    verify: bool = True
    # Where decoded image folders are cached; None disables the cache.
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be positive, got {self.batch_size}")
        if self.eval_batch_size <= 0:
            raise UsageError(f"--eval-batch-size must be positive, got {self.eval_batch_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.loader not in LOADER_KINDS:
            raise UsageError(f"--loader must be one of {', '.join(LOADER_KINDS)}, got {self.loader!r}")
        for flag, limit in (("--limit-train", self.limit_train), ("--limit-val", self.limit_val)):
            if limit is not None and limit <= 0:
                raise UsageError(f"{flag} must be positive, got {limit}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (paths as strings), fit for TOML, JSON and checkpoints."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}
