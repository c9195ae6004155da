"""A checkpoint file: atomic writes, safe loading, and the random-number-generator state.

What a checkpoint holds (its keys and their meaning) is engine/checkpointer.py's: CHECKPOINT_KEYS
there is the one list. This module only knows that it is a dict of plain types (dict, list, tuple,
str, int, float, bool, None) and tensors, so ``torch.load(weights_only=True)`` reads it without
executing anything.

Writes go through ``resnet_cifar.files.atomic_write``: a temp file in the target's folder,
fsynced, renamed over the target, the folder fsynced so the rename survives a power cut. A
failure at any point leaves the previous checkpoint intact, removes the temp file and is one
WriteError naming the file (exit 1).
"""

from __future__ import annotations

import hashlib
import random
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import atomic_write, first_line, weights_only_refusal

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6 is a zip archive
# torch.jit.save's archives hold this record (torch.serialization._is_torchscript_zip looks for it).
_TORCHSCRIPT_RECORD = "constants.pkl"
DIGEST_ALGORITHM = "sha256"


def write_checkpoint_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write a serialized checkpoint to ``path`` atomically (see the module notes)."""
    atomic_write(Path(path), data)


def load_checkpoint(path: Path, *, require: Iterable[str] = ("model",)) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without executing any code from the file.

    Raises ``UsageError`` when the file is missing, else ``DataError`` (exit 1, one line naming the
    file) that says which of these it is: *refused* (a pickle that would import or run code: never
    run), *truncated or corrupt* (a PyTorch zip cut short or damaged), *not a checkpoint of this
    project* (random bytes, another kind of zip, a torch file holding something else than a
    checkpoint dict, a dict without one of the ``require`` keys).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    if _is_torchscript(path):  # torch.load would warn on stderr, then refuse it under weights_only
        raise DataError(
            f"{path} is a TorchScript file (torch.jit.save, e.g. `resnet-cifar export --format torchscript`), not a "
            "training checkpoint: give the best.pt or last.pt that `resnet-cifar train` wrote"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a weights_only refusal, a bad zip, a truncated or foreign file, ...
        raise DataError(f"{path} {_why_unreadable(path, error)}") from error
    if not isinstance(payload, dict):
        raise DataError(f"{path} is not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    missing = [key for key in require if key not in payload]
    if missing:
        raise DataError(f"{path} is not a checkpoint of this project: missing {', '.join(missing)}")
    return payload


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rpartition("/")[2] == _TORCHSCRIPT_RECORD for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False  # not a readable zip: torch.load says what it is


def payload_digest(payload: Mapping[str, object], *, skip: str = "digest") -> str:
    """A sha256 over a checkpoint dict's whole content but its ``skip`` key: every tensor's dtype,
    shape and bytes and every plain value, in the dict's order. Recorded at save time and checked
    at load, it catches flipped or damaged bytes that torch.load reads without complaint (its zip
    records carry no checksum it checks). Computed on the in-memory dict, so it is the same before
    torch.save and after torch.load."""
    digest = hashlib.new(DIGEST_ALGORITHM, usedforsecurity=False)
    _feed(digest, {key: value for key, value in payload.items() if key != skip})
    return digest.hexdigest()


def _feed(digest: Any, value: object) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):  # pickle keeps which; the digest need not
        digest.update(f"L{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        text = repr(value)
        digest.update(f"{type(value).__name__}{len(text)}:{text};".encode())


def _why_unreadable(path: Path, error: Exception) -> str:
    """What kind of file torch.load(weights_only=True) refused, from the error and the file's bytes."""
    refused = weights_only_refusal(error)
    if refused:  # the unpickler met a global it will not import: a pickle that would run code
        return f"holds objects other than tensors and plain values (it references {refused}); refused without running it"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return "is truncated or corrupt (a PyTorch zip file without its end): write it again or use another"
        with zipfile.ZipFile(path) as archive:
            is_torch = any(name.endswith("/data.pkl") for name in archive.namelist())
        if not is_torch:
            return "is not a checkpoint of this project: a zip file, but not a PyTorch one"
        return f"is truncated or corrupt: {first_line(error)}"
    if not head:
        return "is empty: not a checkpoint"
    # Neither a zip nor a pickle that names a global: random bytes, text, another format.
    return "is not a checkpoint of this project: not a PyTorch file"


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
