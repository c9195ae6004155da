"""The command line through a real subprocess: exit codes, one-line errors, JSON, no ANSI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ANSI = re.compile(r"\x1b\[")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "resnet_cifar.cli", *args],
        capture_output=True,
        text=True,
        env=merged,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def write_png_folder(root: Path, per_class: int = 2) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")


def test_info_json_is_one_object() -> None:
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resnet_cifar"] and report["torch"] and "cpu" in report["devices"]


def test_unknown_flag_and_command_exit_2_with_one_line() -> None:
    assert_one_line_error(run_cli("info", "--bogus"), 2, "--bogus")
    assert_one_line_error(run_cli("frobnicate"), 2, "frobnicate")


def test_data_missing_folder_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_one_line_error(run_cli("data", str(missing)), 2, str(missing))


def test_download_into_a_named_missing_folder_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_one_line_error(run_cli("download", "--data-dir", str(missing)), 2, str(missing))
    assert not missing.exists()


def test_data_corrupt_image_exits_1_naming_the_file(tmp_path: Path) -> None:
    write_png_folder(tmp_path)
    broken = tmp_path / "train" / "dog" / "1.png"
    broken.write_bytes(b"\x89PNG not really")
    assert_one_line_error(run_cli("data", str(tmp_path), "--no-cache"), 1, str(broken))


def test_data_small_folder_plain_output_has_no_ansi(tmp_path: Path) -> None:
    write_png_folder(tmp_path)
    result = run_cli("data", str(tmp_path), "--no-cache", env={"FORCE_COLOR": "", "TERM": "xterm-256color"})
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout + result.stderr)
    assert "image-folder" in result.stdout
    assert re.search(r"^total\s+4\s+4$", result.stdout, re.MULTILINE), result.stdout


def test_data_json_on_the_real_folder(real_data_root: Path, decoded_cache_dir: Path) -> None:
    result = run_cli("data", str(real_data_root), "--json", env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layout"] == "image-folder"
    assert summary["train"]["count"] == 50_000 and summary["test"]["count"] == 10_000
    assert set(summary["train"]["per_class"].values()) == {5000}
    assert set(summary["test"]["per_class"].values()) == {1000}
    assert list(summary["train"]["per_class"]) == summary["classes"]


def test_download_md5_mismatch_exits_1_and_leaves_nothing(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "cifar-10-python.tar.gz").write_bytes(b"not the official archive" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = tmp_path / "data"
        target.mkdir()
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        result = run_cli("download", "--data-dir", str(target), "--url", url, env={"NO_PROXY": "*", "no_proxy": "*"})
    finally:
        server.shutdown()
        server.server_close()
    assert_one_line_error(result, 1, "md5")
    assert list(target.iterdir()) == []
