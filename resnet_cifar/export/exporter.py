"""Export a checkpoint to any registered format, verified before it is kept; predict with an exported file.

Choices, and why:

- **The preprocessing is inside** a model format: it takes float32 RGB images ``[N, 3, 32, 32]``
  in [0, 1] (what any decoder gives after /255), subtracts CIFAR-10's mean, divides by its std,
  applies the fine-tuning resize when the checkpoint has one (``Preprocessed``), and returns
  logits ``[N, classes]``. A user of the file needs no knowledge of the training data's
  statistics. The batch dimension is dynamic. The weights are the ones ``eval`` scores: the EMA
  weights when the checkpoint has them, in eval mode, in float32, on the CPU.
- **The labels travel with the file**: each format's metadata (formats.py) holds the classes,
  the normalization and the project version.
- **A file proves itself before it is kept.** It is written to a temp file in the target's
  folder (``files.atomic_path``), read back the way a user would (the format's ``open``), and
  its metadata must read back as written. A model format is then run on a fixed batch of real
  images: the first ``PARITY_IMAGES`` of a stratified, seeded subset of the checkpoint's test
  split, the very images ``eval --limit 64`` scores. Its logits must be within
  ``PARITY_TOLERANCE`` (max abs difference, fp32) of the project's own evaluation path: the
  data loader's normalization, the trainer's resize and the PyTorch model. A weights format's
  tensors must equal the checkpoint's bit for bit. Only then is the temp file renamed onto the
  target; on any failure it is removed, so a target is either the verified file or what it
  was before. The reference is deliberately *not* the exported wrapper run in PyTorch: a
  mistake in the wrapper's preprocessing (say, normalization left out) would then agree with
  itself.
- **No silent fallback for the check's images.** They come from the checkpoint's
  ``data.data_dir`` or an explicit ``data_dir``; when neither is readable the export stops
  (UsageError) and says to pass a folder or skip the check: checking on other images, or
  quietly not at all, would make "verified" mean less than it says. ``verify=False`` skips the
  parity check of a model format; a weights format needs no images and is always checked.
- **ONNX through the torch.export-based exporter** (``torch.onnx.export(..., dynamo=True)``,
  which needs onnxscript): it is the default since torch 2.9 and the TorchScript-based exporter
  is deprecated ("will be removed"); both passed the parity check with torch 2.14 (max abs
  difference ~3e-7 on a ResNet-18). The opset defaults to ``DEFAULT_OPSET``, 18, the exporter's
  native opset in 2.9-2.14 (lower ones go through the ONNX version converter).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SHAPE
from resnet_cifar.engine.build import build_model
from resnet_cifar.errors import DataError, ResnetCifarError, UsageError
from resnet_cifar.evaluation.evaluate import predict_logits
from resnet_cifar.export.formats import (
    DEFAULT_OPSET,
    FORMATS,
    INPUT_NAME,
    INPUT_RANGE,
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    Exported,
    ExportFormat,
    ExportSource,
    predictable_format,
    read_safetensors_export,
    requested_format,
)
from resnet_cifar.files import atomic_path, check_writable, first_line
from resnet_cifar.inference import ImagePrediction, TrainedModel, load_eval_split, load_trained_model, read_image_file
from resnet_cifar.models import resize_batch

# The trace/export example: two images, so no exporter specializes the batch size to 1.
EXAMPLE_BATCH = 2


class ParityError(ResnetCifarError):
    """The exported file does not compute what the checkpoint computes (exit 1)."""

    exit_code = 1


# ----------------------------------------------------------------------------- the exported module


class Preprocessed(nn.Module):
    """``model`` behind CIFAR-10's normalization and the trainer's resize: [0, 1] RGB in, logits out,
    divided by the checkpoint's fitted temperature (1 when it has none), so a softmax of the output
    gives the calibrated probabilities ``predict`` gives."""

    # Its public name. Exported files name the class by its module (TorchScript's code, the ONNX
    # exporter's node metadata): this keeps them as they were when export was one module.
    __module__ = "resnet_cifar.export"

    def __init__(self, model: nn.Module, image_size: int | None, temperature: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.register_buffer("temperature", torch.tensor(temperature or 1.0, dtype=torch.float32))
        # Buffers, not parameters: they are constants of the exported graph, never trained.
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        normalized = (images - self.mean) / self.std
        return self.model(resize_batch(normalized, self.image_size)) / self.temperature


def _float32_cpu_copy(trained: TrainedModel) -> nn.Module:
    """The checkpoint's model as exported: a float32, contiguous-format copy in eval mode."""
    model = copy.deepcopy(trained.model).to(device="cpu", dtype=torch.float32)
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return model.eval()


