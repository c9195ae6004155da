"""Temperature scaling: the fit (Guo et al.'s LBFGS on the validation NLL), its storage in the
checkpoint, and eval, predict and export using it. One small ResNet-18, trained 1 epoch on a real
subset once for the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import resnet_cifar.inference as inference
from resnet_cifar.config import resolve_config
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.trainer import train
from resnet_cifar.evaluation.temperature import fit_temperature
from resnet_cifar.inference import calibrate_checkpoint, evaluate_checkpoint, load_trained_model, predict_files
from resnet_cifar.report import evaluate_and_report
from helpers import run_in_process, save_checkpoint

LIMIT_VAL = 256


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path, decoded_cache_dir: Path) -> Path:
    """best.pt of a 1-epoch run (4 steps), not calibrated (the library's train() fits no temperature).

    One epoch is enough: every check here compares the model with itself (before and after the fit,
    the checkpoint and its export), and the fit needs logits that are not all equal, not a good model."""
    out = tmp_path_factory.mktemp("calibration") / "run"
    cfg = resolve_config(
        preset="smoke",
        overrides={
            "data.data_dir": real_data_root, "data.cache_dir": decoded_cache_dir, "data.batch_size": 64,
            "data.limit_train": 256, "data.limit_val": LIMIT_VAL, "data.limit_test": 64, "data.loader": "tensor",
            "model.depth": 18, "model.stem": "imagenet", "optim.epochs": 1, "precision.device": "cpu", "run.out_dir": out,
        },
    )  # fmt: skip
    train(cfg)
    return out / "best.pt"


def copy_of(checkpoint: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(checkpoint, folder / "best.pt"))


def test_the_fit_recovers_a_known_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5000, 10, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)  # calibrated at T = 1
    fit = fit_temperature(logits * 3, labels)  # three times over-confident
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.after.nll < fit.before.nll and fit.after.calibration.ece < fit.before.calibration.ece


def test_the_fit_lowers_the_val_nll_and_changes_no_prediction(
    trained: Path, decoded_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = copy_of(trained, tmp_path / "run")
    raw = evaluate_checkpoint(checkpoint, split="val", device="cpu", cache_dir=decoded_cache_dir, out_dir=tmp_path / "raw")
    assert raw.report["temperature_scaling"] is None
    splits: list[str] = []
    original = inference.load_eval_split
    monkeypatch.setattr(inference, "load_eval_split", lambda cfg, split, **kw: splits.append(split) or original(cfg, split, **kw))
    fit = calibrate_checkpoint(checkpoint, device="cpu", cache_dir=decoded_cache_dir).fit
    assert splits == ["val"] and fit.count == LIMIT_VAL  # the test split never chooses the temperature
    assert fit.after.nll < fit.before.nll and fit.temperature != 1.0
    stored = load_checkpoint(checkpoint)["temperature"]
    assert stored["temperature"] == fit.temperature and stored["split"] == "val"
    scaled = evaluate_and_report(checkpoint, split="val", device="cpu", cache_dir=decoded_cache_dir, out_dir=tmp_path / "cal")
    assert torch.equal(scaled.result.predictions, raw.result.predictions)  # not a single prediction changes
    assert scaled.report["confusion_matrix"] == raw.report["confusion_matrix"]
    assert scaled.report["accuracy"] == raw.report["accuracy"]
    written = json.loads((tmp_path / "cal" / "metrics.json").read_text())["temperature_scaling"]
    assert written["temperature"] == fit.temperature
    assert written["before"]["nll"] == pytest.approx(fit.before.nll, rel=1e-6)
    assert written["after"]["nll"] == pytest.approx(fit.after.nll, rel=1e-6)
    assert written["after"]["ece"] == pytest.approx(scaled.report["ece"], abs=1e-6)  # the page's figures are after it
    assert written["before"]["ece"] == pytest.approx(raw.report["ece"], abs=1e-6)
    page = (tmp_path / "cal" / "report.html").read_text()
    assert page.count('data-when="') == 2 and 'data-key="temperature_scaling.after.ece"' in page


def test_an_over_confident_model_gets_a_temperature_above_one(trained: Path, decoded_cache_dir: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(trained)
    for name in ("fc.weight", "fc.bias"):  # every logit ten times larger: over-confident on purpose
        payload["model"][name] = payload["model"][name] * 10
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, payload)
    fit = calibrate_checkpoint(checkpoint, device="cpu", cache_dir=decoded_cache_dir).fit
    assert fit.temperature > 1.0
    assert fit.after.calibration.ece < fit.before.calibration.ece
    assert fit.before.calibration.mean_confidence > fit.after.calibration.mean_confidence


def test_predict_and_export_use_the_temperature(
    trained: Path, real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    from resnet_cifar.export import export_checkpoint

    checkpoint = copy_of(trained, tmp_path / "run")
    temperature = calibrate_checkpoint(checkpoint, device="cpu", cache_dir=decoded_cache_dir).fit.temperature
    model = load_trained_model(checkpoint, device="cpu")
    assert model.temperature == temperature
    image = next((real_data_root / "test" / "cat").iterdir())
    top = predict_files(model, [image], top_k=10)[0].top
    batch = torch.from_numpy(inference.read_image_file(image)).permute(2, 0, 1)[None].float().div(255)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = model.model((batch - mean) / std)
    expected = torch.softmax(logits / temperature, dim=1)[0]
    for name, probability in top:
        assert probability == pytest.approx(float(expected[model.classes.index(name)]), abs=1e-4)
    out = tmp_path / "model.pt"
    result = export_checkpoint(checkpoint, out, format="torchscript", cache_dir=decoded_cache_dir, parity_images=16)
    assert result.verified and result.max_abs_diff is not None  # against the checkpoint's logits / T
    extra = {"temperature": ""}
    exported = torch.jit.load(str(out), _extra_files=extra)
    assert float(extra["temperature"]) == temperature
    with torch.inference_mode():
        torch.testing.assert_close(exported(batch), logits / temperature, atol=1e-4, rtol=1e-4)


def test_calibrate_command(
    trained: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint = copy_of(trained, tmp_path / "run")
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    code, out, err = run_in_process(capsys, "calibrate", str(checkpoint), "--device", "cpu", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["split"] == "val" and printed["count"] == LIMIT_VAL
    assert load_checkpoint(checkpoint)["temperature"]["temperature"] == printed["temperature"]
    code, _, err = run_in_process(capsys, "calibrate", str(tmp_path / "none.pt"))
    assert code == 2 and err.strip() == f"error: checkpoint not found: {tmp_path / 'none.pt'}"
