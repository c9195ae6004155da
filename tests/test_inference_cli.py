"""`resnet-cifar eval` and `resnet-cifar predict` on the real images, through the CLI entry point in
this process (helpers.run_cli_in_process / run_in_process): the main flows (exit code, files, JSON
consistency, no ANSI codes) and the error codes."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.data.types import CIFAR10_CLASSES

from helpers import ANSI, one_line_error, random_resnet18, run_cli_in_process, run_in_process, smoke_config, write_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path, real_splits) -> Path:
    """A ResNet-18 (ImageNet stem: cheap at 32 px) checkpoint in the trainer's format, random weights.

    Depends on real_splits so the session's decoded cache is filled before any command reads it.
    """
    cfg = smoke_config(real_data_root, **{"data.limit_val": 300})
    return write_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", cfg, random_resnet18(), epoch=1)


def check_report_consistency(report: dict[str, Any], count: int) -> None:
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert report["count"] == matrix.sum() == count
    assert report["accuracy"] == np.trace(matrix) / count
    assert list(report["per_class"]) == list(CIFAR10_CLASSES)
    assert matrix.sum(axis=1).tolist() == [report["per_class"][name]["support"] for name in CIFAR10_CLASSES]
    for index, name in enumerate(CIFAR10_CLASSES):
        recall = matrix[index, index] / matrix[index].sum()
        assert report["per_class"][name]["recall"] == pytest.approx(recall)


def test_eval_json_on_500_test_images(checkpoint: Path, decoded_cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli_in_process(
        capsys, "eval", str(checkpoint), "--limit", "500", "--device", "cpu", "--json",
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout) and not ANSI.search(result.stderr)
    report = json.loads(result.stdout)  # exactly one object on stdout
    check_report_consistency(report, 500)
    assert set(report["per_class"]["cat"]) == {"precision", "recall", "f1", "support"}
    assert report["per_class"]["cat"]["support"] == 50  # stratified
    assert (report["split"], report["tta"], report["weights"]) == ("test", False, "model")

    out_dir = checkpoint.parent / "eval-test"
    assert report["out_dir"] == str(out_dir)
    written = json.loads((out_dir / "metrics.json").read_text())
    assert written == {key: value for key, value in report.items() if key != "out_dir"}
    assert written["checkpoint"] == str(checkpoint)
    with (out_dir / "confusion_matrix.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true\\predicted", *CIFAR10_CLASSES]
    assert [[int(cell) for cell in row[1:]] for row in rows[1:]] == report["confusion_matrix"]
    with Image.open(out_dir / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.width > image.height  # counts and rates side by side


def test_eval_val_with_tta_prints_a_plain_table(
    checkpoint: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "report"
    result = run_cli_in_process(
        capsys, "eval", str(checkpoint), "--split", "val", "--tta", "--batch-size", "128", "--out", str(out_dir),
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout) and not ANSI.search(result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == "val split, 300 images (model weights, TTA)"
    assert lines[1].split() == ["class", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in lines[2:12]] == list(CIFAR10_CLASSES)
    assert lines[12].startswith("accuracy") and lines[13].startswith("macro avg")

    report = json.loads((out_dir / "metrics.json").read_text())
    # Without --limit, val is the training run's val: limit_val 300 of the 5,000 held-out images.
    check_report_consistency(report, 300)
    assert (report["split"], report["tta"]) == ("val", True)
    assert f"{report['accuracy']:.4f}" in lines[12]
    assert (out_dir / "confusion_matrix.png").is_file() and (out_dir / "confusion_matrix.csv").is_file()


def test_predict_on_real_jpegs_and_images_of_other_sizes_and_modes(
    checkpoint: Path, decoded_cache_dir: Path, real_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    wide, gray = tmp_path / "wide.png", tmp_path / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(wide)
    Image.fromarray(rng.integers(0, 256, (45, 45), dtype=np.uint8), mode="L").save(gray)
    jpegs = [real_data_root / "test" / "cat" / "0000.jpg", real_data_root / "test" / "ship" / "0001.jpg"]
    images = [*jpegs, wide, gray]

    result = run_cli_in_process(
        capsys, "predict", str(checkpoint), *map(str, images), "--top-k", "3", "--json",
        env={"RESNET_CIFAR_CACHE": str(decoded_cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout)
    predictions = json.loads(result.stdout)["predictions"]
    assert [entry["image"] for entry in predictions] == [str(path) for path in images]
    for entry in predictions:
        probabilities = [item["probability"] for item in entry["top"]]
        assert len(probabilities) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
        assert {item["class"] for item in entry["top"]} <= set(CIFAR10_CLASSES)


def test_predict_prints_one_plain_line_per_image(checkpoint: Path, real_data_root: Path, capsys) -> None:
    image = real_data_root / "test" / "cat" / "0000.jpg"
    code, out, err = run_in_process(capsys, "predict", str(checkpoint), str(image), "--top-k", "2", "--device", "cpu")
    assert code == 0, err
    [line] = out.splitlines()
    assert re.fullmatch(rf"{re.escape(str(image))}: \w+ \d+\.\d%, \w+ \d+\.\d%", line), line


# ----------------------------------------------------------------------------- errors


def test_missing_or_bad_checkpoints(checkpoint: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_in_process(capsys, "eval", str(tmp_path / "absent.pt"))
    assert code == 2
    one_line_error(err, "absent.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(512))
    code, _, err = run_in_process(capsys, "eval", str(garbage))
    assert code == 1
    one_line_error(err, "garbage.pt")

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"model": Exploit()}, protocol=2))
    code, _, err = run_in_process(capsys, "predict", str(hostile), str(checkpoint))
    assert code == 1
    one_line_error(err, "hostile.pt", "refused")
    assert not (tmp_path / "pwned").exists()

    not_ours = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, not_ours)  # a bare state dict, not a checkpoint
    code, _, err = run_in_process(capsys, "eval", str(not_ours))
    assert code == 1
    one_line_error(err, "weights.pt")


def test_eval_usage_errors_exit_2_and_write_nothing(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "never"
    for args, needle in (
        (("--split", "train"), "--split must be one of test, val"),
        (("--data-dir", str(tmp_path / "absent")), "absent"),
        (("--limit", "0"), "--limit must be positive"),
        (("--batch-size", "0"), "--batch-size must be positive"),
        (("--device", "tpu"), "tpu"),
    ):
        code, out, err = run_in_process(capsys, "eval", str(checkpoint), "--out", str(out_dir), *args)
        assert code == 2, (args, err)
        one_line_error(err, needle)
        assert out == ""
    assert not out_dir.exists()


def test_predict_errors(checkpoint: Path, real_data_root: Path, tmp_path: Path, capsys) -> None:
    good = str(real_data_root / "test" / "cat" / "0000.jpg")
    code, out, err = run_in_process(capsys, "predict", str(checkpoint), good, str(tmp_path / "absent.png"))
    assert code == 2 and out == ""
    one_line_error(err, "absent.png")

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = run_in_process(capsys, "predict", str(checkpoint), good, str(broken), "--json")
    assert code == 1 and out == ""  # no partial answer for the good image
    one_line_error(err, "broken.jpg")

    for top_k in ("0", "11"):
        code, _, err = run_in_process(capsys, "predict", str(checkpoint), good, "--top-k", top_k)
        assert code == 2
        one_line_error(err, "--top-k")
