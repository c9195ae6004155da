"""Odd and hostile inputs, through the `resnet-cifar` entry point on real files (issue 29, items
2-6, 9, 10): class names that look like syntax, a command asked to overwrite its own input,
images of 16 bits or floats, settings files and run files built to explode, a TensorBoard folder
that is not one, and downloads that redirect, loop, stall, trickle or are killed. Each case must
end in one line on stderr with the README's exit code (or succeed, showing names as data), never
a traceback, and leave the inputs as they were.

The commands run in this process (helpers.run_cli_in_process: the same exit codes and stderr,
without ~2.5 s of interpreter start-up each); the lock is held by another process, and the
SIGTERM case runs the download in a child, which the signal ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.config import resolve_config
from resnet_cifar.data.download import ARCHIVE_NAME
from resnet_cifar.engine.checkpointer import LOCK
from resnet_cifar.files import FOLDER_LOCK
from resnet_cifar.models import resnet18

from helpers import assert_one_line_error, run_cli_in_process, save_checkpoint
from test_faults_cli import NO_PROXY

# Names that are syntax somewhere: a dot (report keys), mathtext (matplotlib), ESC and a newline
# (the terminal), Rich markup and HTML. Sorted: the image-folder loader orders classes by name.
ODD_NAMES = sorted(["cat.v2", "$\\evil$", "esc\x1b[31m\nred", "[bold]<i>x&amp;"])
SOURCES = ("cat", "dog", "ship", "frog")
IMAGES_PER_CLASS = 3


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path) -> Path:
    """An image folder whose class folders carry ODD_NAMES (real JPEGs) and a ResNet-18 checkpoint
    (random weights) trained on them, in run/best.pt."""
    root = tmp_path_factory.mktemp("odd")
    for split in ("train", "test"):
        for name, source in zip(ODD_NAMES, SOURCES):
            (root / "data" / split / name).mkdir(parents=True)
            for image in sorted((real_data_root / split / source).iterdir())[:IMAGES_PER_CLASS]:
                shutil.copyfile(image, root / "data" / split / name / image.name)
    cfg = resolve_config(preset="smoke", overrides={"data.data_dir": str(root / "data"), "model.stem": "imagenet"})
    torch.manual_seed(0)
    model = resnet18(num_classes=len(ODD_NAMES), stem="imagenet")
    payload = {"format": 1, "model": model.state_dict(), "ema": None, "classes": ODD_NAMES, "config": cfg.to_dict(), "epoch": 1}
    save_checkpoint(root / "run" / "best.pt", payload)
    return root


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {"RESNET_CIFAR_CACHE": str(tmp_path / "cache"), **NO_PROXY}


def no_raw_controls(result: subprocess.CompletedProcess[str]) -> None:
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream, stream
        assert "Traceback" not in stream, stream


# --------------------------------------------------------------------------- class names are data


def test_data_shows_every_name_with_controls_escaped(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str]) -> None:
    result = run_cli_in_process(capsys, "data", str(odd_run / "data"), env=env)
    assert result.returncode == 0, result.stderr
    no_raw_controls(result)
    assert "esc\\x1b[31m\\nred" in result.stdout  # shown as escapes, on its own table row
    for name in ("cat.v2", "$\\evil$", "[bold]<i>x&amp;"):
        assert name in result.stdout
    assert len(result.stdout.splitlines()) == 2 + 1 + len(ODD_NAMES) + 1  # layout, title, header, rows, total


def test_eval_reports_names_as_data_in_tables_json_page_and_heatmap(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run_cli_in_process(capsys, "eval", str(odd_run / "run" / "best.pt"), "--out", str(out), "--json", env=env)
    assert result.returncode == 0, result.stderr
    no_raw_controls(result)
    report = json.loads(result.stdout)
    assert list(report["per_class"]) == ODD_NAMES  # exact names in the JSON
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'data-key="per_class.cat\\.v2.precision"' in page  # the dot is escaped in the key, not a separator
    assert "esc\\x1b[31m\\nred" in page and "\x1b" not in page
    assert "&lt;i&gt;x&amp;amp;" in page and "<i>x" not in page
    with Image.open(out / "confusion_matrix.png") as heatmap:
        assert heatmap.size[0] > 0
    table = run_cli_in_process(capsys, "eval", str(odd_run / "run" / "best.pt"), "--out", str(out), env=env)
    assert table.returncode == 0, table.stderr
    no_raw_controls(table)
    rows = [line for line in table.stdout.splitlines() if line.split() and line.split()[0] in {"cat.v2", "$\\evil$"}]
    assert len(rows) == 2


def test_predict_with_a_checkpoint_and_its_onnx_export_shows_names_escaped(
    capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path
) -> None:
    image = next((odd_run / "data" / "test" / "cat.v2").iterdir())
    onnx = tmp_path / "model.onnx"
    exported = run_cli_in_process(capsys, "export", str(odd_run / "run" / "best.pt"), "--format", "onnx", "--out", str(onnx), env=env)
    assert exported.returncode == 0, exported.stderr
    for model in (odd_run / "run" / "best.pt", onnx):  # names from the checkpoint, then from ONNX metadata
        result = run_cli_in_process(capsys, "predict", str(model), str(image), "--top-k", str(len(ODD_NAMES)), env=env)
        assert result.returncode == 0, result.stderr
        no_raw_controls(result)
        assert result.stdout.count("\n") == 1 and "esc\\x1b[31m\\nred" in result.stdout


# --------------------------------------------------------------------------- nothing overwrites its own input


def test_export_refuses_to_write_over_its_checkpoint_under_any_name(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copyfile(odd_run / "run" / "best.pt", checkpoint)
    before = checkpoint.read_bytes()
    (tmp_path / "alias.pt").symlink_to(checkpoint)
    os.link(checkpoint, tmp_path / "hard.pt")
    for out in (checkpoint, tmp_path / "alias.pt", tmp_path / "hard.pt"):
        result = run_cli_in_process(capsys, "export", str(checkpoint), "--format", "safetensors", "--out", str(out), env=env)
        assert_one_line_error(result, 2, "would overwrite the input")
    assert checkpoint.read_bytes() == before


def test_eval_train_and_sweep_refuse_an_output_that_is_their_input(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    # eval writes metrics.json into --out: a checkpoint saved under that name is its input.
    checkpoint = tmp_path / "metrics.json"
    shutil.copyfile(odd_run / "run" / "best.pt", checkpoint)
    before = checkpoint.read_bytes()
    assert_one_line_error(run_cli_in_process(capsys, "eval", str(checkpoint), "--out", str(tmp_path), env=env), 2, "metrics.json")
    assert checkpoint.read_bytes() == before
    # train writes OUT/config.toml; sweep writes OUT/best.toml: a --config read from there is refused.
    config = tmp_path / "run" / "config.toml"
    config.parent.mkdir()
    config.write_text('[optim]\nlr = 0.1\n')
    result = run_cli_in_process(capsys, "train", "--config", str(config), "--out", str(config.parent), "--data-dir", str(odd_run / "data"), env=env)
    assert_one_line_error(result, 2, "would overwrite the input")
    best = tmp_path / "sweep" / "best.toml"
    best.parent.mkdir()
    best.write_text('[optim]\nlr = 0.1\n')
    result = run_cli_in_process(capsys, "sweep", "--config", str(best), "--out", str(best.parent), "--trials", "1", env=env)
    assert_one_line_error(result, 2, "would overwrite the input")
    assert config.read_text() == best.read_text() == '[optim]\nlr = 0.1\n'


def test_no_command_writes_into_a_folder_another_process_holds(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert FOLDER_LOCK == LOCK  # the run folder's lock is the one the check looks at
    held = tmp_path / "held"
    held.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(held / LOCK)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"  # the event: the other process holds the folder
        export = run_cli_in_process(capsys, "export", str(odd_run / "run" / "best.pt"), "--format", "safetensors", "--out", str(held / "best.pt"), env=env)
        assert_one_line_error(export, 2, "in use by another", f"pid {holder.pid}")
        evaluated = run_cli_in_process(capsys, "eval", str(odd_run / "run" / "best.pt"), "--out", str(held), env=env)
        assert_one_line_error(evaluated, 2, "in use by another", f"pid {holder.pid}")
    finally:
        holder.communicate("")  # closing its stdin lets it go
    assert sorted(path.name for path in held.iterdir()) == [LOCK]


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


# --------------------------------------------------------------------------- images of other bit depths


def test_a_16_bit_image_is_read_with_its_real_range_and_float_images_are_refused(
    capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path
) -> None:
    gray = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # the same picture, 0..65535
    with Image.open(tmp_path / "gray16.png") as opened:
        assert opened.mode == "I;16"
    checkpoint = str(odd_run / "run" / "best.pt")
    result = run_cli_in_process(capsys, "predict", checkpoint, str(tmp_path / "gray8.png"), str(tmp_path / "gray16.png"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    eight, sixteen = json.loads(result.stdout)["predictions"]
    assert eight["top"] == sixteen["top"]  # not all white: the same answer as the 8-bit picture
    Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)).save(tmp_path / "float.tiff")
    Image.fromarray(np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 4096).save(tmp_path / "int32.tiff")
    for name, mode in (("float.tiff", "mode F"), ("int32.tiff", "mode I")):
        assert_one_line_error(run_cli_in_process(capsys, "predict", checkpoint, str(tmp_path / name), env=env), 1, name, mode)


# --------------------------------------------------------------------------- inputs that explode


def alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\noptim:\n  lr: *a{levels - 1}\n"


HOSTILE_SETTINGS = {
    "bomb.yaml": (alias_bomb(9), "over 100,000 values"),
    "deep.yaml": ("optim:\n  lr: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper"),
    "deep.toml": ("[optim]\nlr = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper"),
    "huge.yaml": ("# padding\n" * 200_000, "at most"),
    "twice.yaml": ("optim:\n  lr: 0.1\n  lr: 0.2\n", "'lr' is given twice"),
    "sections.yaml": ("optim:\n  lr: 0.1\ndata:\n  crop: true\noptim:\n  momentum: 0.8\n", "'optim' is given twice"),
    "long.yaml": ("optim:\n  lr: [" + ", ".join(["123456789"] * 2_000) + "]\n", "--lr"),
}


SPACE_CASES = ("bomb.yaml", "deep.toml", "twice.yaml")


@pytest.mark.parametrize("name", sorted(HOSTILE_SETTINGS))
def test_a_hostile_config_or_space_is_one_short_line(capsys: pytest.CaptureFixture[str], name: str, env: dict[str, str], tmp_path: Path) -> None:
    text, needle = HOSTILE_SETTINGS[name]
    path = tmp_path / name
    path.write_text(text)
    commands = [("train", "--config", str(path))]
    if name in SPACE_CASES:  # a search space is read the same way: the bounds are those of the reader
        commands.append(("sweep", "--space", str(path)))
    for args in commands:
        result = run_cli_in_process(capsys, *args, "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), env=env)
        line = assert_one_line_error(result, 2, str(path), needle)
        assert len(line) < 400  # values are cut, never expanded into the message
    assert not (tmp_path / "out").exists()


HOSTILE_HISTORY = {
    "deep": '{"epoch": 1, "train_loss": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "huge value": '{"epoch": 1, "train_loss": 1e308, "val_loss": -1e308}',
    "overflow": '{"epoch": 1, "train_loss": 1e999}',
    "far epoch": '{"epoch": 1e47, "train_loss": 0.5}',
    "big integer": '{"epoch": 1, "lr": ' + "9" * 5000 + "}",
}


GOOD_EPOCH = '{"epoch": 0, "train_loss": 1.0, "val_loss": NaN, "train_acc": 0.1, "val_acc": 0.1, "lr": 0.1}\n'


@pytest.mark.parametrize("case", sorted(HOSTILE_HISTORY))
def test_a_hostile_metrics_jsonl_loses_the_curves_with_a_note(case: str, tmp_path: Path) -> None:
    """What report reads beside a checkpoint, each case in process (the CLI run is below)."""
    from resnet_cifar.report import read_history

    (tmp_path / "metrics.jsonl").write_text(GOOD_EPOCH + HOSTILE_HISTORY[case] + "\n")
    history, note = read_history(tmp_path)
    assert history is None and note.startswith("No training curves:") and "line 2" in note
    (tmp_path / "metrics.jsonl").write_text(GOOD_EPOCH)
    assert read_history(tmp_path)[0] is not None  # NaN (an epoch not validated) is kept


def test_report_survives_a_hostile_metrics_jsonl_losing_only_the_curves(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(odd_run / "run" / "best.pt", run / "best.pt")
    (run / "metrics.jsonl").write_text(GOOD_EPOCH + HOSTILE_HISTORY["deep"] + "\n" + HOSTILE_HISTORY["far epoch"] + "\n")
    result = run_cli_in_process(capsys, "report", str(run), env=env)
    assert result.returncode == 0, result.stderr
    page = (run / "eval-test" / "report.html").read_text(encoding="utf-8")
    assert "No training curves" in page


# --------------------------------------------------------------------------- one line instead of a traceback


def test_a_tensorboard_path_that_is_no_folder_is_one_line(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    for case in ("file", "dangling link"):
        out = tmp_path / case.replace(" ", "-")
        out.mkdir()
        if case == "file":
            (out / "tensorboard").write_text("not a folder")
        else:
            (out / "tensorboard").symlink_to(tmp_path / "nowhere")
        result = run_cli_in_process(
            capsys,
            "train", "--preset", "smoke", "--depth", "18", "--epochs", "1", "--batch-size", "2", "--tensorboard",
            "--data-dir", str(odd_run / "data"), "--out", str(out), env=env,
        )
        assert_one_line_error(result, 2, str(out / "tensorboard"), case)


def test_an_image_size_past_any_allocation_is_one_line(capsys: pytest.CaptureFixture[str], odd_run: Path, env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli_in_process(capsys, "train", "--image-size", "100000", "--data-dir", str(odd_run / "data"), "--out", str(tmp_path / "o"), env=env)
    assert_one_line_error(result, 2, "--image-size", "100000")


# --------------------------------------------------------------------------- downloads


class Server:
    """A local HTTP server on 127.0.0.1 with the faults downloads meet: redirects to another scheme
    or in a loop, a body that stalls after 10 bytes, one that never ends. ``release`` lets every
    waiting handler go (set at teardown); ``sent`` is set once a stalling handler sent its bytes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                try:
                    server.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path in ("/to-ftp", "/to-file", "/loop"):
            target = {"/to-ftp": "ftp://127.0.0.1/x.tar.gz", "/to-file": "file:///etc/passwd", "/loop": "/loop"}[path]
            handler.send_response(302)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        if path == "/stall":
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b"0123456789")
            handler.wfile.flush()
            self.sent.set()
            self.release.wait()
            return
        handler.end_headers()  # /endless: no length, a body that never ends
        chunk = b"x" * 65536
        while not self.release.is_set():
            handler.wfile.write(chunk)