def export_source(trained: TrainedModel, spec: ExportFormat, opset: int | None) -> ExportSource:
    """What ``spec.write`` writes for ``trained``."""
    model = _float32_cpu_copy(trained)
    # A fixed, seeded example: the traced graph must not depend on the global RNG's state.
    example = torch.rand(EXAMPLE_BATCH, 3, IMAGE_SHAPE[0], IMAGE_SHAPE[1], generator=torch.Generator().manual_seed(0))
    return ExportSource(
        model=model,
        module=Preprocessed(model, trained.config.model.image_size, trained.temperature).eval(),
        example=example,
        metadata=spec.metadata(trained),
        opset=opset,
    )


# ----------------------------------------------------------------------------- requests and results


@dataclass(frozen=True)
class ExportResult:
    """What ``export_checkpoint`` wrote and how it was checked."""

    path: Path
    format: str
    weights: str
    classes: tuple[str, ...]
    opset: int | None
    verified: bool  # False only under verify=False
    parity_images: int  # images the parity check ran on (0: none)
    max_abs_diff: float | None  # the parity check's max |logit difference| (None: not run; 0.0 for weights)
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.path),
            "format": self.format,
            "weights": self.weights,
            "classes": list(self.classes),
            "opset": self.opset,
            "verified": self.verified,
            "parity_images": self.parity_images,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": PARITY_TOLERANCE,
            "size_bytes": self.size_bytes,
        }


def _check_target(out: Path, data_dir: Path | None) -> None:
    """The cheap checks of the files named, made before the checkpoint is read."""
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    check_writable(out)  # a read-only folder is one line now, not after the slow export
    if data_dir is not None and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")


# ----------------------------------------------------------------------------- the parity batch


def parity_batch(
    trained: TrainedModel, model: nn.Module, *, data_dir: Path | None, cache_dir: Path | None, count: int = PARITY_IMAGES
) -> tuple[Tensor, Tensor]:
    """The fixed batch of real images in [0, 1] and the reference logits of the project's own path.

    The images are eval's ``--limit count`` test subset (stratified, seeded with the checkpoint's
    data seed). The reference runs them through the data loader (its normalization), the
    trainer's resize and the float32 model, with no autocast, as ``eval`` does on a CPU.
    """
    root = data_dir if data_dir is not None else trained.config.data.data_dir
    if not Path(root).is_dir():
        raise UsageError(
            f"{root}: the checkpoint's data folder (config data.data_dir) is not readable here, and the parity "
            "check needs its test images; pass --data-dir DIR (a CIFAR-10 folder), or --no-verify to skip the check"
        )
    split = load_eval_split(trained.config.data, "test", data_dir=Path(root), limit=count, cache_dir=cache_dir)
    loader = TensorLoader(split, LoaderSpec(batch_size=len(split), train=False))  # float32 NCHW on the CPU
    with torch.inference_mode():
        reference = torch.cat([predict_logits(model, trained.resize(batch)) for batch, _ in loader])
    reference = reference / (trained.temperature or 1.0)  # as predict divides them
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    return images, reference


