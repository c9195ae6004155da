"""`resnet-cifar export` and `predict FILE.onnx` on a small really trained ResNet-18 and real images:
each format round-trips, the ONNX model scores what eval scores, a tampered export is refused
with no file left, and the errors are one line with the contract's exit codes."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import resnet_cifar
from resnet_cifar.config import TrainConfig, resolve_config
from resnet_cifar.data.split import limit_split
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from resnet_cifar.engine.step import build_ema
from resnet_cifar.inference import evaluate_checkpoint, load_eval_split
from resnet_cifar.choices import described
from resnet_cifar.export import (
    FORMATS,
    METADATA_KEYS,
    OUTPUT_NAME,
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    Exported,
    ExportFormat,
    ExportResult,
    ExportSource,
    Preprocessed,
    export_checkpoint,
    model_from_safetensors,
    model_metadata,
    read_safetensors_export,
)
from resnet_cifar.models import resnet18

from helpers import save_checkpoint
from test_faults_cli import _drop_file_permission_override, assert_one_line_error, run_cli

TRAIN_STEPS = 30
TRAIN_BATCH = 64


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI entry point in this process: exit code, stdout, stderr."""
    from resnet_cifar.cli.main import run

    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def normalize_by_hand(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> (x / 255 - mean) / std as float32 NCHW, computed in float64."""
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255.0
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((images - mean) / std).float()


def unit_range(pixels: np.ndarray) -> torch.Tensor:
    """What a user feeds an export: uint8 HWC -> float32 NCHW in [0, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def leftovers(folder: Path) -> list[str]:
    """Temp files an export may have left behind (it must leave none)."""
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))



# ----------------------------------------------------------------------------- a small trained model


class Trained:
    """The checkpoint and its two models (plain and EMA weights), in eval mode on the CPU."""

    def __init__(self, path: Path, config: TrainConfig, model: torch.nn.Module, ema: torch.nn.Module) -> None:
        self.path, self.config, self.model, self.ema = path, config, model, ema


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path, real_splits) -> Trained:
    """ResNet-18 (ImageNet stem: cheap at 32 px) trained for a few SGD steps on real images, with an
    EMA that differs from its weights, saved in the trainer's checkpoint format.

    Depends on real_splits so the session's decoded cache is filled before any export reads it.
    """
    config = resolve_config(
        preset="smoke", overrides={"data.data_dir": str(real_data_root), "model.stem": "imagenet"}
    )
    torch.manual_seed(0)
    model = resnet18(num_classes=10, stem="imagenet")
    ema = build_ema(model, 0.9)
    subset = limit_split(real_splits.train, TRAIN_STEPS * TRAIN_BATCH, 0)
    loader = TensorLoader(subset, LoaderSpec(batch_size=TRAIN_BATCH, train=True, seed=0))
    # A gentle learning rate and the recipe's label smoothing keep the logits at a trained model's
    # scale (|logit| of a few units); 30 steps at lr 0.05 give |logits| ~ 500, where one fp32 ulp
    # is 6e-5 and the 1e-4 parity tolerance would be two ulps.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    payload = {
        "format": 1,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "classes": list(CIFAR10_CLASSES),
        "config": config.to_dict(),
        "epoch": 1,
    }
    save_checkpoint(path, payload)
    return Trained(path, config, model.eval(), ema.module.eval())


@pytest.fixture(scope="module")
def exports(trained: Trained, decoded_cache_dir: Path) -> dict[str, ExportResult]:
    """Each format exported once through the library, verified on the real parity batch."""
    folder = trained.path.parent / "exports"
    folder.mkdir()
    return {
        fmt: export_checkpoint(trained.path, folder / f"model.{fmt}", format=fmt, cache_dir=decoded_cache_dir)
        for fmt in ("onnx", "torchscript", "safetensors")
    }


@pytest.fixture()
def cli_cache(monkeypatch: pytest.MonkeyPatch, decoded_cache_dir: Path) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))


