"""Helpers the test modules share (import them as ``from helpers import ...``: pytest puts tests/ on
the path, as conftest.py's folder). Fixtures live in conftest.py; plain functions and constants here."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch

from resnet_cifar.config import TrainConfig, resolve_config
from resnet_cifar.data.types import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CifarSplit
from resnet_cifar.engine.checkpointer import Checkpointer
from resnet_cifar.engine.trainer import EpochRecord
from resnet_cifar.models import resnet18

# ------------------------------------------------------------------------------------- the data

# Real JPEGs per class in conftest's `real_data_root`, the subset most tests read: 5,000 training
# images (a 500-image validation split at the default tenth, 4,500 left to train on) and 1,000 test.
SUBSET_PER_CLASS = {"train": 500, "test": 100}


def link_image_subset(source: Path, root: Path, per_class: dict[str, int]) -> Path:
    """``root``: an image folder of ``source``'s layout holding, per split and class, the first
    ``per_class[split]`` images (by name), linked rather than copied."""
    for split, count in per_class.items():
        for class_dir in sorted((source / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (root / split / class_dir.name / image.name).symlink_to(image)
    return root

# ------------------------------------------------------------------------------------- the CLI

ANSI = re.compile(r"\x1b\[")  # the start of an ANSI escape code: none may reach a pipe


def small_run_flags(
    *, preset: str | None = "smoke", batch_size: int = 64, train: int = 256, val: int = 128, test: int = 128
) -> list[str]:
    """`train`/`sweep` flags for a small real run on the CPU: ResNet-18 with the ImageNet stem
    (cheap at 32 px), ``train`` training images in batches of ``batch_size``."""
    flags = ["--preset", preset] if preset is not None else []
    return [
        *flags, "--depth", "18", "--stem", "imagenet", "--device", "cpu", "--batch-size", str(batch_size),
        "--limit-train", str(train), "--limit-val", str(val), "--limit-test", str(test),
    ]  # fmt: skip


# The smoke preset on 256 training images in batches of 64 (4 steps an epoch), 128 to validate, 128 to test.
SMALL = small_run_flags()
# A sweep's trial: one epoch of the smoke preset on 32 training images at a constant rate (the
# batch size, 16 gives two steps, is left to each test: a flag or a --config setting).
TINY = [
    "--preset", "smoke", "--depth", "18", "--stem", "imagenet", "--device", "cpu", "--schedule", "constant",
    "--limit-train", "32", "--limit-val", "32", "--limit-test", "32", "--epochs", "1",
]  # fmt: skip
LR_SPACE = '["optim.lr"]\ntype = "float"\nlow = 0.01\nhigh = 0.1\nlog = true\n'  # a search space file: the rate alone


def cli(*args: str) -> list[str]:
    """The command line of `resnet-cifar ARGS`, run by this interpreter."""
    return [sys.executable, "-m", "resnet_cifar.cli", *args]


def cli_env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment, with the decoded-image cache at ``cache`` (when given) and ``extra``."""
    env = {**os.environ, **extra}
    if cache is not None:
        env["RESNET_CIFAR_CACHE"] = str(cache)
    return env


