"""Records that describe what happened, through real `resnet-cifar` processes on real JPEGs
(issue 29: a run that diverges, strict JSON, run folders reused, the data a checkpoint was trained
on, damaged or foreign checkpoint files).

One small run is trained once for the module (a ResNet-18 with the ImageNet stem, cheap at 32 px,
on 8 real images per class, 2 epochs of one 16-image step, the first epoch not validated) and every check
reads or tampers with copies of its files. A diverging run and a diverging sweep train 1 step an epoch.
The commands run in this process (helpers.run_cli_in_process: the same exit codes and output,
the process state restored, without the interpreter's start-up).
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import torch

from resnet_cifar.data.types import CIFAR10_CLASSES
from resnet_cifar.engine.checkpoint import payload_digest
from resnet_cifar.evaluation import evaluate

from helpers import run_cli_in_process

TINY = [
    "--preset", "smoke", "--depth", "18", "--stem", "imagenet", "--device", "cpu", "--schedule", "constant",
    "--batch-size", "16", "--limit-val", "10",
]  # fmt: skip
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 3
InProcess = Callable[..., subprocess.CompletedProcess[str]]  # the in_process fixture


@pytest.fixture()
def in_process(capsys: pytest.CaptureFixture[str]) -> InProcess:
    """`resnet-cifar ARGS` in this process (helpers.run_cli_in_process), in ``cwd``, 200 columns wide."""

    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return run_cli_in_process(capsys, *args, env={"COLUMNS": "200"}, cwd=cwd)

    return call


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def strict_json(text: str) -> Any:
    """JSON as a strict parser (JavaScript's JSON.parse) reads it: bare NaN or Infinity fail."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: bare {constant}")

    return json.loads(text, parse_constant=refuse)


def copy_images(real_data_root: Path, root: Path, classes: tuple[str, ...] = CIFAR10_CLASSES) -> Path:
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for source in sorted((real_data_root / split / name).iterdir())[:count]:
                shutil.copyfile(source, root / split / name / source.name)
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    """Its files and their bytes, but the lock file a refused run leaves (documented: it stays)."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file() and path.name != ".lock"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path) -> Path:
    base = tmp_path_factory.mktemp("records")
    copy_images(real_data_root, base / "small")
    return base


@pytest.fixture(scope="module")
def run(base: Path) -> subprocess.CompletedProcess[str]:
    """The module's one training run, given a *relative* data folder, its first epoch not validated
    (in this process, as the other commands)."""
    return run_cli_in_process(
        None, "train", *TINY, "--limit-train", "16", "--data-dir", "small", "--out", "run", "--epochs", "2",
        "--eval-from", "2", "--json",
        env={"COLUMNS": "200"}, cwd=base,
    )  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- what a run records


def test_a_run_records_strict_json_one_run_id_and_the_absolute_data_folder(base: Path, run) -> None:
    assert run.returncode == 0, run.stderr
    result = strict_json(run.stdout)  # --json: one strict object; epoch 1's val metrics are null
    assert result["history"][0]["validated"] is False and result["history"][0]["val_loss"] is None
    records = [strict_json(line) for line in (base / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["val_acc"] is None for record in records] == [True, False]
    saved = strict_json((base / "run" / "result.json").read_text())
    checkpoint = load(base / "run" / "best.pt")
    run_ids = {record["run_id"] for record in records} | {saved["run_id"], checkpoint["run_id"], result["run_id"]}
    assert len(run_ids) == 1 and len(checkpoint["run_id"]) == 16
    assert checkpoint["config"]["data"]["data_dir"] == str(base / "small")  # absolute, though given relative
    assert f'data_dir = "{base / "small"}"' in (base / "run" / "config.toml").read_text()
    assert checkpoint["digest"] == payload_digest(checkpoint) and len(checkpoint["data_fingerprint"]) == 64


def test_eval_from_another_folder_scores_the_training_data_and_says_when_it_differs(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    best = base / "run" / "best.pt"
    same = in_process("eval", str(best), "--out", str(tmp_path / "same"), "--json", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    report = strict_json(same.stdout)
    assert report["data_dir"] == str(base / "small") and report["data_matches_training"] is True
    assert "note:" not in same.stderr

    other = shutil.copytree(base / "small", tmp_path / "other")
    shutil.copyfile(next((other / "train" / "cat").iterdir()), other / "train" / "dog" / "added.jpg")
    differs = in_process("eval", str(best), "--data-dir", str(other), "--out", str(tmp_path / "differs"), "--json", cwd=tmp_path)
    assert differs.returncode == 0, differs.stderr
    report = strict_json(differs.stdout)
    assert report["data_matches_training"] is False and report["data_dir"] == str(other)
    notes = [line for line in differs.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {report['data_note']}"] and f"the data in {other} differs" in notes[0]


def test_a_checkpoint_without_the_new_records_still_loads(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    payload = load(base / "run" / "best.pt")
    for key in ("run_id", "data_fingerprint", "digest"):
        del payload[key]
    torch.save(payload, tmp_path / "old.pt")
    result = in_process("eval", str(tmp_path / "old.pt"), "--out", str(tmp_path / "eval"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["data_matches_training"] is None


def test_predict_json_is_strict(in_process: InProcess, base: Path, run) -> None:
    image = next((base / "small" / "test" / "ship").iterdir())
    result = in_process("predict", "run/best.pt", str(image), "--json", cwd=base)
    assert result.returncode == 0, result.stderr
    assert len(strict_json(result.stdout)["predictions"][0]["top"]) == 3


# --------------------------------------------------------------------------- run folders


def test_a_folder_holding_run_files_but_no_last_pt_is_refused_unless_resumed(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    folder = tmp_path / "reused"
    folder.mkdir()
    for name in ("best.pt", "metrics.jsonl", "result.json"):
        shutil.copyfile(base / "run" / name, folder / name)
    before = files_of(folder)
    result = in_process("train", *TINY, "--data-dir", str(base / "small"), "--out", str(folder), "--epochs", "1", cwd=tmp_path)
    one_line_error(result, 2, str(folder), "already holds a run", "metrics.jsonl")
    assert files_of(folder) == before


def test_report_leaves_out_the_curves_of_another_run(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copyfile(base / "run" / "best.pt", folder / "best.pt")
    records = [json.loads(line) for line in (base / "run" / "metrics.jsonl").read_text().splitlines()]
    lines = [json.dumps({**record, "run_id": "0123456789abcdef"}) for record in records]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = in_process("report", str(folder), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (folder / "eval-test" / "report.html").read_text()
    assert "holds epochs of run 0123456789abcdef, not of the checkpoint" in page

    shutil.copyfile(base / "run" / "metrics.jsonl", folder / "metrics.jsonl")  # its own run's: curves shown
    result = in_process("report", str(folder), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "No training curves" not in (folder / "eval-test" / "report.html").read_text()


def test_a_one_class_image_folder_is_refused_at_train_time(in_process: InProcess, real_data_root: Path, tmp_path: Path) -> None:
    root = copy_images(real_data_root, tmp_path / "one", classes=("cat",))
    result = in_process("train", *TINY, "--data-dir", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", cwd=tmp_path)
    one_line_error(result, 2, "at least two classes", "(cat)")
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- damaged or foreign checkpoints


def flip_a_byte_in_the_largest_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        record = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda info: info.file_size)
    with open(path, "r+b") as handle:
        handle.seek(record.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        offset = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x10]))


def test_a_checkpoint_with_a_flipped_byte_is_refused_in_one_line(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    damaged = shutil.copyfile(base / "run" / "best.pt", tmp_path / "best.pt")
    flip_a_byte_in_the_largest_tensor(damaged)
    one_line_error(in_process("eval", str(damaged), cwd=tmp_path), 1, str(damaged), "digest")
    one_line_error(in_process("train", "--resume", str(damaged), cwd=tmp_path), 1, str(damaged), "digest")


def test_a_torchscript_file_is_named_as_such(in_process: InProcess, tmp_path: Path) -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    one_line_error(in_process("eval", "model.pt", cwd=tmp_path), 1, "model.pt is a TorchScript file")


def test_a_checkpoint_with_nan_weights_is_refused_in_one_line(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    payload = load(base / "run" / "best.pt")
    payload["model"]["fc.weight"][0, 0] = float("nan")
    payload["digest"] = payload_digest(payload)  # a consistent file: the NaN is what is refused
    torch.save(payload, tmp_path / "nan.pt")
    one_line_error(in_process("eval", "nan.pt", cwd=tmp_path), 1, "NaN or infinite", "fc.weight")


def test_a_resume_from_a_checkpoint_whose_schedule_was_altered_is_one_line(in_process: InProcess, base: Path, run, tmp_path: Path) -> None:
    payload = load(base / "run" / "last.pt")
    payload["scheduler"]["total_iters"] = 7  # constant schedule: its length field
    del payload["digest"]  # as an older checkpoint: the schedule check itself must catch it
    (tmp_path / "altered").mkdir()
    torch.save(payload, tmp_path / "altered" / "last.pt")
    one_line_error(in_process("train", "--resume", "altered/last.pt", cwd=tmp_path), 1, "schedule", "total_iters is 7")
    assert sorted(path.name for path in (tmp_path / "altered").iterdir()) == [".lock", "last.pt"]


# --------------------------------------------------------------------------- runs that diverge


def test_a_run_whose_validation_goes_nan_stops_in_one_line_with_the_epoch_recorded(in_process: InProcess, base: Path, tmp_path: Path) -> None:
    out = tmp_path / "diverged"
    # One step of 16 images at a rate of 1e4 is divergence enough: the epoch's validation loss is NaN.
    result = in_process(
        "train", *TINY, "--limit-train", "16", "--data-dir", str(base / "small"), "--out", str(out), "--epochs", "2",
        "--lr", "1e4", cwd=tmp_path,
    )  # fmt: skip
    one_line_error(result, 1, "epoch 1: the validation loss is", "diverged")
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(record["epoch"], record["diverged"], record["val_loss"]) for record in records] == [(1, True, None)]
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists() and not (out / "result.json").exists()


def test_a_sweep_fails_a_diverging_trial_with_its_reason_and_goes_on(in_process: InProcess, base: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: categorical, choices: [10000.0]}\n")
    out = tmp_path / "sweep"
    result = in_process(
        "sweep", *TINY, "--epochs", "1", "--limit-train", "16", "--data-dir", str(base / "small"), "--space", str(space),
        "--out", str(out), "--trials", "2", cwd=tmp_path,
    )  # fmt: skip
    one_line_error(result, 1, "no trial of study")
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["number"], row["state"]) for row in rows] == [("0", "FAIL"), ("1", "FAIL")]
    assert all("validation loss is nan" in row["error"] for row in rows), rows
    strict_json((out / "trials" / "1" / "trial.json").read_text())


def test_evaluate_scores_a_model_whose_outputs_are_nan_without_crashing() -> None:
    class Diverged(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(images.shape[0], 3)
            logits[0] = float("nan")  # one image's outputs diverged, the others are finite
            return logits

    batch = (torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    result = evaluate(Diverged(), [batch], num_classes=3, loss_fn=torch.nn.functional.cross_entropy)
    assert result.count == 4 and result.loss != result.loss  # NaN, reported
    assert result.calibration is not None and sum(result.calibration.counts) == 3  # the NaN one is in no bin
