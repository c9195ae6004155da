"""Atomic checkpoint files, safe loading, and the random-number-generator state.

A checkpoint is a dict of plain types (dict, list, tuple, str, int, float, bool, None) and
tensors, so ``torch.load(weights_only=True)`` reads it without executing anything. The trainer's
payload keys: model, optimizer, scheduler, scaler, ema (optional), early_stopping, rng, epoch,
global_step, batches_done_in_epoch, loader_seed, config (a plain dict) and history (a list of
dicts, one per epoch).

Writes are atomic: the payload goes to a temp file in the target's folder (same file system, so
the rename is atomic), is flushed and fsynced, renamed over the target with ``os.replace``, and
the folder is fsynced so the rename itself survives a power cut. A failure at any point leaves
the previous checkpoint intact and removes the temp file.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from resnet_cifar.errors import DataError, ResnetCifarError, UsageError
from resnet_cifar.files import atomic_write, first_line, weights_only_refusal


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (see the module notes); creates the folder if needed."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_checkpoint_bytes(path, buffer.getbuffer())


def write_checkpoint_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write a serialized checkpoint to ``path`` atomically (see the module notes)."""
    path = Path(path)
    try:
        atomic_write(path, data, fsync_folder=True)
    except OSError as error:
        raise ResnetCifarError(f"could not write checkpoint {path}: {error.strerror or error}") from error


def load_checkpoint(path: Path, *, require: Iterable[str] = ("model",)) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without executing any code from the file.

    Raises ``UsageError`` when the file is missing, ``DataError`` (one line naming the file) when
    it is not a checkpoint: truncated, not a torch file, holding arbitrary objects (a pickle that
    would run code is refused, never run) or lacking one of the ``require`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a weights_only refusal, a bad zip, a truncated or foreign file, ...
        refused = weights_only_refusal(error)
        if refused is not None:
            what = f"it references {refused}" if refused else "unsupported pickle content"
            raise DataError(
                f"{path} holds objects other than tensors and plain values ({what}); refused without running it"
            ) from error
        raise DataError(f"{path} is not a readable checkpoint: {first_line(error)}") from error
    if not isinstance(payload, dict):
        raise DataError(f"{path} is not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    missing = [key for key in require if key not in payload]
    if missing:
        raise DataError(f"{path} is not a checkpoint of this project: missing {', '.join(missing)}")
    return payload


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's ``random``, torch's CPU generator and every CUDA generator.

    Only tuples, ints, None and tensors, so a ``weights_only`` load reads it back. (NumPy's global
    generator is not used by the project.)
    """
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``capture_rng_state`` returned.

    CUDA states are restored for the devices present (none on a CPU-only machine), so a
    checkpoint from a GPU run still resumes elsewhere, though not bit-exactly.
    """
    try:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        torch.set_rng_state(state["torch"].cpu())
        if torch.cuda.is_available():
            for device_index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu(), device_index)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise DataError(f"the checkpoint's RNG state is malformed: {error}") from error
