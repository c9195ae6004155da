"""From a trained checkpoint to answers: rebuild the model, evaluate it on a split, classify image files.

This is the library behind ``resnet-cifar eval`` and ``resnet-cifar predict`` (and the report and
export that build on them); nothing here prints. It sits above the engine: the model is built by
the engine's ``build_model`` and its precision decided by the engine's ``run_precision``, the
functions training uses, so a checkpoint is rebuilt exactly as it was trained.

The checkpoint is the trainer's, read through the engine's checkpointer
(``read_trained_checkpoint``, engine/checkpointer.py, which owns the format and its checks) with
``weights_only=True``, so a file that would run code is refused, never run.

Choices, and why:

- **EMA weights win.** When the checkpoint has them they are what the trainer validated and
  tested (``Trainer._evaluate`` uses the EMA model), so they are what ``eval`` reports
  (``select_weights`` in engine/checkpointer.py).
- **No pretrained source is touched.** The architecture comes from ``config["model"]`` (depth,
  stem, dropout; ``num_classes`` = number of checkpoint classes) and every weight from the file,
  so evaluation never downloads or reads ImageNet weights.
- **The val split is the trainer's.** ``resnet_cifar.data.validation_split``, the function
  ``build_loaders`` calls, so ``eval --split val`` sees the very images (in the same order) that training validated on.
  ``limit`` *replaces* the trainer's ``limit_val`` (it is applied to the whole val split, with
  the same seed), so a limit equal to ``limit_val`` gives the trainer's val again and a limit
  at least the size of the val split gives all of it. ``--split test`` is the whole test split
  unless ``limit`` is given; the trainer's ``limit_test`` (a quick-run knob for its final
  report) is not applied.
- **Precision follows the checkpoint, per device.** AMP and channels_last are decided by the
  checkpoint's precision section for the device that evaluates (``use_amp``/``use_channels_last``);
  an AMP dtype that device cannot run (fp16 on a CPU, bf16 on a GPU without it) falls back to
  float32, which is never less accurate, rather than failing an evaluation.
- **Images for predict** are read with Pillow, turned upright (EXIF orientation), flattened onto
  white when they have transparency, converted to RGB and resized to 32 x 32 as a whole (no
  crop, so a very wide image is squashed) with ``Image.Resampling.LANCZOS``. Pillow widens every
  filter but NEAREST by the reduction factor, so a downscale is antialiased, and its docs rank
  Lanczos first for downscaling quality. They are then normalized by the same code as the data
  loader (a ``TensorLoader`` over them), so predict sees exactly what evaluation sees.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnet_cifar.choices.corruptions import SEVERITIES, parse_severities, select_corruptions
from resnet_cifar.config import DataConfig, PrecisionConfig
from resnet_cifar.data import validation_split
from resnet_cifar.data.load import load_cifar10
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.split import limit_split
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import IMAGE_SHAPE, CifarSplit, CifarSplits
from resnet_cifar.engine.build import build_model, run_precision
from resnet_cifar.engine.checkpointer import TrainedCheckpoint, read_trained_checkpoint, store_temperature
from resnet_cifar.engine.precision import Precision, select_device
from resnet_cifar.engine.step import build_loss
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation.evaluate import EvalResult, evaluate, predict_logits
from resnet_cifar.evaluation.robustness import RobustnessResult, evaluate_robustness
from resnet_cifar.evaluation.temperature import TemperatureFit, calibration_figures, fit_temperature
from resnet_cifar.evaluation.plots import plot_confusion_matrix, write_confusion_csv, write_metrics_json
from resnet_cifar.models import resize_batch
from resnet_cifar.files import first_line

__all__ = [
    "EVAL_SPLITS",
    "CalibrateOutcome",
    "calibrate_checkpoint",
    "EvalOutcome",
    "ImagePrediction",
    "TrainedModel",
    "data_record",
    "default_eval_dir",
    "eval_precision",
    "evaluate_checkpoint",
    "evaluate_split",
    "eval_subset",
    "load_eval_split",
    "load_trained_model",
    "predict_files",
    "read_eval_data",
    "read_image_file",
    "write_eval_files",
]

EVAL_SPLITS = ("test", "val")
# A good antialiasing filter for the (usually large) downscale to 32 x 32; see the module notes.
RESAMPLE_FILTER_NAME = "LANCZOS"
METRICS_FILE = "metrics.json"
CONFUSION_CSV_FILE = "confusion_matrix.csv"
CONFUSION_PNG_FILE = "confusion_matrix.png"
EVAL_FILES = (METRICS_FILE, CONFUSION_CSV_FILE, CONFUSION_PNG_FILE)  # what write_eval_files writes


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class TrainedModel(TrainedCheckpoint):
    """A model rebuilt from a checkpoint (what TrainedCheckpoint says about it: path, classes,
    config, which weights, epoch, starting weights), on its device in eval mode, with its precision."""

    model: nn.Module
    precision: Precision

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def batch_dtype(self) -> torch.dtype:
        """The dtype batches are built in: the autocast dtype (as in training), else float32."""
        return self.precision.amp_dtype or torch.float32

    def resize(self, images: Tensor) -> Tensor:
        """What the trainer does to a batch before the model: the --image-size resize, if any."""
        return resize_batch(images, self.config.model.image_size)

    def loader(self, data: CifarSplit, *, batch_size: int, seed: int = 0) -> TensorLoader:
        """An evaluation loader over ``data`` for this model: every image once, in order, on its
        device, normalized as in training, in its batch dtype and memory format."""
        spec = LoaderSpec(
            batch_size=batch_size,
            train=False,
            seed=seed,
            device=self.precision.device,
            dtype=self.batch_dtype,
            channels_last=self.precision.channels_last,
        )
        return TensorLoader(data, spec)


def eval_precision(cfg: PrecisionConfig, device: torch.device) -> Precision:
    """The checkpoint's precision on ``device``: as training decides it (``run_precision``), except
    that an AMP dtype the device cannot run (fp16 on the CPU, bf16 on a GPU without it) falls back
    to float32 instead of failing; for inference that only costs speed, never accuracy."""
    return run_precision(cfg, device, fp32_fallback=True)


def load_trained_model(path: Path, *, device: str = "auto") -> TrainedModel:
    """Rebuild the checkpoint's model from its config and weights, on ``device``, in eval mode.

    Raises UsageError for a missing file or an unusable device, DataError for a file that is not
    a checkpoint of this project (including a pickle that would run code, refused unread) or
    whose weights do not fit the architecture its config names.
    """
    saved, state = read_trained_checkpoint(Path(path))
    # Only the architecture: no pretrained source is read, every weight comes from the file.
    model, _ = build_model(saved.config, len(saved.classes), load_weights=False)
    saved.load_into(model, state)
    precision = eval_precision(saved.config.precision, select_device(device))
    model = model.to(precision.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.eval()
    return TrainedModel(**vars(saved), model=model, precision=precision)


# ----------------------------------------------------------------------------- evaluation


def _check_request(
    *, split: str, limit: int | None, data_dir: Path | None, batch_size: int | None = None
) -> None:
    """The cheap checks of an evaluation request, made before anything is loaded."""
    if split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be positive, got {limit}")
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")


def load_eval_split(
    data_cfg: DataConfig,
    split: str,
    *,
    data_dir: Path | None = None,
    limit: int | None = None,
    cache_dir: Path | None = None,
) -> CifarSplit:
    """The images ``eval`` scores: ``"test"`` or the trainer's ``"val"`` (see the module notes).

    ``data_dir`` replaces the config's data folder; ``limit`` takes a stratified subset seeded
    with ``data_cfg.seed`` (for val it replaces ``limit_val``). ``cache_dir`` is the decoded
    image-folder cache (None: decode without one).
    """
    _check_request(split=split, limit=limit, data_dir=data_dir)
    splits = read_eval_data(data_cfg, data_dir=data_dir, cache_dir=cache_dir)
    return eval_subset(splits, data_cfg, split, limit=limit)


def read_eval_data(data_cfg: DataConfig, *, data_dir: Path | None = None, cache_dir: Path | None = None) -> CifarSplits:
    """The whole data set ``eval`` reads: ``data_dir``, else the checkpoint's data folder."""
    if data_dir is not None:
        root = Path(data_dir)
    else:
        root = data_cfg.data_dir
        if not root.is_dir():
            raise UsageError(f"{root}: the checkpoint's data folder does not exist here; pass --data-dir")
    return load_cifar10(root, verify=data_cfg.verify, cache_dir=cache_dir)


