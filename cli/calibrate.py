"""`resnet-cifar calibrate CHECKPOINT`: fit the temperature of a trained checkpoint on its run's
validation split and store it in the checkpoint (resnet_cifar.inference.calibrate_checkpoint).

`train` does the same for best.pt when a run finishes; this command is for checkpoints written
before, or to fit again (the fit starts from the raw logits, never from a stored temperature).
"""

from __future__ import annotations

import os
from typing import Any

from .common import cache_dir_from_env, reported_errors
from .options import CheckpointArgument, CheckpointDataDirOption, DeviceOption, EvalBatchSizeOption, JsonOption
from .render import Output


def calibration_line(fit: dict[str, Any]) -> str:
    """One line: the temperature and the validation NLL and ECE before and after it."""
    before, after = fit["before"], fit["after"]
    return (
        f"temperature {fit['temperature']:.4f} on {fit['count']} val images: NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f} (accuracy unchanged)"
    )


def calibrate_command(
    checkpoint: CheckpointArgument,
    data_dir: CheckpointDataDirOption = None,
    device: DeviceOption = "auto",
    batch_size: EvalBatchSizeOption = None,
    json_output: JsonOption = False,
) -> None:
    """Fit a checkpoint's temperature on its run's validation split and store it in the checkpoint.

    Temperature scaling (Guo et al. 2017): the logits are divided by one temperature, fitted by
    minimising the validation split's negative log-likelihood with LBFGS; the test split is never
    used. eval, predict, report and export use the stored temperature; predictions and accuracy do
    not change, only the probabilities.
    """
    from resnet_cifar.inference import calibrate_checkpoint

    out = Output(json_mode=json_output)
    with reported_errors(out):
        outcome = calibrate_checkpoint(
            checkpoint, data_dir=data_dir, device=device, batch_size=batch_size, cache_dir=cache_dir_from_env(os.environ)
        )
    if json_output:
        out.json(outcome.to_dict())
        return
    out.line(f"{calibration_line(outcome.to_dict())}; stored in {checkpoint}")