@pytest.fixture()
def server() -> Iterator[Server]:
    served = Server()
    thread = threading.Thread(target=served.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.release.set()
        served.httpd.shutdown()
        served.httpd.server_close()
        thread.join(timeout=5)


def download(capsys: pytest.CaptureFixture[str], server: Server, path: str, data: Path, *flags: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli_in_process(capsys, "download", "--data-dir", str(data), "--url", server.base + path, *flags, env=env)


def test_redirects_to_another_scheme_or_in_a_loop_are_one_line(capsys: pytest.CaptureFixture[str], server: Server, env: dict[str, str], tmp_path: Path) -> None:
    for path, needle in (("/to-ftp", "ftp://"), ("/to-file", "file://"), ("/loop", "redirect loop")):
        assert_one_line_error(download(capsys, server, path, tmp_path, env=env), 1, needle)
    assert list(tmp_path.iterdir()) == []


def test_a_stall_reports_the_bytes_that_arrived(capsys: pytest.CaptureFixture[str], server: Server, env: dict[str, str], tmp_path: Path) -> None:
    result = download(capsys, server, "/stall", tmp_path, "--timeout", "0.5", env=env)
    assert_one_line_error(result, 1, "after 10 bytes", "timed out")
    assert list(tmp_path.iterdir()) == []


def test_a_deadline_and_a_minimum_rate_end_a_download_that_never_stalls(capsys: pytest.CaptureFixture[str], server: Server, env: dict[str, str], tmp_path: Path) -> None:
    result = download(capsys, server, "/endless", tmp_path, "--deadline", "0.3", "--min-rate", "0", env=env)
    assert_one_line_error(result, 1, "0.3 s deadline", "--deadline")
    result = download(capsys, server, "/endless", tmp_path, "--timeout", "0.3", "--min-rate", "1e15", env=env)
    assert_one_line_error(result, 1, "under the minimum", "--min-rate")
    assert list(tmp_path.iterdir()) == []
    assert_one_line_error(download(capsys, server, "/endless", tmp_path, "--deadline", "nan", env=env), 2, "deadline")


def test_sigterm_during_a_download_leaves_no_part_file_and_stale_ones_are_removed(
    capsys: pytest.CaptureFixture[str], server: Server, env: dict[str, str], tmp_path: Path
) -> None:
    code = "import sys\nfrom resnet_cifar.cli.main import run\nrun(sys.argv[1:])\n"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "download", "--data-dir", str(tmp_path), "--url", server.base + "/stall"],
        env={**os.environ, **env}, stderr=subprocess.PIPE, text=True,
    )
    assert server.sent.wait(60)
    part = _wait_for_part(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not part.exists() and list(tmp_path.iterdir()) == []
    # A .part left by a process that died without unwinding (SIGKILL) is removed by the next download.
    stale = tmp_path / f".{ARCHIVE_NAME}.deadbeef.part"
    stale.write_bytes(b"0123456789")
    held = tmp_path / f".{ARCHIVE_NAME}.cafecafe.part"  # one a live download holds stays
    held.write_bytes(b"01")
    descriptor = os.open(held, os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        result = download(capsys, server, "/stall", tmp_path, "--timeout", "0.5", env=env)
    finally:
        os.close(descriptor)
    assert_one_line_error(result, 1, "after 10 bytes")
    assert sorted(path.name for path in tmp_path.iterdir()) == [held.name]


def _wait_for_part(folder: Path, process: subprocess.Popen[str]) -> Path:
    """The .part file of the download ``process`` runs (made before the request is sent)."""
    while process.poll() is None:
        parts = list(folder.glob(".*.part"))
        if parts:
            return parts[0]
        threading.Event().wait(0.01)
    raise AssertionError(f"the download ended early: {process.returncode} {process.communicate()[1]}")
