"""A trained checkpoint as a file other programs can run (ONNX, TorchScript, safetensors: any
format of the registry), and ``predict`` on such a file. This is the library behind
``resnet-cifar export`` and ``resnet-cifar predict FILE.onnx``; nothing here prints.

- formats.py: the registry, ``FORMATS[name]``: how each format is written and read back, its
  suffix, metadata and packages.
- exporter.py: ``export_checkpoint`` (the weights, the preprocessing inside, the parity check,
  the atomic write) and predict on an exported file.
"""

from __future__ import annotations

from resnet_cifar.export.exporter import (
    ExportedClassifier,
    ExportResult,
    ParityError,
    Preprocessed,
    export_checkpoint,
    export_source,
    load_exported_classifier,
    model_from_safetensors,
    parity_batch,
    predict_exported_files,
)
from resnet_cifar.export.formats import (
    DEFAULT_OPSET,
    FORMATS,
    INPUT_NAME,
    INPUT_RANGE,
    METADATA_KEYS,
    MIN_OPSET,
    OPSET_FORMATS,
    OUTPUT_NAME,
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    PREDICT_SUFFIXES,
    SAFETENSORS_FORMAT,
    WEIGHTS_FORMATS,
    Exported,
    ExportFormat,
    ExportSource,
    model_metadata,
    predictable_format,
    read_safetensors_export,
    requested_format,
    safetensors_metadata,
)

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "INPUT_NAME",
    "INPUT_RANGE",
    "METADATA_KEYS",
    "MIN_OPSET",
    "OPSET_FORMATS",
    "OUTPUT_NAME",
    "PARITY_IMAGES",
    "PARITY_TOLERANCE",
    "PREDICT_SUFFIXES",
    "SAFETENSORS_FORMAT",
    "WEIGHTS_FORMATS",
    "ExportFormat",
    "ExportResult",
    "ExportSource",
    "Exported",
    "ExportedClassifier",
    "ParityError",
    "Preprocessed",
    "export_checkpoint",
    "export_source",
    "load_exported_classifier",
    "model_from_safetensors",
    "model_metadata",
    "parity_batch",
    "predict_exported_files",
    "predictable_format",
    "read_safetensors_export",
    "requested_format",
    "safetensors_metadata",
]