def eval_subset(splits: CifarSplits, data_cfg: DataConfig, split: str, *, limit: int | None = None) -> CifarSplit:
    """``split`` of ``splits`` as ``load_eval_split`` describes it."""
    if split == "test":
        return limit_split(splits.test, limit, data_cfg.seed)
    _, val = validation_split(splits.train, data_cfg, limit_val=limit if limit is not None else data_cfg.limit_val)
    return val


def evaluate_split(
    trained: TrainedModel, data: CifarSplit, *, batch_size: int, tta: bool = False, keep_predictions: bool = False
) -> EvalResult:
    """Score ``trained`` on every image of ``data``: exact coverage, in order, no augmentation.
    ``keep_predictions`` returns each image's predicted class and confidence, in ``data``'s order.

    The loss is the training loss (cross-entropy with the checkpoint's label smoothing), so on
    the val split it is the ``val_loss`` the trainer logged for these weights.
    """
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if tuple(data.classes) != trained.classes:
        raise DataError(
            f"{trained.path} was trained on classes {list(trained.classes)}, but the data has {list(data.classes)}"
        )
    return evaluate(
        trained.model,
        trained.loader(data, batch_size=batch_size, seed=trained.config.data.seed),
        num_classes=trained.num_classes,
        autocast=trained.precision.autocast,
        tta=tta,
        loss_fn=build_loss(trained.config.optim.label_smoothing),
        resize=trained.resize,
        keep_predictions=keep_predictions,
        temperature=trained.temperature or 1.0,
    )


