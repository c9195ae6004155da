"""The export formats as a registry: ``FORMATS[name]`` is everything the project knows about one
format (timm's OptimInfo is the model): how the file is written, how it is read back (by the
parity check and by ``predict FILE``), its suffix, the metadata it carries, and the packages it
needs with their pip command. export_checkpoint, ``export --format`` (its choices and --help),
``predict`` and the install hint read this table and nothing else about a format.

Two kinds of format:

- **A model** (``runnable``): the network with CIFAR-10's normalization (and the fine-tuning
  resize) inside: float32 RGB ``[N, 3, 32, 32]`` in [0, 1] in, logits out. Its metadata is
  ``model_metadata`` (``METADATA_KEYS``). It is checked by running it on real test images.
- **Weights** (not ``runnable``): the plain state dict, checked bit for bit, no images needed.

Adding a format is one entry here: its ``ExportFormat`` with a ``write`` and an ``open``
function (and a metadata function if it is neither kind's), plus its tests (tests/test_export.py)
and docs (docs/export.md, README's Export); test_a_new_export_format_needs_only_its_registry_entry
shows that nothing else changes.

A format's own packages (onnx, onnxruntime, ...) are imported by its functions when they run, so a
missing optional package costs only its format (``ExportFormat.require`` names the pip command).
"""

from __future__ import annotations

import importlib.util
import json
import reprlib  # names from the file, cut short in the message
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from resnet_cifar.choices import one_of
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SHAPE
from resnet_cifar.errors import DataError, ResnetCifarError, UsageError
from resnet_cifar.files import first_line
from resnet_cifar.inference import TrainedModel

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


# ----------------------------------------------------------------------------- what a format works on


@dataclass(frozen=True)
class ExportSource:
    """What a format's ``write`` gets: the checkpoint's model, ready to be written."""

    model: nn.Module  # float32, CPU, eval mode: a weights format holds its state dict
    module: nn.Module  # the model behind the preprocessing: what a model format holds
    example: Tensor  # a fixed batch in [0, 1] to trace or export with
    metadata: dict[str, str]  # the format's own metadata (ExportFormat.metadata)
    opset: int | None  # the ONNX opset (formats with ``opsets`` only)


