"""`resnet-cifar export`: a checkpoint as a verified file in any registered format (ONNX,
TorchScript, safetensors: resnet_cifar.export.formats).

The command only parses flags, calls resnet_cifar.export and renders the result; the library
decides the formats, the weights, the preprocessing, the parity images and when a file is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import cache_dir_from_env, reported_errors
from .options import CheckpointArgument, JsonOption
from .render import Output


def export_command(
    checkpoint: CheckpointArgument,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="{export.FORMATS:described}. A model (all but {export.WEIGHTS_FORMATS:or}) takes float32 RGB "
            "[N, 3, {config.IMAGE_SIDE}, {config.IMAGE_SIDE}] in {export.INPUT_RANGE}, normalized inside, "
            "and returns logits.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The file to write. Its folder must exist; an existing file is left as it was when the export "
            "or its check fails.",
            show_default=False,
        ),
    ],
    opset: Annotated[
        Optional[int],
        typer.Option(
            "--opset", help="ONNX opset (--format {export.OPSET_FORMATS:or} only). Default: {export.DEFAULT_OPSET}.",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--data-dir",
            help="CIFAR-10 folder whose test images the parity check runs on. Default: the checkpoint's own "
            "data folder (its config's data.data_dir). When that is not readable here, export stops with exit 2 "
            "instead of checking on other images or not at all: pass --data-dir, or --no-verify.",
            show_default=False,
        ),
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Skip the parity check: by default a written model is run as a user runs it (onnxruntime, "
            "torch.jit.load, ...) on {export.PARITY_IMAGES} real test images and kept only when its logits are "
            "within {export.PARITY_TOLERANCE:g} of the checkpoint's (else exit 1, no file). "
            "{export.WEIGHTS_FORMATS:or} is always checked, bit for bit, without images.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Export a checkpoint (EMA weights when it has them, eval mode) and verify the file before keeping it."""
    from resnet_cifar.export import PARITY_TOLERANCE, export_checkpoint
    from resnet_cifar.files import refuse_overwriting

    output = Output(json_mode=json_output)
    with reported_errors(output):
        refuse_overwriting([out], [checkpoint])
        result = export_checkpoint(
            checkpoint,
            out,
            format=format,
            opset=opset,
            verify=not no_verify,
            data_dir=data_dir,
            cache_dir=cache_dir_from_env(os.environ),
        )
    if json_output:
        output.json({"checkpoint": str(checkpoint), **result.to_dict()})
        return
    opset_text = f", opset {result.opset}" if result.opset is not None else ""
    output.line(
        f"wrote {result.path} ({result.format}{opset_text}, {result.weights} weights, "
        f"{result.size_bytes / 1e6:.1f} MB)"
    )
    if result.max_abs_diff is None:
        output.line("not verified (--no-verify)")
    elif result.parity_images == 0:  # weights: checked bit for bit, no images
        output.line("verified: every tensor and the metadata read back unchanged")
    else:
        output.line(
            f"verified on {result.parity_images} real test images: max |logit difference| "
            f"{result.max_abs_diff:.2g} <= {PARITY_TOLERANCE:g}"
        )