def temperature_scaling(trained: TrainedModel, result: EvalResult, data: CifarSplit) -> dict[str, Any] | None:
    """The checkpoint's temperature and what it does on the evaluated images: NLL, ECE and the
    reliability bins before (T = 1) and after (the accuracy is the same); None when it has none."""
    if trained.temperature is None or result.logits is None:
        return None
    labels = torch.from_numpy(np.asarray(data.labels))
    return {
        "temperature": trained.temperature,
        "fitted_on": "val",
        "before": calibration_figures(result.logits, labels).to_dict(),
        "after": calibration_figures(result.logits, labels, trained.temperature).to_dict(),
    }


@dataclass(frozen=True)
class CalibrateOutcome:
    """What ``calibrate_checkpoint`` fitted and stored."""

    checkpoint: Path
    fit: TemperatureFit
    weights: str

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "weights": self.weights, "split": "val", **self.fit.to_dict()}


def calibrate_checkpoint(
    checkpoint: Path,
    *,
    data_dir: Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    cache_dir: Path | None = None,
) -> CalibrateOutcome:
    """Fit the temperature of ``checkpoint``'s model on its run's validation split (never the test
    split) and store it in the checkpoint (``store_temperature``); a temperature stored before is
    replaced, not built on: the fit starts from the raw logits."""
    _check_request(split="val", limit=None, data_dir=data_dir, batch_size=batch_size)
    checkpoint = Path(checkpoint)
    trained = load_trained_model(checkpoint, device=device)
    raw = replace(trained, temperature=None)
    data = load_eval_split(trained.config.data, "val", data_dir=data_dir, cache_dir=cache_dir)
    result = evaluate_split(raw, data, batch_size=batch_size or trained.config.data.eval_batch_size, keep_predictions=True)
    assert result.logits is not None
    fit = fit_temperature(result.logits, torch.from_numpy(np.asarray(data.labels)))
    outcome = CalibrateOutcome(checkpoint=checkpoint, fit=fit, weights=trained.weights)
    store_temperature(checkpoint, {**outcome.to_dict(), "checkpoint": checkpoint.name})
    return outcome