def run_cli(
    *args: str, cache: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`resnet-cifar ARGS` in a fresh interpreter, to the end (the timeout only stops a hang)."""
    return subprocess.run(
        cli(*args), capture_output=True, text=True, env=cli_env(cache, **(env or {})), timeout=timeout
    )


def run_in_process(capsys: pytest.CaptureFixture[str] | None, *args: str) -> tuple[int, str, str]:
    """The CLI entry point in this process (no interpreter start-up): exit code, stdout, stderr.
    ``capsys`` None (a module-scoped fixture has none): sys.stdout and sys.stderr are redirected."""
    from resnet_cifar.cli.main import run

    if capsys is not None:
        with pytest.raises(SystemExit) as exit_info:
            run(list(args))
        captured = capsys.readouterr()
        return int(exit_info.value.code), captured.out, captured.err
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        run(list(args))
    return int(exit_info.value.code), out.getvalue(), err.getvalue()


def one_line_error(err: str, *needles: str) -> str:
    """``err`` is one line, ``error: ...``, with every needle in it and no traceback; returns the line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The process exited with ``code`` and said why in one line (see one_line_error)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    return one_line_error(result.stderr, *needles)


def read_until(stream: IO[str], prefix: str) -> str:
    """Read a child's output ``stream`` up to the first line that starts with ``prefix`` and return
    that line: waiting on the child's own account of its state. Fails, showing what was read, when
    the stream ends first (the child exited)."""
    seen = []
    for line in stream:
        if line.startswith(prefix):
            return line
        seen.append(line)
    raise AssertionError(f"no line starting with {prefix!r} before the output ended:\n{''.join(seen)}")


_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80  # <sys/inotify.h>: an entry made in, or renamed into, a folder


def wait_for_path(path: Path, processes: Sequence[subprocess.Popen[Any]], timeout: float = 600) -> None:
    """Block until ``path`` exists, woken by the kernel: an inotify watch on the nearest folder
    that exists reports each entry made or renamed into it, and a pidfd of each of ``processes``
    reports its exit. Fails when one of them exits first (the file will never come) or after
    ``timeout`` seconds, a bound for a hung child, not a pace. Linux only, as the tests that use it."""
    libc = ctypes.CDLL(None, use_errno=True)
    watcher = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
    assert watcher >= 0, os.strerror(ctypes.get_errno())
    exits = [os.pidfd_open(process.pid) for process in processes]
    try:
        give_up = time.monotonic() + timeout
        while True:
            folder = next(parent for parent in path.parents if parent.exists())
            # Watch first, then look: an entry made between the two still wakes the select below.
            libc.inotify_add_watch(watcher, bytes(folder), _IN_CREATE | _IN_MOVED_TO)
            if path.exists():
                return
            ended = [process.args for process in processes if process.poll() is not None]
            assert not ended, f"{path} never appeared: {ended} exited ({[p.returncode for p in processes]})"
            left = give_up - time.monotonic()
            assert left > 0, f"{path} did not appear within {timeout:.0f} s"
            ready, _, _ = select.select([watcher, *exits], [], [], left)
            if watcher in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(watcher, 1 << 16)  # drained; the loop looks again
    finally:
        os.close(watcher)
        for handle in exits:
            os.close(handle)


@contextlib.contextmanager
def http_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) answering with ``handler`` from a thread of
    this process: yields its base URL (``http://127.0.0.1:PORT``), and is shut down after."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    # A short poll interval keeps shutdown() (which waits for the next poll) from adding 0.5 s per use.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# -------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` the way every checkpoint is written: the run folder's
    Checkpointer (which stamps the format unless ``payload`` names one), in the background, waited
    on, so its failure is raised here."""
    checkpointer = Checkpointer(Path(path).parent)
    checkpointer.save([Path(path).name], payload)
    checkpointer.wait()


def smoke_config(data_root: Path, **overrides: Any) -> TrainConfig:
    """The smoke preset on ResNet-18 with the ImageNet stem (32 px images shrink to 8 px at once:
    cheap on a CPU), reading ``data_root``."""
    return resolve_config(
        preset="smoke", overrides={"data.data_dir": str(data_root), "model.stem": "imagenet", **overrides}
    )


def random_resnet18(seed: int = 0, *, random_batch_norm: bool = False, **kwargs: Any) -> torch.nn.Module:
    """A ResNet-18 (ImageNet stem) with the random weights of ``seed``; ``random_batch_norm`` also
    randomizes the batch-norm statistics, so the eval-mode model is not close to the identity per
    layer, and predictions and confidences vary (two seeds give clearly different answers)."""
    torch.manual_seed(seed)
    model = resnet18(num_classes=10, stem="imagenet", **kwargs)
    if random_batch_norm:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def write_checkpoint(
    path: Path, cfg: TrainConfig, model: torch.nn.Module, ema: dict[str, Any] | None = None, *, epoch: int = 3,
    **extra: Any,
) -> Path:
    """A checkpoint in the trainer's format (version 1) of ``model`` trained with ``cfg``, as
    inference reads it: weights, the EMA's state dict (an AveragedModel's), classes, config, epoch,
    and ``extra`` keys."""
    payload = {
        "format": 1,
        "model": model.state_dict(),
        "ema": ema,
        "classes": list(CIFAR10_CLASSES),
        "config": cfg.to_dict(),
        "epoch": epoch,
        **extra,
    }
    save_checkpoint(path, payload)
    return path


def small_config(data_root: Path, cache: Path, out: Path, **overrides: Any) -> TrainConfig:
    """An in-process run of the smoke preset on the CPU: ResNet-18 (ImageNet stem), 256 training
    images in batches of 64 (4 steps an epoch), 128 to validate and 128 to test, 2 epochs."""
    settings = {
        "data.data_dir": data_root,
        "data.cache_dir": cache,
        "data.batch_size": 64,
        "data.eval_batch_size": 256,
        "data.limit_train": 256,
        "data.limit_val": 128,
        "data.limit_test": 128,
        "data.loader": "tensor",
        "model.depth": 18,
        "model.stem": "imagenet",
        "optim.epochs": 2,
        "precision.device": "cpu",
        "run.out_dir": out,
    }
    settings.update(overrides)
    return resolve_config(preset="smoke", overrides=settings)


# The EpochRecord fields that are wall-clock measurements: they differ between any two runs, even
# a run and its bit-exact resume.
TIMING_FIELDS = ("images_per_sec", "epoch_seconds", "eval_seconds", "checkpoint_seconds")


def without_timing(history: Sequence[EpochRecord]) -> list[dict[str, Any]]:
    """A run's epoch records as dicts, the wall-clock measurements left out: what a bit-exact
    resume must reproduce."""
    return [
        {key: value for key, value in record.to_dict().items() if key not in TIMING_FIELDS} for record in history
    ]


# ------------------------------------------------------------------ data subsets and loader output

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
SHIFTS = range(-4, 5)  # the offsets of RandomCrop(32, padding=4)


def random_subset(split: CifarSplit, count: int, seed: int = 0) -> CifarSplit:
    """``count`` images of ``split`` drawn at random (by ``seed``), with their labels and classes."""
    chosen = np.random.default_rng(seed).choice(len(split), size=count, replace=False)
    return CifarSplit(split.images[chosen], split.labels[chosen], split.classes)


def identity_split(split: CifarSplit, count: int, seed: int = 0) -> CifarSplit:
    """``count`` real images whose label is their own index, so every output names its source."""
    chosen = np.random.default_rng(seed).choice(len(split), size=count, replace=False)
    names = tuple(f"sample{index}" for index in range(count))
    return CifarSplit(split.images[chosen], np.arange(count, dtype=np.int64), names)


def normalize_by_hand(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float32 [N, 3, 32, 32], (x / 255 - mean) / std, computed in float64
    independently of the library."""
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255.0
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((images - mean) / std).float()


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalized NCHW floats back to 0..255 pixel values, NHWC, still as floats."""
    pixels = (images.float().cpu() * STD + MEAN) * 255.0
    return pixels.permute(0, 2, 3, 1)


def collect(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's whole epoch: all images and all labels, each concatenated."""
    batches = list(loader)
    return torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])


