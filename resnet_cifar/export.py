"""A trained checkpoint as a file other programs can run: ONNX, TorchScript or safetensors.

This is the library behind ``resnet-cifar export`` and ``resnet-cifar predict FILE.onnx``;
nothing here prints.

Choices, and why:

- **The preprocessing is inside.** ONNX and TorchScript models take float32 RGB images
  ``[N, 3, 32, 32]`` in [0, 1] (what any decoder gives after /255), subtract CIFAR-10's mean,
  divide by its std, apply the fine-tuning resize when the checkpoint has one, and return logits
  ``[N, classes]``. A user of the file needs no knowledge of the training data's statistics.
  The batch dimension is dynamic. The weights are the ones ``eval`` scores: the EMA weights when
  the checkpoint has them (``select_weights``), in eval mode, in float32, on the CPU.
- **The labels travel with the file.** ONNX ``metadata_props`` and TorchScript extra files hold
  the same keys (``METADATA_KEYS``): ``classes`` (a JSON list in label order), ``mean``, ``std``
  (JSON lists), ``input_range`` and the project version, plus the weights used, the
  architecture and the ``temperature`` the graph divides the logits by (the checkpoint's fitted
  temperature scaling, ``resnet-cifar calibrate``; 1.0 when it has none). safetensors holds the plain state dict (no pickle anywhere) with the full
  training config and classes in its string metadata.
- **A file proves itself before it is kept.** It is written to a temp file in the target's
  folder, loaded back the way a user would (onnxruntime's CPU provider for ONNX,
  ``torch.jit.load`` for TorchScript) and run on a fixed batch of real images: the first
  ``PARITY_IMAGES`` of a stratified, seeded subset of the checkpoint's test split, the very
  images ``eval --limit 64`` scores. Its logits must be within ``PARITY_TOLERANCE`` (max abs
  difference, fp32) of the project's own evaluation path: the data loader's normalization, the
  trainer's resize and the PyTorch model. Only then is the temp file renamed onto the target;
  on any failure it is removed, so a target is either the verified file or what it was before.
  The reference is deliberately *not* the exported wrapper run in PyTorch: a mistake in the
  wrapper's preprocessing (say, normalization left out) would then agree with itself.
- **No silent fallback for the check's images.** They come from the checkpoint's
  ``data.data_dir`` or an explicit ``data_dir``; when neither is readable the export stops
  (UsageError) and says to pass a folder or skip the check: checking on other images, or
  quietly not at all, would make "verified" mean less than it says. ``verify=False`` skips the
  parity check for ONNX and TorchScript; safetensors needs no images (its tensors are compared
  bit for bit with the checkpoint's) and is always checked.
- **ONNX through the torch.export-based exporter** (``torch.onnx.export(..., dynamo=True)``,
  which needs onnxscript): it is the default since torch 2.9 and the TorchScript-based exporter
  is deprecated ("will be removed"); both passed the parity check with torch 2.14 (max abs
  difference ~3e-7 on a ResNet-18). The opset defaults to ``DEFAULT_OPSET``, 18, the exporter's
  native opset in 2.9-2.14 (lower ones go through the ONNX version converter).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
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
from resnet_cifar.files import first_line
from resnet_cifar.inference import (
    ImagePrediction,
    TrainedModel,
    load_eval_split,
    load_trained_model,
    read_image_file,
)
from resnet_cifar.models import resize_batch

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "ExportResult",
    "OnnxClassifier",
    "ParityError",
    "PARITY_IMAGES",
    "PARITY_TOLERANCE",
    "Preprocessed",
    "export_checkpoint",
    "export_metadata",
    "load_onnx_classifier",
    "model_from_safetensors",
    "predict_onnx_files",
    "read_safetensors_export",
    "safetensors_metadata",
    "require_onnx",
]

EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_OPSET = 18
# The torch.export-based exporter's lowest native opset: below it the ONNX version converter
# fails on a ResNet (and the exporter then keeps 18 while the caller asked for less). The upper
# bound is what the installed onnx knows.
MIN_OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 64
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
INPUT_RANGE = "[0, 1]"
SAFETENSORS_FORMAT = "resnet-cifar-state-dict"
METADATA_KEYS = (
    "classes", "mean", "std", "input_range", "input", "output", "weights", "architecture", "temperature", "resnet_cifar_version",
)  # fmt: skip
ONNX_PACKAGES_HINT = "pip install 'resnet-cifar[export]' (or: pip install onnx onnxruntime onnxscript)"
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


def export_metadata(trained: TrainedModel) -> dict[str, str]:
    """The string metadata ONNX and TorchScript files carry (``METADATA_KEYS``)."""
    from resnet_cifar import __version__

    side = IMAGE_SHAPE[0]
    model_cfg = trained.config.model
    return {
        "classes": json.dumps(list(trained.classes)),
        "mean": json.dumps(list(CIFAR10_MEAN)),
        "std": json.dumps(list(CIFAR10_STD)),
        "input_range": INPUT_RANGE,
        "input": f"{INPUT_NAME}: float32 RGB [N, 3, {side}, {side}] in {INPUT_RANGE}, normalized inside",
        "output": f"{OUTPUT_NAME}: float32 [N, {trained.num_classes}], divided by the temperature",
        "weights": trained.weights,
        "architecture": f"resnet{model_cfg.depth}, {model_cfg.stem} stem",
        # The fitted temperature the graph divides the logits by ("1.0": none was fitted).
        "temperature": repr(float(trained.temperature or 1.0)),
        "resnet_cifar_version": __version__,
    }


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
    max_abs_diff: float | None  # the parity check's max |logit difference| (None: not run)
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


def require_onnx() -> None:
    """Fail with the install command (UsageError, exit 2) when the ONNX tools are missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"ONNX needs {', '.join(missing)}, which are not installed: {ONNX_PACKAGES_HINT}")