def reference_logits(model: torch.nn.Module, pixels: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(normalize_by_hand(pixels))


# ----------------------------------------------------------------------------- round trips


def test_onnx_round_trip_with_metadata_and_a_dynamic_batch(exports, trained: Trained, real_splits) -> None:
    result = exports["onnx"]
    assert (result.format, result.weights, result.opset, result.verified) == ("onnx", "ema", 18, True)
    assert result.parity_images == PARITY_IMAGES and 0 <= result.max_abs_diff <= PARITY_TOLERANCE
    assert leftovers(result.path.parent) == []

    proto = onnx.load(str(result.path))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(metadata["classes"]) == list(CIFAR10_CLASSES)
    assert json.loads(metadata["mean"]) == list(CIFAR10_MEAN) and json.loads(metadata["std"]) == list(CIFAR10_STD)
    assert metadata["input_range"] == "[0, 1]"
    assert metadata["resnet_cifar_version"] == resnet_cifar.__version__
    assert metadata["weights"] == "ema"
    [graph_input] = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "images" and len(dims) == 4
    assert dims[0].dim_param and not dims[0].dim_value  # a named, dynamic batch dimension
    assert [dim.dim_value for dim in dims[1:]] == [3, 32, 32]

    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for count in (1, 5):  # neither is the exporter's example batch (2) nor the parity batch (64)
        pixels = real_splits.test.images[100 : 100 + count]
        [logits] = session.run(None, {"images": unit_range(pixels).numpy()})
        assert logits.shape == (count, 10) and logits.dtype == np.float32
        expected = reference_logits(trained.ema, pixels)
        assert np.abs(logits - expected.numpy()).max() <= PARITY_TOLERANCE
    # The EMA weights, not the plain ones: these answers differ measurably.
    pixels = real_splits.test.images[:64]
    [logits] = session.run(None, {"images": unit_range(pixels).numpy()})
    assert np.abs(logits - reference_logits(trained.model, pixels).numpy()).max() > 100 * PARITY_TOLERANCE


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip_with_extra_files(exports, trained: Trained, real_splits) -> None:
    result = exports["torchscript"]
    assert (result.format, result.weights, result.opset, result.verified) == ("torchscript", "ema", None, True)
    assert 0 <= result.max_abs_diff <= PARITY_TOLERANCE

    extra = {"classes": "", "mean": "", "std": "", "input_range": "", "resnet_cifar_version": ""}
    loaded = torch.jit.load(str(result.path), map_location="cpu", _extra_files=extra)
    extra = {key: value.decode() for key, value in extra.items()}  # torch.jit.load fills in bytes
    assert json.loads(extra["classes"]) == list(CIFAR10_CLASSES)
    assert json.loads(extra["mean"]) == list(CIFAR10_MEAN) and json.loads(extra["std"]) == list(CIFAR10_STD)
    assert (extra["input_range"], extra["resnet_cifar_version"]) == ("[0, 1]", resnet_cifar.__version__)
    assert not loaded.training
    pixels = real_splits.test.images[200:203]
    with torch.inference_mode():
        logits = loaded(unit_range(pixels))
    assert logits.shape == (3, 10)
    assert (logits - reference_logits(trained.ema, pixels)).abs().max() <= PARITY_TOLERANCE


def test_safetensors_round_trip_is_the_plain_state_dict_without_pickle(exports, trained: Trained, real_splits) -> None:
    result = exports["safetensors"]
    assert (result.format, result.weights, result.verified) == ("safetensors", "ema", True)
    raw = result.path.read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_size])  # a JSON header, then raw tensor bytes: no pickle
    assert b"\x80\x02" not in raw[:2] and set(header["__metadata__"]) >= {"config", "classes", "weights"}

    tensors, metadata = read_safetensors_export(result.path)
    assert json.loads(metadata["config"]) == trained.config.to_dict()
    assert json.loads(metadata["classes"]) == list(CIFAR10_CLASSES)
    expected = trained.ema.state_dict()
    assert set(tensors) == set(expected)
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key

    model, classes = model_from_safetensors(result.path)
    assert classes == CIFAR10_CLASSES
    pixels = real_splits.test.images[:16]
    with torch.inference_mode():
        assert torch.equal(model(normalize_by_hand(pixels)), reference_logits(trained.ema, pixels))


def test_onnx_accuracy_on_real_test_images_equals_eval(exports, trained: Trained, decoded_cache_dir: Path, tmp_path: Path) -> None:
    outcome = evaluate_checkpoint(
        trained.path, split="test", limit=500, device="cpu", out_dir=tmp_path, cache_dir=decoded_cache_dir
    )
    split = load_eval_split(trained.config.data, "test", limit=500, cache_dir=decoded_cache_dir)
    session = onnxruntime.InferenceSession(str(exports["onnx"].path), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"images": unit_range(split.images).numpy()})
    predicted = logits.argmax(axis=1)
    accuracy = float((predicted == split.labels).mean())
    assert outcome.report["count"] == 500
    assert accuracy == pytest.approx(outcome.report["accuracy"], abs=1e-12)
    # The same answers class by class, not only the same total.
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (split.labels, predicted), 1)
    assert matrix.tolist() == outcome.report["confusion_matrix"]
    assert 0.15 < accuracy < 0.9  # a trained model: better than chance, so the comparison means something