def data_record(trained: TrainedCheckpoint, splits: CifarSplits) -> dict[str, Any]:
    """Which data an evaluation read, and whether it is the data the checkpoint was trained on:
    ``data_dir`` (absolute), ``data_matches_training`` (None: the checkpoint records no
    fingerprint) and, when it does not match, ``data_note`` saying so in one line."""
    fingerprint = splits.fingerprint() if trained.data_fingerprint is not None else None
    matches = None if fingerprint is None else fingerprint == trained.data_fingerprint
    record: dict[str, Any] = {"data_dir": str(Path(splits.root).absolute()), "data_matches_training": matches}
    if matches is False:
        record["data_note"] = (
            f"the data in {record['data_dir']} differs from the data {trained.path.name} was trained on "
            f"(fingerprint {str(fingerprint)[:12]}, the checkpoint's {str(trained.data_fingerprint)[:12]})"
        )
    return record


def default_eval_dir(checkpoint: Path, split: str) -> Path:
    """``eval-<split>`` beside the checkpoint."""
    return Path(checkpoint).parent / f"eval-{split}"


@dataclass(frozen=True)
class EvalOutcome:
    """What ``evaluate_checkpoint`` measured and wrote. ``report`` is the metrics.json content;
    ``trained`` and ``data`` (the images scored, in the order of ``result.predictions``) are what
    the HTML report needs beyond it."""

    result: EvalResult
    report: dict[str, Any]
    classes: tuple[str, ...]
    out_dir: Path
    files: tuple[Path, ...]
    trained: TrainedModel | None = None
    data: CifarSplit | None = None
    robustness: RobustnessResult | None = None


def write_eval_files(report: Mapping[str, Any], classes: Sequence[str], out_dir: Path) -> tuple[Path, ...]:
    """metrics.json, confusion_matrix.csv and confusion_matrix.png (counts and row-normalized).

    Each file is written atomically; the heatmap comes last because it is the slowest.
    """
    out_dir = Path(out_dir)
    matrix = np.asarray(report["confusion_matrix"], dtype=np.int64)
    paths = tuple(out_dir / name for name in EVAL_FILES)
    write_metrics_json(report, paths[0])
    write_confusion_csv(matrix, list(classes), paths[1])
    plot_confusion_matrix(matrix, list(classes), paths[2])
    return paths


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    split: str = "test",
    data_dir: Path | None = None,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    tta: bool = False,
    out_dir: Path | None = None,
    cache_dir: Path | None = None,
    corruptions: str | None = None,
    severities: str | None = None,
) -> EvalOutcome:
    """Load ``checkpoint``, score it on ``split`` and write the report files into ``out_dir``
    (default: ``eval-<split>`` beside the checkpoint). ``batch_size`` defaults to the
    checkpoint's ``data.eval_batch_size``. ``corruptions`` (``all``, families or names, see
    choices/corruptions.py) also scores the split under those CIFAR-10-C corruptions at
    ``severities`` (default 1-5) into ``report["robustness"]``. Arguments are checked before
    anything heavy runs."""
    _check_request(split=split, limit=limit, data_dir=data_dir, batch_size=batch_size)
    robustness_request = _robustness_request(corruptions, severities)
    checkpoint = Path(checkpoint)
    trained = load_trained_model(checkpoint, device=device)
    splits = read_eval_data(trained.config.data, data_dir=data_dir, cache_dir=cache_dir)
    data = eval_subset(splits, trained.config.data, split, limit=limit)
    batch_size = batch_size or trained.config.data.eval_batch_size
    result = evaluate_split(trained, data, batch_size=batch_size, tta=tta, keep_predictions=True)
    # With TTA, the plain accuracy too, so a reader sees what the mirrored pass buys.
    plain_accuracy = evaluate_split(trained, data, batch_size=batch_size).accuracy if tta else None
    target = Path(out_dir) if out_dir is not None else default_eval_dir(checkpoint, split)
    amp_dtype = trained.precision.amp_dtype
    report = {
        **result.to_dict(list(trained.classes)),
        "split": split,
        "checkpoint": str(checkpoint),
        "weights": trained.weights,
        "epoch": trained.epoch,
        "pretrained": trained.pretrained,
        "tta": tta,
        "accuracy_without_tta": plain_accuracy,
        "limit": limit,
        "classes": list(trained.classes),
        "device": str(trained.precision.device),
        "amp_dtype": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "temperature_scaling": temperature_scaling(trained, result, data),
        **data_record(trained, splits),
    }
    robustness = None
    if robustness_request is not None:
        robustness = _score_corrupted(trained, data, robustness_request, batch_size, tta, result.accuracy)
        report["robustness"] = robustness.to_dict()
    files = write_eval_files(report, trained.classes, target)
    return EvalOutcome(
        result=result,
        report=report,
        classes=trained.classes,
        out_dir=target,
        files=files,
        trained=trained,
        data=data,
        robustness=robustness,
    )


