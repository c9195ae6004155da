"""Repeats (`train --seeds`): the spread equals numpy/scipy's, interrupted repeats resume to the
same summary, the CLI's summary and the page of all seeds. Three 1-epoch ResNet-18 runs on a real
subset, trained once for the module."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from resnet_cifar.config import TrainConfig, resolve_config
from resnet_cifar.engine.checkpointer import read_trained_checkpoint
from resnet_cifar.engine.trainer import StepFinished, StopRequest
from resnet_cifar.evaluation.spread import REPEATS_FILE, spread
from resnet_cifar.tuning.repeats import SeedStart, parse_seeds, run_repeats

from helpers import run_in_process

SEEDS = (0, 1, 2)
FLAGS = {
    "data.batch_size": 32, "data.eval_batch_size": 256, "data.limit_train": 96, "data.limit_val": 64,
    "data.limit_test": 64, "data.loader": "tensor", "model.depth": 18, "model.stem": "imagenet",
    "optim.epochs": 1, "precision.device": "cpu",
}  # fmt: skip


def repeats_config(data_root: Path, cache: Path, out: Path) -> TrainConfig:
    return resolve_config(preset="smoke", overrides={**FLAGS, "data.data_dir": data_root, "data.cache_dir": cache, "run.out_dir": out})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, real_data_root: Path, decoded_cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("repeats") / "out"
    outcome = run_repeats(repeats_config(real_data_root, decoded_cache_dir, out), SEEDS)
    assert outcome.summary is not None and outcome.interrupted is None
    return out


def _without_folders(summary: dict[str, Any]) -> dict[str, Any]:
    return {**summary, "runs": [{k: v for k, v in run.items() if k != "out_dir"} for run in summary["runs"]]}


def test_spread_is_numpy_and_scipy() -> None:
    values = np.random.default_rng(0).uniform(0.3, 0.9, size=5)
    result = spread(values)
    low, high = stats.t.interval(0.95, df=4, loc=values.mean(), scale=stats.sem(values))
    assert result.mean == pytest.approx(values.mean(), abs=1e-15)
    assert result.std == pytest.approx(values.std(ddof=1), abs=1e-15)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=1e-14), pytest.approx(high, abs=1e-14))
    assert (result.min, result.max) == (values.min(), values.max())
    one = spread([0.5])  # one run has no spread: None, never 0
    assert (one.std, one.ci_low, one.mean) == (None, None, 0.5)


def test_summary_equals_numpy_and_scipy_on_the_runs(reference: Path) -> None:
    summary = json.loads((reference / REPEATS_FILE).read_text())
    assert summary["seeds"] == list(SEEDS)
    results = [json.loads((reference / f"seed-{seed}" / "result.json").read_text()) for seed in SEEDS]
    figures = {
        "test_acc": [result["test_acc"] for result in results],
        "val_acc": [result["best_val_acc"] for result in results],
        **{f"class {name}": [r["test"]["per_class"][name]["recall"] for r in results] for name in summary["classes"]},
    }
    assert len(set(figures["test_acc"])) > 1  # the seeds really differ
    for name, values in figures.items():
        entry = summary["per_class"][name.removeprefix("class ")] if name.startswith("class ") else summary[name]
        array = np.asarray(values)
        assert entry["values"] == values
        assert entry["mean"] == pytest.approx(array.mean(), abs=1e-12)
        assert entry["std"] == pytest.approx(array.std(ddof=1), abs=1e-12)
        if array.std() > 0:
            expected = stats.t.interval(0.95, df=len(array) - 1, loc=array.mean(), scale=stats.sem(array))
            assert entry["ci95"] == [pytest.approx(expected[0], abs=1e-12), pytest.approx(expected[1], abs=1e-12)]
        assert (entry["min"], entry["max"]) == (array.min(), array.max())
    matrices = np.asarray([result["test"]["confusion_matrix"] for result in results], dtype=float)
    np.testing.assert_allclose(summary["mean_confusion_matrix"], matrices.mean(axis=0), atol=1e-12)
    for seed in SEEDS:  # each run's best.pt got its temperature after training
        assert read_trained_checkpoint(reference / f"seed-{seed}" / "best.pt")[0].temperature is not None


def test_interrupted_repeats_resume_to_the_same_summary(
    reference: Path, real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = repeats_config(real_data_root, decoded_cache_dir, out)
    # Seed 0 finished before (kept as it is: not trained again), seed 1 stopped after its first step.
    shutil.copytree(reference / "seed-0", out / "seed-0")
    stop, current, starts = StopRequest(), [], []

    def on_seed(start: SeedStart) -> None:
        current.append(start.seed)
        starts.append((start.seed, start.how))

    def on_event(event: object) -> None:
        if isinstance(event, StepFinished) and current[-1] == 1:
            stop.request("SIGTERM")

    first = run_repeats(cfg, SEEDS[:2], stop=stop, on_event=on_event, on_seed=on_seed)
    assert first.summary is None and first.interrupted is not None and first.interrupted.interrupted == "SIGTERM"
    assert not (out / REPEATS_FILE).exists()
    second = run_repeats(cfg, SEEDS[:2], on_seed=on_seed)
    assert starts == [(0, "done"), (1, "new"), (0, "done"), (1, "resume")]
    assert second.summary is not None
    assert json.loads((out / REPEATS_FILE).read_text()) == second.summary
    # The resumed seed 1 is the uninterrupted one, figure for figure (and so is every spread of the two).
    expected = _without_folders(json.loads((reference / REPEATS_FILE).read_text()))["runs"][:2]
    assert _without_folders(second.summary)["runs"] == expected


def test_changed_settings_are_refused(reference: Path, real_data_root: Path, decoded_cache_dir: Path) -> None:
    from dataclasses import replace

    from resnet_cifar.errors import UsageError

    cfg = repeats_config(real_data_root, decoded_cache_dir, reference)
    with pytest.raises(UsageError, match="--lr"):
        run_repeats(replace(cfg, optim=replace(cfg.optim, lr=0.123)), SEEDS)


@pytest.mark.parametrize(
    ("seeds", "repeats", "message"),
    [("0,1", 2, "not both"), ("0,0", None, "distinct"), ("a", None, "comma-separated"), (None, 0, "at least 1")],
)
def test_bad_seed_lists_are_refused(seeds: str | None, repeats: int | None, message: str) -> None:
    from resnet_cifar.errors import UsageError

    with pytest.raises(UsageError, match=message):
        parse_seeds(seeds, repeats)
    assert parse_seeds(None, 3) == (0, 1, 2) and parse_seeds("4,2", None) == (4, 2)


def test_cli_continues_finished_repeats_and_prints_the_summary(
    reference: Path, real_data_root: Path, decoded_cache_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    flags = [
        "--preset", "smoke", "--depth", "18", "--stem", "imagenet", "--device", "cpu", "--batch-size", "32",
        "--eval-batch-size", "256", "--limit-train", "96", "--limit-val", "64", "--limit-test", "64", "--epochs", "1",
        "--loader", "tensor", "--data-dir", str(real_data_root), "--out", str(reference),
    ]  # fmt: skip
    code, out, err = run_in_process(capsys, "train", "--repeats", "3", *flags, "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert {**printed, "out_dir": None} == {**json.loads((reference / REPEATS_FILE).read_text()), "out_dir": None}
    assert err.count("finished before, kept") == 3
    code, out, err = run_in_process(capsys, "train", "--seeds", "0,1,2", *flags)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-3].startswith("val_acc over 3 seeds: mean") and lines[-2].startswith("test_acc over 3 seeds: mean")
    assert f"{printed['test_acc']['mean']:.4f}" in lines[-2]
    code, _, err = run_in_process(capsys, "train", "--seeds", "0,1", "--seed", "3", *flags)
    assert code == 2 and err.strip() == "error: --seed does not go with --seeds/--repeats: each run's seed comes from the list"


class _Keyed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "data-key" in attributes:
            self.values[str(attributes["data-key"])] = str(attributes["data-value"])


def test_report_writes_one_page_for_all_seeds(
    reference: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    code, out, err = run_in_process(capsys, "report", str(reference), "--out", str(tmp_path), "--json")
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert json.loads(out)["report"] == str(tmp_path / "report.html")
    summary = json.loads((reference / REPEATS_FILE).read_text())
    parser = _Keyed()
    parser.feed(page)
    for key, shown in parser.values.items():  # every number is the file's
        value: Any = summary
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        assert shown == repr(value), key
    classes = summary["classes"]
    expected = {"test_acc.mean", "test_acc.ci95.0", "runs.2.test_acc", f"per_class.{classes[0]}.std", "mean_confusion_matrix.9.9"}
    assert expected <= set(parser.values)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