@dataclass(frozen=True)
class Exported:
    """A written file as read back the way a user reads it (``ExportFormat.open``)."""

    metadata: dict[str, str]
    logits: Callable[[Tensor], Tensor] | None = None  # a model: float32 [0, 1] images -> float32 logits, on the CPU
    tensors: dict[str, Tensor] | None = None  # weights: the state dict


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    title: its name in messages ("ONNX export failed: ...").
    help: what the file is, in a few words (``--format``'s help shows it after the name).
    suffix: the file name's usual ending; ``predict FILE`` recognises it when ``predicts``.
    runnable: a model with the preprocessing inside (checked on real images), else plain weights
        (checked bit for bit).
    metadata: the string metadata the file carries, from the trained model.
    write: writes the file at a path (a temp path beside the target: the export keeps it only
        once it is checked).
    open: reads a file back, as a user would: the parity check, and ``predict``.
    runtime: what ``open`` runs or reads it with (predict's messages).
    packages: the modules it needs beyond the project's own dependencies.
    extra: the project's pip extra that installs them.
    opsets: the opsets the installed exporter writes, for a format that takes ``--opset``.
    predicts: ``predict FILE`` takes a file of this format (on the CPU).
    """

    title: str
    help: str
    suffix: str
    runnable: bool
    metadata: Callable[[TrainedModel], dict[str, str]]
    write: Callable[[ExportSource, Path], None]
    open: Callable[[Path], Exported]
    runtime: str
    packages: tuple[str, ...] = ()
    extra: str | None = None
    opsets: Callable[[], range] | None = None
    predicts: bool = False

    def install_hint(self) -> str:
        """The pip command that installs ``packages``."""
        return f"pip install 'resnet-cifar[{self.extra}]' (or: pip install {' '.join(self.packages)})"

    def require(self) -> None:
        """Fail with the install command (UsageError, exit 2) when a package it needs is missing."""
        missing = [name for name in self.packages if importlib.util.find_spec(name) is None]
        if missing:
            raise UsageError(f"{self.title} needs {', '.join(missing)}, which are not installed: {self.install_hint()}")


# ----------------------------------------------------------------------------- metadata


def model_metadata(trained: TrainedModel) -> dict[str, str]:
    """The string metadata a model format carries (``METADATA_KEYS``)."""
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


def safetensors_metadata(trained: TrainedModel) -> dict[str, str]:
    """String metadata of a safetensors export: the full training config and classes (JSON)."""
    base = model_metadata(trained)
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


# ----------------------------------------------------------------------------- ONNX


def _onnx_opsets() -> range:
    import onnx.defs

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def _write_onnx(source: ExportSource, path: Path) -> None:
    import onnx

    opset = source.opset if source.opset is not None else DEFAULT_OPSET
    try:
        with warnings.catch_warnings():
            # The exporter's own notices would reach the user's stderr; the parity check is the
            # judge of the result, and a real failure raises.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                source.module,
                (source.example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; the user needs its first line
        raise ResnetCifarError(f"ONNX export failed: {first_line(error)}") from None
    proto = onnx.load(str(path))
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter may keep another opset than asked, and only log it
        raise ResnetCifarError(f"ONNX export failed: the exporter wrote opset {written}, not the requested {opset}")
    del proto.metadata_props[:]
    for key, value in source.metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "resnet-cifar export: " + source.metadata["input"] + " -> " + source.metadata["output"]
    onnx.save(proto, str(path))


def _open_onnx(path: Path) -> Exported:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would reach the user's stderr
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        raise DataError(f"{path}: onnxruntime cannot load it ({first_line(error)})") from None
    inputs, outputs = [item.name for item in session.get_inputs()], [item.name for item in session.get_outputs()]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise DataError(
            f"{path}: not a resnet-cifar export (input {INPUT_NAME!r} in {INPUT_RANGE} and output {OUTPUT_NAME!r} "
            f"expected, found inputs {reprlib.repr(inputs)} and outputs {reprlib.repr(outputs)})"
        )

    def logits(images: Tensor) -> Tensor:
        try:
            return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.contiguous().numpy()})[0])
        except Exception as error:  # onnxruntime's own types: a graph that does not take this input
            raise DataError(f"{path}: onnxruntime cannot run it on [N, 3, H, W] float32 images ({first_line(error)})") from None

    return Exported(metadata=dict(session.get_modelmeta().custom_metadata_map), logits=logits)


# ----------------------------------------------------------------------------- TorchScript


def _write_torchscript(source: ExportSource, path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice; see _write_onnx
            # Trace, not script: the ResNet has no data-dependent control flow, and the resize's
            # shape test depends only on the fixed 32 x 32 input.
            traced = torch.jit.trace(source.module, (source.example,))
            torch.jit.save(traced, str(path), _extra_files=dict(source.metadata))
    except Exception as error:
        raise ResnetCifarError(f"TorchScript export failed: {first_line(error)}") from None


def _open_torchscript(path: Path) -> Exported:
    extra = dict.fromkeys(METADATA_KEYS, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice is not the user's concern here
        loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)

    def logits(images: Tensor) -> Tensor:
        with torch.inference_mode():
            return loaded(images)

    metadata = {key: value.decode() if isinstance(value, bytes) else value for key, value in extra.items()}
    return Exported(metadata=metadata, logits=logits)


# ----------------------------------------------------------------------------- safetensors


def _write_safetensors(source: ExportSource, path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors stores dense row-major tensors: channels_last or shared storage must be copied.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in source.model.state_dict().items()}
    save_file(tensors, str(path), metadata=dict(source.metadata))


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


def _open_safetensors(path: Path) -> Exported:
    tensors, metadata = read_safetensors_export(path)
    return Exported(metadata=metadata, tensors=tensors)


# ----------------------------------------------------------------------------- the registry

FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        title="ONNX",
        help="a model for onnxruntime and other ONNX runtimes",
        suffix=".onnx",
        runnable=True,
        metadata=model_metadata,
        write=_write_onnx,
        open=_open_onnx,
        runtime="onnxruntime",
        packages=("onnx", "onnxruntime", "onnxscript"),
        extra="export",
        opsets=_onnx_opsets,
        predicts=True,
    ),
    "torchscript": ExportFormat(
        title="TorchScript",
        help="a model for torch.jit.load, no Python code needed",
        suffix=".pt",
        runnable=True,
        metadata=model_metadata,
        write=_write_torchscript,
        open=_open_torchscript,
        runtime="torch.jit.load",
    ),
    "safetensors": ExportFormat(
        title="safetensors",
        help="the plain state dict, config and classes in its metadata",
        suffix=".safetensors",
        runnable=False,
        metadata=safetensors_metadata,
        write=_write_safetensors,
        open=_open_safetensors,
        runtime="safetensors",
    ),
}

# What --help lists (taken from the registry once, at import).
OPSET_FORMATS = tuple(name for name, spec in FORMATS.items() if spec.opsets is not None)
WEIGHTS_FORMATS = tuple(name for name, spec in FORMATS.items() if not spec.runnable)
PREDICT_SUFFIXES = tuple(spec.suffix for spec in FORMATS.values() if spec.predicts)


def predictable_format(path: Path) -> str | None:
    """The format ``predict`` runs ``path`` as (by its suffix), or None: then it is a checkpoint."""
    suffix = Path(path).suffix.lower()
    return next((name for name, spec in FORMATS.items() if spec.predicts and spec.suffix == suffix), None)


def requested_format(name: str, opset: int | None) -> ExportFormat:
    """The format of ``export --format name [--opset N]``, its packages there and the opset in
    its range; else a UsageError (exit 2) listing the formats, naming the pip command, or the range."""
    if name not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {name!r}")
    spec = FORMATS[name]
    if opset is not None and spec.opsets is None:
        takes = one_of([other for other, entry in FORMATS.items() if entry.opsets is not None])
        raise UsageError(f"--opset applies to --format {takes} only, not {name}")
    spec.require()
    if opset is not None and spec.opsets is not None:
        allowed = spec.opsets()
        if opset not in allowed:
            raise UsageError(
                f"--opset must be in {allowed.start}..{allowed.stop - 1} (the range the installed {spec.title} "
                f"tools support), got {opset}"
            )
    return spec
