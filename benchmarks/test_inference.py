"""Inference speed of the hand-written ResNet-50 against torchvision's, on CPU, in one run.

Both models compute the same function: torchvision's ResNet-50 gets the cifar stem (3x3 stride-1
conv1, no max-pool) and a copy of our weights, and the outputs are checked equal before timing.
Settings: eval mode, ``torch.inference_mode``, fp32, contiguous 32-pixel inputs, no compile.

A shared CPU makes single timings noisy, so each benchmark interleaves the two models round by
round (pytest-benchmark times one model while its ``setup`` hook runs and times the other) and
compares them round by round (median of per-round ratios, each round against its neighbouring
runs of the other model) as well as by overall medians. The hand-written model must reach at
least 0.97x torchvision's images/s by the per-round measure, in the same run.

A third benchmark runs this model at its best settings (bf16 autocast + channels_last, plus
``torch.compile`` on CUDA), interleaved with torchvision's model at the plain settings above, so
its ratio is to the group's baseline.

Sizes adapt to the device: batch 8 on the CPU, 512 on CUDA (where timings end with a synchronize).

A fourth runs the file ``resnet-cifar export --format onnx`` writes (through the library's
``export_checkpoint``) in onnxruntime's CPU provider, interleaved with the PyTorch eager model
computing the same function (normalization inside, fp32, on the CPU) at the same batch and
thread count. It always runs on the CPU, and the GPU run (benchmarks/gpu_run.sh) leaves it out:
the device has no onnxruntime, and a CPU runtime's figure belongs to a CPU machine.

Run: ``python -m pytest benchmarks/test_inference.py``
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from resnet_cifar.engine import prepare_model, resolve_precision
from resnet_cifar.models import resnet50

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
BATCH_SIZE = int(os.environ.get("RESNET_CIFAR_BENCH_INFER_BATCH", 512 if ON_CUDA else 8))
IMAGE_SIZE = 32
DEFAULT_ROUNDS = 21
ROUNDS = int(os.environ.get("RESNET_CIFAR_BENCH_ROUNDS", DEFAULT_ROUNDS))
WARMUP_ROUNDS = 2
# Judged (asserted) only over at least DEFAULT_ROUNDS interleaved rounds: fewer (the GPU run's dry
# run takes 2) check the plumbing, and their ratio is recorded, not judged.
MIN_SPEED_RATIO = 0.97
# bf16 logits stay this close to fp32's (relative L2 error over the batch).
MAX_BEST_RELATIVE_ERROR = 0.05

Forward = Callable[[torch.Tensor], torch.Tensor]


def synchronize() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


def torchvision_cifar_resnet50() -> nn.Module:
    model = torchvision.models.resnet50(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@pytest.fixture(scope="module")
def models_and_batch() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ours = resnet50().eval().to(DEVICE)
    baseline = torchvision_cifar_resnet50().eval().to(DEVICE)
    baseline.load_state_dict(ours.state_dict())
    images = torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, device=DEVICE)
    with torch.inference_mode():
        ours_out, baseline_out = ours(images), baseline(images)
        # Same kernels on the CPU give identical bits; cuDNN may pick per-call algorithms.
        same = torch.equal(ours_out, baseline_out) if not ON_CUDA else torch.allclose(ours_out, baseline_out, atol=1e-4)
        assert same, "the two models must compute the same function"
        for _ in range(WARMUP_ROUNDS):  # warm-up (allocator, kernel selection) outside any timing
            ours(images)
            baseline(images)
        synchronize()
    return ours, baseline, images


def timed_forward(model: Forward, images: torch.Tensor, seconds: list[float]) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode():
            start = time.perf_counter()
            model(images)
            synchronize()
            seconds.append(time.perf_counter() - start)

    return forward


def run_interleaved(benchmark, measured: Forward, other: Forward, images: torch.Tensor) -> tuple[float, float, float]:
    """Benchmark ``measured`` with ``other`` run between its rounds: O M O M ... O M O.

    pytest-benchmark's ``setup`` runs ``other`` before each timed round (untimed by it), and one
    more ``other`` run closes the sequence, so every ``measured`` run sits between two ``other``
    runs. Returns the median time of each model and the median over rounds of
    ``mean(neighbouring other runs) / measured run``: each round is compared with runs made under
    the same load, so a neighbour's burst of CPU use shifts both sides of that round's ratio.
    """
    measured_seconds: list[float] = []
    other_seconds: list[float] = []
    run_other = timed_forward(other, images, other_seconds)

    benchmark.pedantic(
        timed_forward(measured, images, measured_seconds), setup=run_other, rounds=ROUNDS, iterations=1, warmup_rounds=0
    )
    run_other()
    ratios = [
        (other_seconds[i] + other_seconds[i + 1]) / 2 / measured_seconds[i] for i in range(len(measured_seconds))
    ]
    return statistics.median(measured_seconds), statistics.median(other_seconds), statistics.median(ratios)


def record(
    benchmark,
    median_seconds: float,
    ratio: float,
    ratio_of_medians: float,
    *,
    dtype: str = "float32",
    channels_last: bool = False,
    compile: bool = False,
) -> None:
    benchmark.extra_info.update(
        images_per_sec=round(BATCH_SIZE / median_seconds, 2),
        device=DEVICE.type,
        dtype=dtype,
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
        stem="cifar",
        compile=compile,
        channels_last=channels_last,
        threads=torch.get_num_threads(),
        ours_vs_baseline_speed=round(ratio, 4),
        ours_vs_baseline_ratio_of_medians=round(ratio_of_medians, 4),
    )


@pytest.mark.benchmark(group="inference")
def test_inference_resnet50(benchmark, models_and_batch) -> None:
    ours, baseline, images = models_and_batch
    ours_seconds, baseline_seconds, round_ratio = run_interleaved(benchmark, ours, baseline, images)
    # Speed ratio = our images/s over torchvision's = torchvision's time over ours.
    record(benchmark, ours_seconds, round_ratio, baseline_seconds / ours_seconds)
    assert ROUNDS < DEFAULT_ROUNDS or round_ratio >= MIN_SPEED_RATIO, (
        f"hand-written ResNet-50 runs at {round_ratio:.3f}x torchvision's speed (median of interleaved "
        f"rounds; medians {BATCH_SIZE / ours_seconds:.1f} vs {BATCH_SIZE / baseline_seconds:.1f} img/s)"
    )


@pytest.mark.benchmark(group="inference")
def test_inference_torchvision_resnet50_baseline(benchmark, models_and_batch) -> None:
    ours, baseline, images = models_and_batch
    baseline_seconds, ours_seconds, round_ratio = run_interleaved(benchmark, baseline, ours, images)
    record(benchmark, baseline_seconds, 1 / round_ratio, baseline_seconds / ours_seconds)


def best_settings_forward(ours: nn.Module) -> Forward:
    """Our model at its fastest settings: bf16 autocast, channels_last, and torch.compile on CUDA.
    On the 2-core CPU, compiling the eval graph took ~45 s (cold cache) for ~1.1x in bf16 inference
    (docs/performance.md), not worth a fifth of the suite's time budget there.

    The forward converts its input to channels-last itself (a negligible copy at 32 pixels), so
    both models of a round are handed the same tensor.
    """
    precision = resolve_precision(DEVICE, amp=True, amp_dtype="bf16", channels_last=True)
    # A copy: channels_last converts the module in place, and `ours` stays the plain-settings model.
    model = prepare_model(copy.deepcopy(ours), precision, compile=ON_CUDA)

    def forward(images: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return model(precision.prepare_images(images))

    return forward


@pytest.mark.benchmark(group="inference")
def test_inference_resnet50_best_settings(benchmark, models_and_batch) -> None:
    ours, baseline, images = models_and_batch
    forward = best_settings_forward(ours)
    with torch.inference_mode():
        synchronize()
        start = time.perf_counter()
        best_out = forward(images)  # first call: compilation (CUDA) or kernel selection, untimed below
        synchronize()
        first_seconds = time.perf_counter() - start
        for _ in range(WARMUP_ROUNDS):
            forward(images)
        reference = ours(images)
    error = float(torch.linalg.vector_norm(best_out.float() - reference) / torch.linalg.vector_norm(reference))
    assert error <= MAX_BEST_RELATIVE_ERROR, f"bf16 logits differ from fp32 by {error:.3f} (relative L2)"
    best_seconds, baseline_seconds, round_ratio = run_interleaved(benchmark, forward, baseline, images)
    record(
        benchmark,
        best_seconds,
        round_ratio,
        baseline_seconds / best_seconds,
        dtype="bfloat16",
        channels_last=True,
        compile=ON_CUDA,
    )
    benchmark.extra_info["compile_seconds" if ON_CUDA else "warmup_seconds"] = round(first_seconds, 2)
    benchmark.extra_info["relative_error_vs_fp32"] = round(error, 5)


def onnx_and_eager_forwards(tmp_path, images: torch.Tensor) -> tuple[Forward, Forward, dict[str, object]]:
    """A ResNet-50 checkpoint exported to ONNX by the library, in an onnxruntime CPU session, and the
    same model in PyTorch eager mode behind the same preprocessing (``Preprocessed``), on the CPU."""
    import onnxruntime  # lazily: only this benchmark needs it (the `export` extra)

    from resnet_cifar.config import resolve_config
    from resnet_cifar.data.types import CIFAR10_CLASSES
    from resnet_cifar.engine.checkpointer import Checkpointer
    from resnet_cifar.export import Preprocessed, export_checkpoint

    torch.manual_seed(0)
    model = resnet50().eval()
    config = resolve_config(overrides={"data.data_dir": str(tmp_path), "model.depth": 50, "model.stem": "cifar"})
    checkpoint = tmp_path / "best.pt"
    payload = {"format": 1, "model": model.state_dict(), "ema": None, "classes": list(CIFAR10_CLASSES)}
    writer = Checkpointer(tmp_path)  # the one checkpoint writer
    writer.save([checkpoint.name], {**payload, "config": config.to_dict(), "epoch": 1})
    writer.wait()
    start = time.perf_counter()
    # No parity check here (it needs the real test split); the benchmark checks the outputs below.
    exported = export_checkpoint(checkpoint, tmp_path / "model.onnx", format="onnx", verify=False)
    export_seconds = time.perf_counter() - start

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as the eager model
    session = onnxruntime.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
    eager = Preprocessed(model, None).eval()

    def onnx_forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])

    with torch.inference_mode():
        reference = eager(images)
    difference = float((onnx_forward(images) - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    assert difference <= 1e-4 * scale, f"onnxruntime's logits differ from eager by {difference:.3g}"
    for _ in range(WARMUP_ROUNDS):
        onnx_forward(images)
    info = {
        "onnxruntime": onnxruntime.__version__,
        "opset": exported.opset,
        "export_seconds": round(export_seconds, 2),
        "max_abs_diff_vs_eager": difference,
    }
    return onnx_forward, eager, info


@pytest.mark.benchmark(group="inference")
def test_inference_onnxruntime_cpu(benchmark, tmp_path) -> None:
    # Images in [0, 1], as an export takes them; on the CPU whatever DEVICE is.
    images = torch.rand(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    onnx_forward, eager, info = onnx_and_eager_forwards(tmp_path, images)
    measured: list[float] = []
    eager_seconds: list[float] = []
    run_eager = timed_forward(eager, images, eager_seconds)
    benchmark.pedantic(
        timed_forward(onnx_forward, images, measured), setup=run_eager, rounds=ROUNDS, iterations=1, warmup_rounds=0
    )
    run_eager()
    ratios = [(eager_seconds[i] + eager_seconds[i + 1]) / 2 / measured[i] for i in range(len(measured))]
    onnx_median, eager_median = statistics.median(measured), statistics.median(eager_seconds)
    benchmark.extra_info.update(
        images_per_sec=round(BATCH_SIZE / onnx_median, 2),
        eager_images_per_sec=round(BATCH_SIZE / eager_median, 2),
        onnxruntime_vs_eager_speed=round(statistics.median(ratios), 4),
        onnxruntime_vs_eager_ratio_of_medians=round(eager_median / onnx_median, 4),
        device="cpu",
        dtype="float32",
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
        stem="cifar",
        compile=False,
        channels_last=False,
        threads=torch.get_num_threads(),
        **info,
    )
