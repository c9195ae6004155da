"""A data loader built on NVIDIA DALI, interchangeable with TensorLoader.

Two sources: a CifarSplit already in memory (fed through fn.external_source) or an image
folder of JPEG/PNG files (fn.readers.file + fn.decoders.image, decoded on the GPU when the
device is CUDA). Either way the augmentation is fn.slice (the random crop: a 32 x 32 window
moved -4..4 pixels, zero outside the image) then fn.crop_mirror_normalize (flip, normalize,
layout, dtype). Cutout is applied to DALI's output batch, on the device, by the very torch
op TensorLoader uses (apply_cutout: one multiply by a 0/1 mask). That is the simplest choice
and identical by construction; fn.erase fed per-sample anchors would be a second
implementation of the same one elementwise pass over a batch already in memory.

The randomness is not DALI's: the loader executes the same epoch plan as TensorLoader
(resnet_cifar.data.epoch_plan: order, shards, crop offsets, flips, cutout squares, all from the
seed and epoch), fed to DALI as per-sample arguments, and reads its settings from the same
LoaderSpec. The one exception is a per-sample policy (`--augment`): DALI's own
nvidia.dali.auto_aug runs it (on the GPU on CUDA), with torchvision's op set and ranges
(resnet_cifar.data.augment.dali), and draws its choices with DALI's random operators seeded from
(seed, epoch, shard). Mixup/cutmix come from the plan and are applied to the output batch by the
same torch code as in TensorLoader (apply_mix), like cutout.
So an epoch is reproducible from (seed, epoch, shard) alone, whatever ran before, and both
loaders yield the same batches for the same seed. A fresh pipeline is built per epoch (about
10 ms from memory, a few hundred ms for a 50k-file folder) so an abandoned epoch never leaks
prefetched batches into the next.

DALI is imported only when a DaliLoader is constructed: everything else works without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnet_cifar.data.augment import apply_cutout, apply_mix
from resnet_cifar.data.augment.dali import apply_dali_policy
from resnet_cifar.data.epoch_plan import DALI_PIPELINE_STREAM, DALI_POLICY_STREAM, EpochPlan, PlannedLoader, derive_seed
from resnet_cifar.data.loader_spec import Batch, LoaderSpec
from resnet_cifar.data.sources import list_image_folder_split
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SHAPE, CifarSplit
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import one_line

DALI_MISSING = "DALI is not installed: pip install nvidia-dali-cuda120"


def dali_available() -> bool:
    """Whether DALI and its PyTorch plugin (which the loader needs) import here. Never raises."""
    try:
        import nvidia.dali  # noqa: F401
        # A half-installed DALI imports without its plugin; `--loader auto` must not pick it then.
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # a broken install (missing CUDA libraries, ...) counts as unavailable
        return False
    return True


def _import_dali() -> SimpleNamespace:
    try:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline, pipeline_def
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    except ImportError:
        raise UsageError(DALI_MISSING) from None
    except Exception as exc:  # installed but unusable: say why, on one line
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise UsageError(f"DALI cannot be imported ({reason})") from None
    return SimpleNamespace(
        fn=fn,
        types=types,
        Pipeline=Pipeline,
        pipeline_def=pipeline_def,
        feed_ndarray=feed_ndarray,
        to_torch_type=to_torch_type,
    )


def _default_num_threads() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@dataclass(frozen=True)
class _Source:
    """What a DaliLoader reads: decoded images in memory, or image files DALI decodes."""

    labels: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]
    images: np.ndarray | None  # uint8 [N, 32, 32, 3]; None for files
    files: list[str] | None  # image paths; None for images in memory


class DaliLoader(PlannedLoader):
    """Iterate (images, labels) batches through a DALI pipeline; same contract as TensorLoader.

    images: normalized [N, 3, 32, 32] in the spec's dtype on its device (channels_last memory
    format when asked, produced directly as HWC by DALI: no copy); labels: int64 [N], or soft
    targets under mixup/cutmix. On CPU the pipeline runs every operator on the CPU; on CUDA it
    augments (and decodes, for folders) on the GPU. `num_threads`: DALI's CPU threads (default:
    the usable cores, at most 8).
    """

    def __init__(self, split: CifarSplit, spec: LoaderSpec, *, num_threads: int | None = None) -> None:
        source = _Source(torch.from_numpy(split.labels), split.classes, images=split.images, files=None)
        self._setup(source, spec, num_threads)

    @classmethod
    def from_image_folder(cls, split_dir: Path, spec: LoaderSpec, *, num_threads: int | None = None) -> DaliLoader:
        """Read SPLIT_DIR/<class>/*.{jpg,jpeg,png} with DALI's file reader and image decoder.

        Labels are the indices of the sorted class folder names, as in read_image_folder_split.
        """
        classes, files, labels = list_image_folder_split(Path(split_dir))
        loader = cls.__new__(cls)
        source = _Source(torch.from_numpy(labels), classes, images=None, files=[str(path) for path in files])
        loader._setup(source, spec, num_threads)
        return loader

    def _setup(self, source: _Source, spec: LoaderSpec, num_threads: int | None) -> None:
        self._dali = _import_dali()
        if spec.device.type not in ("cpu", "cuda"):
            raise UsageError(f"DALI runs on cpu or cuda devices, not {spec.device}")
        if spec.device.type == "cuda" and spec.device.index is None:
            # DALI needs the GPU's number: plain "cuda" is the current one.
            spec = replace(spec, device=torch.device("cuda", torch.cuda.current_device()))
        self._init_plan(spec, len(source.labels), source.classes)
        if num_threads is not None and num_threads < 1:
            raise UsageError(f"num_threads must be at least 1, got {num_threads}")
        self.num_threads = num_threads or _default_num_threads()
        self._source = source

    def __iter__(self) -> Iterator[Batch]:
        epoch, plan = self._next_plan()
        return self._batches(plan, epoch)

    def _batches(self, plan: EpochPlan, epoch: int) -> Iterator[Batch]:
        if self.layout.num_batches == 0:  # an eval shard of a split smaller than the shard count
            return
        device = self.spec.device
        labels = self._source.labels[plan.indices].to(device)
        boxes = plan.cutout.to(device) if plan.cutout is not None else None
        pipeline, outputs = self._build_pipeline(plan, epoch)
        try:
            for batch, (start, stop) in enumerate(self.layout.batch_bounds()):
                try:
                    produced = pipeline.run()
                except RuntimeError as exc:
                    if self._source.files is None:
                        raise  # in-memory data was validated already: not a data problem
                    raise self._decode_error(plan, start, stop, exc) from None
                if "shapes" in outputs:
                    self._check_shapes(produced[outputs["shapes"]], plan, start, stop)
                images = self._to_torch(produced[outputs["images"]], stop - start)
                if boxes is not None:  # on torch's current stream, after the copy out of DALI
                    apply_cutout(images, boxes, start, stop)
                if plan.mix is not None:
                    yield apply_mix(images, labels[start:stop], len(self.classes), plan.mix, batch)
                else:
                    yield images, labels[start:stop]
        finally:
            # Dropping the pipeline (on exhaustion or an abandoned epoch) stops its threads.
            del pipeline

    def _build_pipeline(self, plan: EpochPlan, epoch: int) -> tuple[Any, dict[str, int]]:
        """A fresh pipeline that executes `plan`, and the position of each of its outputs:
        "images", and for a folder "shapes" (each file's size, checked before use)."""
        spec = self.spec
        on_gpu = spec.device.type == "cuda"
        policy = spec.augmentation.policy if spec.train else "none"
        outputs = {"images": 0} if self._source.files is None else {"shapes": 0, "images": 1}

        def graph() -> tuple[Any, ...]:
            # One graph, its nodes made in data-flow order: an operator without a seed of its own
            # takes the next one the pipeline's seed generates, so the order is part of the plan.
            images, shapes = self._read(plan, on_gpu)
            images = self._augment(images, plan, policy, epoch)
            return (images,) if shapes is None else (shapes, images)

        pipeline = self._dali.pipeline_def(
            graph,
            # DALI's auto_aug chooses ops per sample with `if`s on DataNodes.
            enable_conditionals=policy != "none",
            batch_size=spec.batch_size,
            num_threads=self.num_threads,
            device_id=spec.device.index if on_gpu else None,
            seed=derive_seed(spec.seed, epoch, spec.shard_id, DALI_PIPELINE_STREAM),
            prefetch_queue_depth=2,
            # Not the dynamic executor: in DALI 2.4 it can segfault in the image decoder's
            # threads after a corrupt file fails a batch. The classic executor reuses its output
            # buffers, so each batch is copied out (a memcpy; cheap next to the augmentation).
            exec_dynamic=False,
        )()
        pipeline.build()
        return pipeline, outputs

    def _read(self, plan: EpochPlan, on_gpu: bool) -> tuple[Any, Any | None]:
        """Graph nodes: the plan's images in its order (uint8 HWC, on the GPU when the pipeline
        is), and for a folder the shape each file declares (None for images in memory)."""
        fn, types = self._dali.fn, self._dali.types
        order = plan.indices.numpy()
        files = self._source.files
        shapes = None
        if files is None:
            images = fn.external_source(
                source=self._array_source(order, self.layout.batch_bounds()),
                batch=True,
                batch_info=True,
                layout="HWC",
                dtype=types.UINT8,
                ndim=3,
                name="images",
            )
        else:
            encoded, _ = fn.readers.file(
                files=[files[i] for i in order],
                random_shuffle=False,  # the order is the plan's, shuffled already
                pad_last_batch=True,  # the last eval batch repeats a file, trimmed in _to_torch
                name="Reader",
            )
            shapes = fn.peek_image_shape(encoded)
            images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
        if on_gpu and images.device == "cpu":
            images = images.gpu()
        return images, shapes

    def _augment(self, images: Any, plan: EpochPlan, policy: str, epoch: int) -> Any:
        """Graph nodes: the plan's crop (train), the policy on the cropped and flipped image (as in
        the tensor loader), then flip, normalization, layout and dtype in one operator."""
        fn, types, spec = self._dali.fn, self._dali.types, self.spec
        mirror: Any = 0
        if spec.train:
            images, mirror = self._crop(images, plan)
        if policy != "none":
            images = fn.flip(images, horizontal=mirror)
            mirror = 0
            images = apply_dali_policy(
                images,
                policy,
                seed=derive_seed(spec.seed, epoch, spec.shard_id, spec.num_shards, DALI_POLICY_STREAM),
                randaugment_ops=spec.augmentation.randaugment_ops,
                randaugment_magnitude=spec.augmentation.randaugment_magnitude,
            )
        return fn.crop_mirror_normalize(
            images,
            mirror=mirror,
            mean=[255.0 * value for value in CIFAR10_MEAN],
            std=[255.0 * value for value in CIFAR10_STD],
            dtype=types.FLOAT16 if spec.dtype == torch.float16 else types.FLOAT,
            output_layout="HWC" if spec.channels_last else "CHW",
        )

    def _crop(self, images: Any, plan: EpochPlan) -> tuple[Any, Any]:
        """Graph nodes: the images cut at the plan's crop offsets, and the plan's flips (DALI's
        `mirror` flags, applied later)."""
        fn, types = self._dali.fn, self._dali.types
        crop_start, mirror = fn.external_source(
            source=self._augment_source(plan, self.layout.batch_bounds()),
            num_outputs=2,
            batch=True,
            batch_info=True,
            dtype=[types.INT32, types.INT32],
        )
        # Zero outside the image, like RandomCrop's padding: the fill happens on the raw uint8
        # pixels, before normalization.
        images = fn.slice(
            images, start=crop_start, shape=IMAGE_SHAPE[:2], axes=(0, 1), out_of_bounds_policy="pad", fill_values=0
        )
        return images, mirror

    def _array_source(
        self, order: np.ndarray, bounds: Sequence[tuple[int, int]]
    ) -> Callable[[Any], np.ndarray]:
        images = self._source.images
        assert images is not None
        contiguous = not self.spec.train  # eval reads a contiguous range: a view, no gather

        def source(info: Any) -> np.ndarray:
            if info.iteration >= len(bounds):
                raise StopIteration
            start, stop = bounds[info.iteration]
            if contiguous:
                first = int(order[start])
                return images[first : first + stop - start]
            return images[order[start:stop]]

        return source

    def _augment_source(
        self, plan: EpochPlan, bounds: Sequence[tuple[int, int]]
    ) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
        # slice's start is (row, column); the flag is crop_mirror_normalize's `mirror`.
        crop_start = torch.stack([plan.shift_y, plan.shift_x], dim=1).to(torch.int32).numpy()
        mirror = plan.flip.to(torch.int32).numpy()

        def source(info: Any) -> tuple[np.ndarray, np.ndarray]:
            if info.iteration >= len(bounds):
                raise StopIteration
            start, stop = bounds[info.iteration]
            return crop_start[start:stop], mirror[start:stop]

        return source

    def _to_torch(self, images: Any, count: int) -> torch.Tensor:
        """Copy one output batch into a torch tensor on the device (DALI reuses its buffer)."""
        feed_ndarray, device = self._dali.feed_ndarray, self.spec.device
        dense = images.as_tensor()
        tensor = torch.empty(dense.shape(), dtype=self._dali.to_torch_type[dense.dtype], device=device)
        if device.type == "cuda":
            # Copy on torch's current stream so later torch work on it is ordered after the copy.
            feed_ndarray(dense, tensor, cuda_stream=torch.cuda.current_stream(device))
        else:
            feed_ndarray(dense, tensor)
        tensor = tensor[:count]  # a folder's last eval batch is padded to full size
        if self.spec.channels_last:
            # HWC memory viewed as NCHW is exactly torch's channels_last layout: no copy.
            tensor = tensor.permute(0, 3, 1, 2)
        if self.spec.dtype == torch.bfloat16:  # DALI has no bfloat16 output
            tensor = tensor.to(torch.bfloat16)
        return tensor

    def _check_shapes(self, shapes: Any, plan: EpochPlan, start: int, stop: int) -> None:
        heights_widths = shapes.as_array()[: stop - start, :2]
        wrong = np.flatnonzero((heights_widths != IMAGE_SHAPE[:2]).any(axis=1))
        files = self._source.files
        if len(wrong):
            assert files is not None
            position = int(wrong[0])
            path = files[int(plan.indices[start + position])]
            height, width = (int(value) for value in heights_widths[position])
            raise DataError(f"{path}: expected a 32 x 32 image, got {width} x {height}")

    def _decode_error(self, plan: EpochPlan, start: int, stop: int, exc: RuntimeError) -> DataError:
        """A one-line DataError naming the file DALI could not decode (found again with PIL)."""
        reason = one_line(exc)[:300]
        files = self._source.files
        assert files is not None
        # With prefetching, the failure may come from the batch after this one.
        window = plan.indices[start : stop + self.spec.batch_size]
        batch_files = [files[int(index)] for index in window]
        for path in batch_files:
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception as pil_exc:  # whatever PIL raises names the corrupt file
                return DataError(f"{path}: cannot decode image ({pil_exc})")
        return DataError(
            f"{batch_files[0]} .. {batch_files[-1]}: DALI could not decode one of these files ({reason})"
        )