# ----------------------------------------------------------------------------- the parity check


def skip_normalization(self: Preprocessed, images: torch.Tensor) -> torch.Tensor:
    return self.model(images)  # the tampering: [0, 1] images straight into the model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_tampered_export_fails_the_parity_check_and_leaves_no_file(
    fmt: str, trained: Trained, tmp_path: Path, capsys, cli_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Preprocessed, "forward", skip_normalization)
    out = tmp_path / f"model.{fmt}"
    if fmt == "onnx":  # an existing file is left exactly as it was
        out.write_bytes(b"the previous export")
    code, stdout, err = run_in_process(capsys, "export", str(trained.path), "--format", fmt, "--out", str(out))
    assert code == 1 and stdout == ""
    one_line_error(err, "parity check failed", fmt, f"{PARITY_IMAGES} real test images")
    if fmt == "onnx":
        assert out.read_bytes() == b"the previous export"
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []

    # --no-verify skips exactly that check: the same tampered model is then written.
    code, stdout, err = run_in_process(
        capsys, "export", str(trained.path), "--format", fmt, "--out", str(out), "--no-verify", "--json"
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert (report["verified"], report["max_abs_diff"], report["parity_images"]) == (False, None, 0)
    assert out.stat().st_size > 1_000_000 and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- predict on .onnx


def test_predict_on_the_onnx_file_equals_predict_on_the_checkpoint(
    exports, trained: Trained, real_data_root: Path, tmp_path: Path, capsys
) -> None:
    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(wide)
    images = [str(real_data_root / "test" / "cat" / "0000.jpg"), str(real_data_root / "test" / "ship" / "0001.jpg"), str(wide)]
    answers: dict[str, Any] = {}
    for name, model_file in (("checkpoint", trained.path), ("onnx", exports["onnx"].path)):
        for tta in ((), ("--tta",)):
            code, out, err = run_in_process(
                capsys, "predict", str(model_file), *images, "--top-k", "3", "--device", "cpu", "--json", *tta
            )
            assert code == 0, err
            answers[name + "".join(tta)] = json.loads(out)
    for tta in ("", "--tta"):
        checkpoint, exported = answers["checkpoint" + tta], answers["onnx" + tta]
        assert exported["checkpoint"] == str(exports["onnx"].path)
        assert len(exported["predictions"]) == len(images)
        for mine, theirs in zip(exported["predictions"], checkpoint["predictions"]):
            assert mine["image"] == theirs["image"]
            assert [item["class"] for item in mine["top"]] == [item["class"] for item in theirs["top"]]
            for a, b in zip(mine["top"], theirs["top"]):
                assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    assert answers["onnx"] != answers["onnx--tta"]  # TTA changes the answer, so it was applied

    # The plain-text output is the same line format too.
    code, out, err = run_in_process(capsys, "predict", str(exports["onnx"].path), images[0], "--top-k", "2")
    assert code == 0, err
    assert out.startswith(f"{images[0]}: ") and out.count("%") == 2


def test_predict_on_onnx_errors(exports, real_data_root: Path, tmp_path: Path, capsys) -> None:
    good = str(real_data_root / "test" / "cat" / "0000.jpg")
    onnx_file = str(exports["onnx"].path)
    code, _, err = run_in_process(capsys, "predict", onnx_file, good, "--top-k", "11")
    assert code == 2
    one_line_error(err, "--top-k")
    code, _, err = run_in_process(capsys, "predict", onnx_file, good, "--device", "cuda")
    assert code == 2
    one_line_error(err, "CPU")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    code, out, err = run_in_process(capsys, "predict", str(garbage), good)
    assert code == 1 and out == ""
    one_line_error(err, "garbage.onnx")


# ----------------------------------------------------------------------------- the parity images


def test_the_parity_images_come_from_the_checkpoint_data_folder_or_data_dir(
    trained: Trained, real_data_root: Path, tmp_path: Path, capsys, cli_cache
) -> None:
    # A checkpoint trained elsewhere: its data folder does not exist here.
    moved = resolve_config(
        preset="smoke", overrides={"data.data_dir": str(tmp_path / "gone"), "model.stem": "imagenet"}
    )
    payload = torch.load(trained.path, weights_only=True)
    checkpoint = tmp_path / "moved.pt"
    save_checkpoint(checkpoint, {**payload, "config": moved.to_dict()})
    out = tmp_path / "model.pt"

    code, stdout, err = run_in_process(capsys, "export", str(checkpoint), "--format", "torchscript", "--out", str(out))
    assert code == 2 and stdout == ""  # no silent fallback to other images, nor to no check
    one_line_error(err, str(tmp_path / "gone"), "--data-dir", "--no-verify")
    assert not out.exists() and leftovers(tmp_path) == []

    code, stdout, err = run_in_process(
        capsys, "export", str(checkpoint), "--format", "torchscript", "--out", str(out),
        "--data-dir", str(real_data_root), "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)  # exactly one JSON object
    assert report["out"] == str(out) and report["verified"] is True
    assert report["parity_images"] == PARITY_IMAGES and report["max_abs_diff"] <= PARITY_TOLERANCE
    assert out.is_file()


# ----------------------------------------------------------------------------- usage errors


def test_export_usage_errors_exit_2_and_write_nothing(trained: Trained, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.onnx"
    cases = (
        (("--format", "keras", "--out", str(out)), "--format must be one of onnx, torchscript, safetensors"),
        (("--format", "torchscript", "--out", str(out), "--opset", "18"), "--opset applies to --format onnx only"),
        (("--format", "onnx", "--out", str(out), "--opset", "13"), "--opset must be in 18.."),
        (("--format", "onnx", "--out", str(tmp_path / "absent" / "m.onnx")), "does not exist"),
        (("--format", "onnx", "--out", str(tmp_path)), "is a folder"),
        (("--format", "onnx", "--out", str(out), "--data-dir", str(tmp_path / "nope")), "nope"),
        (("--out", str(out)), "--format"),
    )
    for args, needle in cases:
        code, stdout, err = run_in_process(capsys, "export", str(trained.path), *args)
        assert code == 2, (args, err)
        assert stdout == ""
        one_line_error(err, needle)
    code, _, err = run_in_process(capsys, "export", str(tmp_path / "absent.pt"), "--format", "onnx", "--out", str(out))
    assert code == 2
    one_line_error(err, "absent.pt")
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_its_packages_exits_2_with_the_pip_command(
    trained: Trained, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_onnxruntime(name: str, *args: Any, **kwargs: Any):
        return None if name == "onnxruntime" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_onnxruntime)
    out = tmp_path / "model.onnx"
    code, stdout, err = run_in_process(capsys, "export", str(trained.path), "--format", "onnx", "--out", str(out))
    assert code == 2 and stdout == ""
    one_line_error(err, "onnxruntime", "pip install")
    assert not out.exists()


# ----------------------------------------------------------------------------- a new format


def write_pt2(source: ExportSource, path: Path) -> None:
    program = torch.export.export(source.module, (source.example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with open(path, "wb") as out:  # a file object: torch.export.save warns about a path not ending in .pt2
        torch.export.save(program, out, extra_files=dict(source.metadata))


def open_pt2(path: Path) -> Exported:
    metadata = dict.fromkeys(METADATA_KEYS, "")
    with open(path, "rb") as stream:
        module = torch.export.load(stream, extra_files=metadata).module()

    def logits(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images)

    return Exported(metadata=metadata, logits=logits)


# torch.export's ExportedProgram, a format the project does not ship: its registry entry is all it is.
PT2 = ExportFormat(
    title="ExportedProgram",
    help="torch.export's program, for torch.export.load",
    suffix=".pt2",
    runnable=True,
    metadata=model_metadata,
    write=write_pt2,
    open=open_pt2,
    runtime="torch.export.load",
    predicts=True,
)


def test_a_new_export_format_needs_only_its_registry_entry(
    trained: Trained, real_data_root: Path, tmp_path: Path, capsys, cli_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from resnet_cifar.cli.main import app

    out = tmp_path / "model.pt2"
    code, _, err = run_in_process(capsys, "export", str(trained.path), "--format", "pt2", "--out", str(out))
    assert code == 2
    one_line_error(err, "--format must be one of onnx, torchscript, safetensors, got 'pt2'")

    monkeypatch.setitem(FORMATS, "pt2", PT2)
    help_text = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "1000", "TERM": "dumb"}).output
    assert described(FORMATS) in help_text and "or pt2 (torch.export's program, for torch.export.load)" in help_text
    code, _, err = run_in_process(capsys, "export", str(trained.path), "--format", "pt2", "--out", str(out), "--opset", "18")
    assert code == 2
    one_line_error(err, "--opset applies to --format onnx only, not pt2")

    # Written, read back and run on the parity images like the shipped model formats.
    code, stdout, err = run_in_process(capsys, "export", str(trained.path), "--format", "pt2", "--out", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert (report["format"], report["verified"], report["parity_images"]) == ("pt2", True, PARITY_IMAGES)
    assert report["max_abs_diff"] <= PARITY_TOLERANCE and leftovers(tmp_path) == []
    assert open_pt2(out).metadata["classes"] == json.dumps(list(CIFAR10_CLASSES))

    # predict takes it by its suffix and answers as the checkpoint does.
    images = [str(real_data_root / "test" / "cat" / "0000.jpg"), str(real_data_root / "test" / "ship" / "0001.jpg")]
    answers = []
    for model_file in (trained.path, out):
        code, stdout, err = run_in_process(capsys, "predict", str(model_file), *images, "--device", "cpu", "--json")
        assert code == 0, err
        answers.append([prediction["top"] for prediction in json.loads(stdout)["predictions"]])
    for mine, theirs in zip(answers[1], answers[0]):
        assert [item["class"] for item in mine] == [item["class"] for item in theirs]
        assert [item["probability"] for item in mine] == pytest.approx([item["probability"] for item in theirs], abs=1e-5)


# ----------------------------------------------------------------------------- refused in one line (issue 29)


def test_export_into_a_folder_it_cannot_write_is_one_line_exit_2(trained: Trained, tmp_path: Path) -> None:
    """A real process without root's permission override, as test_faults_cli makes them."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run_cli(
            "export", str(trained.path), "--format", "safetensors", "--out", str(folder / "model.safetensors"),
            env={}, preexec_fn=_drop_file_permission_override if os.geteuid() == 0 else None,
        )
    finally:
        folder.chmod(0o755)
    assert_one_line_error(result, 2, f"error: cannot write into {folder} (Permission denied)")
    assert result.stdout == "" and list(folder.iterdir()) == []


def altered_onnx(source: Path, target: Path, *, classes: list[str] | None = None, output: str | None = None) -> Path:
    """A copy of an ONNX export with other class names in its metadata, or its output renamed."""
    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key == "classes" and classes is not None:
            entry.value = json.dumps(classes)
    if output is not None:
        for node in proto.graph.node:
            node.output[:] = [output if name == OUTPUT_NAME else name for name in node.output]
        proto.graph.output[0].name = output
    onnx.save(proto, str(target))
    return target


@pytest.mark.parametrize("names", [9, 11], ids=["fewer-names-than-outputs", "fewer-outputs-than-names"])
@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_predict_refuses_an_onnx_file_whose_class_names_do_not_match_its_outputs(
    exports, real_data_root: Path, tmp_path: Path, capsys, names: int, tta: bool
) -> None:
    onnx_file = altered_onnx(exports["onnx"].path, tmp_path / "renamed.onnx", classes=[f"c{i}" for i in range(names)])
    image = str(real_data_root / "test" / "cat" / "0000.jpg")
    code, out, err = run_in_process(capsys, "predict", str(onnx_file), image, *(["--tta"] if tta else []))
    assert code == 1 and out == ""
    one_line_error(err, f"{onnx_file}: its model returns 10 scores per image but its 'classes' metadata names {names}")


def test_predict_refuses_an_onnx_file_with_another_output(exports, real_data_root: Path, tmp_path: Path, capsys) -> None:
    onnx_file = altered_onnx(exports["onnx"].path, tmp_path / "other.onnx", output="probabilities")
    image = str(real_data_root / "test" / "cat" / "0000.jpg")
    code, out, err = run_in_process(capsys, "predict", str(onnx_file), image)
    assert code == 1 and out == ""
    one_line_error(err, f"{onnx_file}: not a resnet-cifar export", "outputs ['probabilities']")
