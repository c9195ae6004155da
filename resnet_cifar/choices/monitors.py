"""The metrics early stopping and best.pt can follow, and which way is better (Lightning's mode)."""

from __future__ import annotations

METRIC_MODES: dict[str, str] = {"val_acc": "max", "val_loss": "min"}