def _max_abs_diff(logits: Tensor, reference: Tensor, what: str) -> float:
    if tuple(logits.shape) != tuple(reference.shape):
        raise ParityError(f"the exported {what} model returns shape {tuple(logits.shape)}, expected {tuple(reference.shape)}")
    difference = (logits.float() - reference).abs().max().item()
    # NaN compares false with everything: test "not <=" so a NaN output fails too.
    return float(difference) if difference == difference else float("inf")


# ----------------------------------------------------------------------------- the export


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    format: str,
    opset: int | None = None,
    verify: bool = True,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    parity_images: int = PARITY_IMAGES,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` as ``format`` (see the module notes), verified unless told not to.

    Raises UsageError (exit 2) for a bad request (unknown format, --opset off a format that takes
    one, missing packages, a missing folder, no readable images for the check), DataError for a
    checkpoint that is not this project's, ParityError (exit 1) when the written file does not
    reproduce the checkpoint, UnwritableFolder (exit 2) when ``out``'s folder cannot be written
    into, WriteError (exit 1) when the disk fails. ``out`` is then left as it was.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    data_dir = Path(data_dir) if data_dir is not None else None
    spec = requested_format(format, opset)
    _check_target(out, data_dir)
    if parity_images < 1:
        raise UsageError(f"parity_images must be positive, got {parity_images}")
    trained = load_trained_model(checkpoint, device="cpu")
    opset = (opset or DEFAULT_OPSET) if spec.opsets is not None else None
    source = export_source(trained, spec, opset)

    images: Tensor | None = None
    reference: Tensor | None = None
    if spec.runnable and verify:
        # Before the (slow) export: a missing data folder is reported at once.
        images, reference = parity_batch(trained, source.model, data_dir=data_dir, cache_dir=cache_dir, count=parity_images)
    with atomic_path(out) as temp:
        spec.write(source, temp)
        max_diff = None if spec.runnable and not verify else _check(format, spec.open(temp), source, images, reference)
    return ExportResult(
        path=out,
        format=format,
        weights=trained.weights,
        classes=trained.classes,
        opset=opset,
        verified=not spec.runnable or verify,
        parity_images=0 if images is None else len(images),
        max_abs_diff=max_diff,
        size_bytes=out.stat().st_size,
    )


def _check(
    fmt: str, exported: Exported, source: ExportSource, images: Tensor | None, reference: Tensor | None
) -> float:
    """Check the file read back against what was written; the max abs logit difference (0.0 for weights)."""
    if exported.metadata != source.metadata:
        raise ParityError(f"the {fmt} file does not read back as written: its metadata differ")
    if exported.tensors is not None:
        weights = source.model.state_dict()
        if set(exported.tensors) != set(weights):
            raise ParityError(f"the {fmt} file does not read back as written: the tensor names differ")
        for key, value in weights.items():
            if not torch.equal(exported.tensors[key], value.cpu()):
                raise ParityError(f"the {fmt} file does not read back as written ({key} differs)")
        return 0.0
    assert exported.logits is not None and images is not None and reference is not None
    difference = _max_abs_diff(exported.logits(images), reference, fmt)
    if not difference <= PARITY_TOLERANCE:
        raise ParityError(
            f"parity check failed: the exported {fmt} model's logits differ from the checkpoint's by up to "
            f"{difference:.3g} (> {PARITY_TOLERANCE:g}) on {len(images)} real test images; nothing was written"
        )
    return difference


# ----------------------------------------------------------------------------- predict on an exported file


@dataclass(frozen=True)
class ExportedClassifier:
    """An exported model file, read back by its format, with the classes its metadata names."""

    path: Path
    exported: Exported
    classes: tuple[str, ...]

    def logits(self, images: Tensor, *, tta: bool = False) -> Tensor:
        """float32 logits of images in [0, 1] ``[N, 3, 32, 32]``; with TTA averaged with the mirror,
        as ``predict_logits`` does for a checkpoint."""
        assert self.exported.logits is not None
        logits = self._checked(self.exported.logits(images))
        if tta:
            logits = (logits + self._checked(self.exported.logits(images.flip(-1)))) / 2
        return logits.float()

    def _checked(self, logits: Tensor) -> Tensor:
        """``logits`` when they hold one score per class name (a DataError otherwise: names taken
        by position from a list of another length would label the answers wrongly, or not at all)."""
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            scores = f"{logits.shape[1]} scores per image" if logits.ndim == 2 else f"an output of shape {tuple(logits.shape)}"
            raise DataError(
                f"{self.path}: its model returns {scores} but its 'classes' metadata names {len(self.classes)} "
                "classes; a file `resnet-cifar export` wrote has one name per score"
            )
        return logits


def load_exported_classifier(path: Path, *, device: str = "auto") -> ExportedClassifier:
    """Open a file written by ``export_checkpoint`` in a format ``predict`` takes (by its suffix),
    on the CPU: UsageError for another device or a missing file, DataError when it is not an export."""
    path = Path(path)
    fmt = predictable_format(path)
    if fmt is None:
        raise UsageError(f"{path}: not a file predict takes ({', '.join(spec.suffix for spec in FORMATS.values() if spec.predicts)})")
    spec = FORMATS[fmt]
    if device not in ("auto", "cpu"):
        raise UsageError(f"a {spec.suffix} file runs on the CPU ({spec.runtime}); --device {device} does not apply")
    spec.require()
    if not path.is_file():
        raise UsageError(f"{path}: no such {spec.title} file")
    exported = spec.open(path)
    metadata = exported.metadata
    try:
        classes = json.loads(metadata["classes"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"{path}: no 'classes' metadata; not a file written by `resnet-cifar export`") from None
    if metadata.get("input_range") != INPUT_RANGE or exported.logits is None:
        raise DataError(f"{path}: not a resnet-cifar export (input {INPUT_NAME!r} in {INPUT_RANGE} expected)")
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) for name in classes):
        raise DataError(f"{path}: its 'classes' metadata is not a list of names")
    return ExportedClassifier(path=path, exported=exported, classes=tuple(classes))


def predict_exported_files(
    classifier: ExportedClassifier,
    images: Sequence[Path],
    *,
    top_k: int = 3,
    batch_size: int = 256,
    tta: bool = False,
) -> list[ImagePrediction]:
    """``predict_files`` for an exported model: the same image reading, softmax and top-k, in input order."""
    if not images:
        raise UsageError("give at least one image file")
    if not 1 <= top_k <= len(classifier.classes):
        raise UsageError(f"--top-k must be in 1..{len(classifier.classes)}, got {top_k}")
    paths = [Path(image) for image in images]
    # Every file is read first, so a bad one fails the call before any result (as predict_files).
    pixels = np.stack([read_image_file(path) for path in paths])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0)
    probabilities = torch.cat(
        [torch.softmax(classifier.logits(batch[start : start + batch_size], tta=tta), dim=1) for start in range(0, len(paths), batch_size)]
    )
    top_values, top_indices = probabilities.topk(top_k, dim=1)
    return [
        ImagePrediction(
            image=path,
            top=tuple((classifier.classes[index], probability) for index, probability in zip(indices, values)),
        )
        for path, indices, values in zip(paths, top_indices.tolist(), top_values.tolist())
    ]


def model_from_safetensors(path: Path) -> tuple[nn.Module, tuple[str, ...]]:
    """Rebuild the model of a safetensors export from its metadata config (eval mode, CPU)."""
    from resnet_cifar.config import TrainConfig

    tensors, metadata = read_safetensors_export(path)
    try:
        config = TrainConfig.from_dict(json.loads(metadata["config"]))
        classes = tuple(json.loads(metadata["classes"]))
    except (KeyError, json.JSONDecodeError, UsageError) as error:
        raise DataError(f"{path}: its config or classes metadata is unusable ({first_line(error)})") from None
    # The engine's one model builder, architecture only: every weight comes from the file.
    model, _ = build_model(config, len(classes), load_weights=False)
    model.load_state_dict(tensors, strict=True)
    return model.eval(), classes