def channel_mean_and_std(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's mean and standard deviation over a loader's epoch, accumulated in float64."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _ in loader:
        total += images.double().sum(dim=(0, 2, 3))
        squares += images.double().square().sum(dim=(0, 2, 3))
        count += images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean, (squares / count - mean.square()).sqrt()


def recover_augmentation(
    source: np.ndarray, images: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output: the (shift_y, shift_x, flip) whose crop of its source fits best, and the error.

    The candidates are built independently of the loader: the source zero-padded by 4 pixels
    (torchvision RandomCrop(32, padding=4)), cut at each of the 9 x 9 offsets, optionally
    mirrored. The best candidate minimizes the squared difference of the R+G+B sums, found
    for all 162 candidates at once as ||window||^2 - 2 <window, output> + ||output||^2 with
    grouped convolutions; its error is then measured exactly, as the mean absolute RGB
    difference in pixel units (0 for a perfect crop).
    """
    conv2d = torch.nn.functional.conv2d
    count = len(labels)
    outputs = denormalize(images)  # [n, 32, 32, 3], 0..255
    padded = torch.from_numpy(np.pad(source[labels.cpu().numpy()], ((0, 0), (4, 4), (4, 4), (0, 0)))).float()
    padded_gray = padded.sum(dim=3).unsqueeze(0) / 765.0  # [1, n, 40, 40]
    output_gray = outputs.sum(dim=3) / 765.0
    ones = torch.ones(count, 1, 32, 32)
    window_energy = conv2d(padded_gray.square(), ones, groups=count)[0]  # [n, 9, 9]
    distances = []
    # A mirrored crop equals the output exactly when the crop equals the mirrored output.
    for target in (output_gray, output_gray.flip(-1)):
        correlation = conv2d(padded_gray, target.unsqueeze(1), groups=count)[0]
        distances.append(window_energy - 2 * correlation + target.square().sum(dim=(1, 2)).view(-1, 1, 1))
    best = torch.stack(distances, dim=-1).flatten(1).argmin(dim=1)  # index of (row, column, flip)
    row, column, flip = best // 18, best % 18 // 2, best % 2 == 1
    windows = padded.unfold(1, 32, 1).unfold(2, 32, 1)  # [n, 9, 9, 3, 32, 32], a view
    chosen = windows[torch.arange(count), row, column].permute(0, 2, 3, 1)  # [n, 32, 32, 3]
    chosen = torch.where(flip.view(-1, 1, 1, 1), chosen.flip(2), chosen)
    error = (chosen - outputs).abs().mean(dim=(1, 2, 3))
    return (row - 4).numpy(), (column - 4).numpy(), flip.numpy(), error.numpy()


def zeroed_pixels(images: torch.Tensor) -> torch.Tensor:
    """bool [n, 32, 32]: pixels whose every channel is exactly zero (the mean, once normalized).

    Never true of an unerased pixel: 0 would need pixel / 255 == mean in all three channels,
    and the crop's black padding normalizes to -mean / std, not 0.
    """
    return (images.float() == 0).all(dim=1)


def drop_file_permission_override() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the
    bounding set (prctl PR_CAPBSET_DROP = 24), so the exec'd program, root or not, obeys modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def without_calibration(summary: dict[str, Any]) -> dict[str, Any]:
    """``train --json``'s summary as result.json records it: the CLI calibrates best.pt after the
    run's record is written and adds that step's figures (``temperature_scaling``) to what it prints."""
    return {key: value for key, value in summary.items() if key != "temperature_scaling"}


# ------------------------------------------------------------------- the CLI in this process, isolated

# What a fresh interpreter does with warnings (Python's default filters, -W not given): the classes
# it hides; every other warning is printed on stderr.
_HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    """The process-wide state a command may change (environment, working folder, signal handlers,
    torch's thread count, determinism flags and random generators, ``random``'s and numpy's
    generators), put back as it was afterwards, so in-process commands leave no trace."""
    import random
    import signal as signal_module

    environ = dict(os.environ)
    cwd = os.getcwd()
    handlers = {signum: signal_module.getsignal(signum) for signum in (signal_module.SIGINT, signal_module.SIGTERM)}
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        for signum, handler in handlers.items():
            signal_module.signal(signum, handler)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])


def run_cli_in_process(
    capsys: pytest.CaptureFixture[str] | None, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`resnet-cifar ARGS` as ``run_cli`` runs it, but in this process (no interpreter start-up: ~2.5 s
    of CPU less), for tests that are not about the process itself: ``env`` added to the environment
    and ``cwd`` entered for the command only, the process state restored after it
    (_process_state_restored), and the warnings a fresh interpreter would print appended to stderr,
    so a one-line-error check is as strict as on a child's stderr. Returns what ``run_cli`` returns.
    ``capsys`` None (a module-scoped fixture has none): the output is caught by redirecting
    sys.stdout and sys.stderr instead."""
    with _process_state_restored(), warnings_as_a_fresh_interpreter_prints() as shown:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        code, out, err = run_in_process(capsys, *args)
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in shown)
    return subprocess.CompletedProcess(["resnet-cifar", *args], code, out, err)


@contextlib.contextmanager
def warnings_as_a_fresh_interpreter_prints() -> Iterator[list[Any]]:
    """Record (instead of pytest) the warnings a fresh interpreter would print: its default filters."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in _HIDDEN_BY_DEFAULT:
            warnings.simplefilter("ignore", category)
        yield shown


# ------------------------------------------------------------- a child and an in-process command at once


def drain(stream: IO[str]) -> Callable[[], str]:
    """Read the rest of a child's output ``stream`` in a thread, so the child never blocks on a full
    pipe while this process is busy (running a command in-process beside it); returns a function
    that waits for the stream's end and gives what was read."""
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(stream.read()), daemon=True)
    reader.start()

    def rest() -> str:
        reader.join()
        return "".join(chunks)

    return rest


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread in this process while the block runs (an in-process worker sharing the
    cores with a child that has OMP_NUM_THREADS=1: more threads would spin, not work), then as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