def _check_request(fmt: str, out: Path, opset: int | None, data_dir: Path | None) -> None:
    """The cheap checks, made before the checkpoint is read."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if opset is not None and fmt != "onnx":
        raise UsageError(f"--opset applies to --format onnx only, not {fmt}")
    if fmt == "onnx":
        require_onnx()
        if opset is not None:
            import onnx.defs

            highest = onnx.defs.onnx_opset_version()
            if not MIN_OPSET <= opset <= highest:
                raise UsageError(f"--opset must be in {MIN_OPSET}..{highest} (the installed onnx's range), got {opset}")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
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


# ----------------------------------------------------------------------------- the writers


def _write_onnx(module: nn.Module, example: Tensor, temp: Path, opset: int, metadata: Mapping[str, str]) -> None:
    import onnx

    batch = torch.export.Dim("batch")
    try:
        with warnings.catch_warnings():
            # The exporter's own notices would reach the user's stderr; the parity check is the
            # judge of the result, and a real failure raises.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(temp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; the user needs its first line
        raise ResnetCifarError(f"ONNX export failed: {first_line(error)}") from None
    proto = onnx.load(str(temp))
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter may keep another opset than asked, and only log it
        raise ResnetCifarError(f"ONNX export failed: the exporter wrote opset {written}, not the requested {opset}")
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "resnet-cifar export: " + metadata["input"] + " -> " + metadata["output"]
    onnx.save(proto, str(temp))


def _write_torchscript(module: nn.Module, example: Tensor, temp: Path, metadata: Mapping[str, str]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice; see _write_onnx
            # Trace, not script: the ResNet has no data-dependent control flow, and the resize's
            # shape test depends only on the fixed 32 x 32 input.
            traced = torch.jit.trace(module, (example,))
            torch.jit.save(traced, str(temp), _extra_files=dict(metadata))
    except Exception as error:
        raise ResnetCifarError(f"TorchScript export failed: {first_line(error)}") from None


def _write_safetensors(weights: Mapping[str, Tensor], temp: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    # safetensors stores dense row-major tensors: channels_last or shared storage must be copied.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in weights.items()}
    save_file(tensors, str(temp), metadata=dict(metadata))


def safetensors_metadata(trained: TrainedModel) -> dict[str, str]:
    """String metadata of a safetensors export: the full training config and classes (JSON)."""
    base = export_metadata(trained)
    return {
        "format": SAFETENSORS_FORMAT,
        "config": json.dumps(trained.config.to_dict()),
        "classes": base["classes"],
        "weights": trained.weights,
        "mean": base["mean"],
        "std": base["std"],
        # The weights' logits are raw: divide them by this temperature (JSON; null: none fitted).
        "temperature": json.dumps(trained.temperature),
        # The state dict's model expects *normalized* images: the mean and std above.
        "input": f"float32 RGB [N, 3, H, W], (x - mean) / std with x in {INPUT_RANGE}",
        "resnet_cifar_version": base["resnet_cifar_version"],
    }


def read_safetensors_export(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict and metadata of a safetensors export (DataError when it is not one)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise DataError(f"{path}: not a readable safetensors file ({first_line(error)})") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise DataError(f"{path}: not a resnet-cifar safetensors export (metadata format {metadata.get('format')!r})")
    return tensors, metadata


# ----------------------------------------------------------------------------- running an export


def _run_onnx(path: Path, images: Tensor) -> Tensor:
    return torch.from_numpy(_onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])


def _run_torchscript(path: Path, images: Tensor, metadata: Mapping[str, str]) -> Tensor:
    extra = dict.fromkeys(metadata, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice is not the user's concern here
        loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    read_back = {key: value.decode() if isinstance(value, bytes) else value for key, value in extra.items()}
    if read_back != dict(metadata):
        raise ParityError(f"the TorchScript file's extra files do not read back as written: {sorted(read_back)}")
    with torch.inference_mode():
        return loaded(images)


def _onnx_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would reach the user's stderr
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        raise DataError(f"{path}: onnxruntime cannot load it ({first_line(error)})") from None


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

    Raises UsageError (exit 2) for a bad request (unknown format, --opset off ONNX, missing ONNX
    packages, a missing folder, no readable images for the check), DataError for a checkpoint
    that is not this project's, ParityError (exit 1) when the written file does not reproduce
    the checkpoint's logits. ``out`` is then left as it was.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    data_dir = Path(data_dir) if data_dir is not None else None
    _check_request(format, out, opset, data_dir)
    if parity_images < 1:
        raise UsageError(f"parity_images must be positive, got {parity_images}")
    trained = load_trained_model(checkpoint, device="cpu")
    model = _float32_cpu_copy(trained)

    images: Tensor | None = None
    reference: Tensor | None = None
    if format != "safetensors" and verify:
        # Before the (slow) export: a missing data folder is reported at once.
        images, reference = parity_batch(trained, model, data_dir=data_dir, cache_dir=cache_dir, count=parity_images)

    fd, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        max_diff = _write_and_check(format, trained, model, temp, opset or DEFAULT_OPSET, images, reference)
        with open(temp, "rb") as handle:  # the content reaches the disk before the rename names it
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); an export is meant to be shared, so give it the
        # permissions any new file gets under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, out)
    except OSError as error:
        raise ResnetCifarError(f"could not write {out}: {error.strerror or error}") from None
    finally:
        temp.unlink(missing_ok=True)  # nothing is left there after a successful rename
    return ExportResult(
        path=out,
        format=format,
        weights=trained.weights,
        classes=trained.classes,
        opset=(opset or DEFAULT_OPSET) if format == "onnx" else None,
        verified=format == "safetensors" or verify,
        parity_images=0 if images is None else len(images),
        max_abs_diff=max_diff,
        size_bytes=out.stat().st_size,
    )


def _write_and_check(
    fmt: str,
    trained: TrainedModel,
    model: nn.Module,
    temp: Path,
    opset: int,
    images: Tensor | None,
    reference: Tensor | None,
) -> float | None:
    """Write the export to ``temp`` and check it; the max abs logit difference (None: not run)."""
    if fmt == "safetensors":
        weights = model.state_dict()
        metadata = safetensors_metadata(trained)
        _write_safetensors(weights, temp, metadata)
        tensors, read_back = read_safetensors_export(temp)
        if read_back != metadata or set(tensors) != set(weights):
            raise ParityError("the safetensors file does not read back as written (names or metadata differ)")
        for key, value in weights.items():
            if not torch.equal(tensors[key], value.cpu()):
                raise ParityError(f"the safetensors file does not read back as written ({key} differs)")
        return 0.0

    module = Preprocessed(model, trained.config.model.image_size, trained.temperature).eval()
    metadata = export_metadata(trained)
    # A fixed, seeded example: the traced graph must not depend on the global RNG's state.
    example = torch.rand(EXAMPLE_BATCH, 3, IMAGE_SHAPE[0], IMAGE_SHAPE[1], generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        _write_onnx(module, example, temp, opset, metadata)
    else:
        _write_torchscript(module, example, temp, metadata)
    if images is None or reference is None:
        return None
    logits = _run_onnx(temp, images) if fmt == "onnx" else _run_torchscript(temp, images, metadata)
    difference = _max_abs_diff(logits, reference, fmt)
    if not difference <= PARITY_TOLERANCE:
        raise ParityError(
            f"parity check failed: the exported {fmt} model's logits differ from the checkpoint's by up to "
            f"{difference:.3g} (> {PARITY_TOLERANCE:g}) on {len(images)} real test images; nothing was written"
        )
    return difference


# ----------------------------------------------------------------------------- predict on an ONNX file


@dataclass(frozen=True)
class OnnxClassifier:
    """An exported ONNX model in an onnxruntime CPU session, with the classes its metadata names."""

    path: Path
    session: Any  # onnxruntime.InferenceSession
    classes: tuple[str, ...]
    metadata: dict[str, str]

    def logits(self, images: Tensor, *, tta: bool = False) -> Tensor:
        """float32 logits of images in [0, 1] ``[N, 3, 32, 32]``; with TTA averaged with the mirror,
        as ``predict_logits`` does for a checkpoint."""
        def run(batch: Tensor) -> Tensor:
            return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: batch.contiguous().numpy()})[0])

        logits = run(images)
        if tta:
            logits = (logits + run(images.flip(-1))) / 2
        return logits.float()


def load_onnx_classifier(path: Path) -> OnnxClassifier:
    """Open an ONNX file written by ``export_checkpoint`` (DataError when it is not one)."""
    require_onnx()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such ONNX file")
    session = _onnx_session(path)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    try:
        classes = json.loads(metadata["classes"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"{path}: no 'classes' metadata; not a file written by `resnet-cifar export`") from None
    if metadata.get("input_range") != INPUT_RANGE or [item.name for item in session.get_inputs()] != [INPUT_NAME]:
        raise DataError(f"{path}: not a resnet-cifar export (input {INPUT_NAME!r} in {INPUT_RANGE} expected)")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise DataError(f"{path}: its 'classes' metadata is not a list of names")
    return OnnxClassifier(path=path, session=session, classes=tuple(classes), metadata=metadata)


def predict_onnx_files(
    classifier: OnnxClassifier,
    images: Sequence[Path],
    *,
    top_k: int = 3,
    batch_size: int = 256,
    tta: bool = False,
) -> list[ImagePrediction]:
    """``predict_files`` for an ONNX export: the same image reading, softmax and top-k, in input order."""
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