@dataclass(frozen=True)
class _RobustnessRequest:
    names: tuple[str, ...]
    severities: tuple[int, ...]
    left_out: dict[str, str]


def _robustness_request(corruptions: str | None, severities: str | None) -> _RobustnessRequest | None:
    """--corruptions/--severities checked (UsageError) before anything is loaded; None: not asked."""
    if corruptions is None:
        if severities is not None:
            raise UsageError("--severities needs --corruptions")
        return None
    try:
        names, skipped = select_corruptions(corruptions)
        chosen = parse_severities(severities) if severities is not None else SEVERITIES
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not names:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise UsageError(f"--corruptions {corruptions}: none of these can be computed here ({reasons})")
    return _RobustnessRequest(names, chosen, skipped)


def _score_corrupted(
    trained: TrainedModel, data: CifarSplit, request: _RobustnessRequest, batch_size: int, tta: bool, clean: float
) -> RobustnessResult:
    """The split under each requested corruption, scored as the clean split was (same TTA)."""
    return evaluate_robustness(
        data,
        lambda corrupted: evaluate_split(trained, corrupted, batch_size=batch_size, tta=tta).accuracy,
        names=request.names,
        severities=request.severities,
        clean_accuracy=clean,
        device=trained.precision.device,
        seed=trained.config.data.seed,
        batch_size=batch_size,
        left_out=request.left_out,
    )


# ----------------------------------------------------------------------------- predict


