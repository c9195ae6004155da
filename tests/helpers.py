"""Helpers the test modules share (import them as ``from helpers import ...``: pytest puts tests/ on
the path, as conftest.py's folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_cifar.engine.checkpointer import Checkpointer


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` the way every checkpoint is written: the run folder's
    Checkpointer (which stamps the format unless ``payload`` names one), in the background, waited
    on, so its failure is raised here."""
    checkpointer = Checkpointer(Path(path).parent)
    checkpointer.save([Path(path).name], payload)
    checkpointer.wait()