def read_image_file(path: Path) -> np.ndarray:
    """One image file of any size and mode as uint8 ``[32, 32, 3]`` RGB (see the module notes).

    Raises UsageError when the path is missing or not a file, DataError when Pillow cannot decode it.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such image file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns (on stderr) between MAX_IMAGE_PIXELS and twice that, then decodes
            # gigabytes anyway: made an error, so both sizes are one refusal line below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: {_bomb_refusal(error, Image.MAX_IMAGE_PIXELS)}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: not a readable image ({first_line(error)})") from None
    try:
        with opened:
            image = ImageOps.exif_transpose(opened)
            image.load()  # decode now, inside the try: Image.open only reads the header
            image = _eight_bit(image, path)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels hold arbitrary (often black) colour; show them on white.
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            rgb = image.convert("RGB")
            height, width = IMAGE_SHAPE[:2]
            resized = rgb.resize((width, height), resample=getattr(Image.Resampling, RESAMPLE_FILTER_NAME))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not a readable image ({first_line(error)})") from None
    return np.array(resized, dtype=np.uint8).reshape(IMAGE_SHAPE)


# Pillow's high-bit-depth modes: what each value range means. 16-bit integers (I;16*, and mode I
# from a PNG, whose samples are at most 16 bits) span 0..65535; Pillow's own convert("RGB") clips
# them at 255 instead (a 16-bit photo comes out white). Float (F) and 32-bit integer (I) images
# carry no range a reader can know (0..1? 0..255? HDR?): refused, never guessed.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _eight_bit(image: Any, path: Path) -> Any:
    """``image`` as 8 bits per sample, scaled from its real range; DataError naming the mode when
    that range is not known."""
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        samples = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16).astype(np.uint32)
        if samples.size and int(samples.max()) > 65535:
            raise DataError(f"{path}: a mode {image.mode} image with values over 65535 has no known range")
        # 0..65535 onto 0..255, rounded: 65535 / 257 = 255 exactly.
        return Image.fromarray(((samples + 128) // 257).astype(np.uint8), mode="L")
    if image.mode in ("I", "F") or image.mode.startswith(("I;", "F;")):
        kind = "floating-point" if image.mode.startswith("F") else "32-bit integer"
        raise DataError(
            f"{path}: a {kind} image (mode {image.mode}) has no known value range; convert it to 8 or 16 bits first"
        )
    return image


def _bomb_refusal(error: Exception, limit: int | None) -> str:
    """Why an image over Pillow's pixel limit is refused, with its size from Pillow's message."""
    size = re.search(r"\((\d+) pixels\)", str(error))
    stated = f"{int(size.group(1)):,} pixels" if size else "its size"
    limit_text = f"{limit or 0:,}"
    return f"refusing to decode: {stated} is over Pillow's limit of {limit_text} pixels (a possible decompression bomb)"


@dataclass(frozen=True)
class ImagePrediction:
    """The ``top`` classes of one image, most probable first: ``(class name, probability)`` pairs."""

    image: Path
    top: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "top": [{"class": name, "probability": probability} for name, probability in self.top],
        }


def predict_files(
    trained: TrainedModel,
    images: Sequence[Path],
    *,
    top_k: int = 3,
    batch_size: int | None = None,
    tta: bool = False,
) -> list[ImagePrediction]:
    """Classify image files: the ``top_k`` most probable classes (softmax) of each, in input order.

    Every file is read before the model runs, so a bad file fails the call before any result.
    """
    if not images:
        raise UsageError("give at least one image file")
    if not 1 <= top_k <= trained.num_classes:
        raise UsageError(f"--top-k must be in 1..{trained.num_classes}, got {top_k}")
    batch_size = batch_size or trained.config.data.eval_batch_size
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    paths = [Path(image) for image in images]
    pixels = np.stack([read_image_file(path) for path in paths])
    # Labels are unused; the loader wants some. It normalizes exactly as evaluation does.
    split = CifarSplit(pixels, np.zeros(len(paths), dtype=np.int64), trained.classes)
    probabilities: list[Tensor] = []
    with torch.inference_mode():
        for batch, _ in trained.loader(split, batch_size=batch_size):
            batch = trained.resize(batch)
            logits = predict_logits(trained.model, batch, autocast=trained.precision.autocast, tta=tta)
            logits = logits / (trained.temperature or 1.0)  # the calibrated probabilities, when fitted
            probabilities.append(torch.softmax(logits, dim=1).cpu())
    top_values, top_indices = torch.cat(probabilities).topk(top_k, dim=1)
    return [
        ImagePrediction(
            image=path,
            top=tuple((trained.classes[index], probability) for index, probability in zip(indices, values)),
        )
        for path, indices, values in zip(paths, top_indices.tolist(), top_values.tolist())
    ]

