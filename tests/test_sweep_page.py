"""sweep.html: written from a study of 8 trials (complete, pruned, failed and one still running),
self-contained, every number the study's, and rendered in a real headless Chromium (as the run
report's test does). The study is built with Optuna directly, so no trial trains here."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from PIL import Image

from resnet_cifar.config import resolve_config
from resnet_cifar.tuning import DEFAULT_STUDY_NAME, best_config, default_storage, report_sweep
from resnet_cifar.tuning.sweep import importance_evaluator

LR = FloatDistribution(0.01, 0.1, log=True)
POLICY = CategoricalDistribution(["none", "autoaugment", "randaugment"])


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder whose study holds 6 complete trials, a pruned, a failed and a running one."""
    out = tmp_path_factory.mktemp("sweep")
    study = optuna.create_study(storage=default_storage(out), study_name=DEFAULT_STUDY_NAME, direction="maximize")
    base = resolve_config(preset="smoke", overrides={"data.data_dir": Path("data")}).to_dict()
    rng = np.random.default_rng(0)
    for number in range(6):
        lr, policy = float(10 ** rng.uniform(-2, -1)), ["none", "autoaugment", "randaugment"][number % 3]
        config = {**base, "optim": {**base["optim"], "lr": lr}}
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState.COMPLETE, value=float(rng.uniform(0.3, 0.9)),
                params={"optim.lr": lr, "data.policy": policy}, distributions={"optim.lr": LR, "data.policy": POLICY},
                user_attrs={"config": config, "test_acc": 0.5, "out_dir": f"trials/{number}"},
            )
        )  # fmt: skip
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.PRUNED, params={"optim.lr": 0.05, "data.policy": "none"}, distributions={"optim.lr": LR, "data.policy": POLICY}, intermediate_values={0: 0.1}))  # fmt: skip
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.FAIL, params={"optim.lr": 0.02, "data.policy": "none"}, distributions={"optim.lr": LR, "data.policy": POLICY}, user_attrs={"error": "loss is <nan> at step 3"}))  # fmt: skip
    study.ask()  # a worker is still on this one: the page is a snapshot
    return out


def _cells(html: str) -> dict[int, dict[str, str]]:
    """Each table row's state and data-value attributes, by trial number."""
    rows: dict[int, dict[str, str]] = {}
    for number, body in re.findall(r'<tr data-trial="(\d+)">(.*?)</tr>', html):
        values = re.findall(r'data-value="([^"]*)"', body)
        state = re.search(r'data-state="(\w+)"', body)
        rows[int(number)] = {"state": state[1] if state else "", "value": values[0], "test_acc": values[1]}
    return rows


def test_report_writes_a_self_contained_page_whose_numbers_are_the_study(study_dir: Path) -> None:
    result = report_sweep(out_dir=study_dir)
    html = (study_dir / "sweep.html").read_text(encoding="utf-8")
    study = optuna.load_study(study_name=DEFAULT_STUDY_NAME, storage=default_storage(study_dir))
    trials = study.get_trials()
    assert len(trials) == 9 and len(result.trials) == 9
    rows = _cells(html)
    assert sorted(rows) == [trial.number for trial in trials]
    for trial in trials:
        assert rows[trial.number]["state"] == trial.state.name
        assert rows[trial.number]["value"] == repr(trial.value)  # None for pruned, failed and running ones
    assert "loss is &lt;nan&gt; at step 3" in html  # the failure's reason, escaped
    assert 'id="snapshot"' in html  # one trial still running
    best = study.best_trial
    assert f'Best trial: {best.number}, val_acc <span data-value="{best.value!r}">' in html
    # The best config as `train --config` reads it, and the same text in the page.
    assert resolve_config(file=study_dir / "best.toml") == best_config(best.user_attrs["config"])
    assert (study_dir / "best.toml").read_text().split("\n", 2)[2][:200].replace('"', "&quot;") in html
    expected = optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
    assert len(expected) == 2
    for key, share in expected.items():
        assert re.search(rf">{re.escape(key)}</text><rect [^>]*/><text [^>]*>{share:.3f}</text>", html), key
    assert html.count('<section id="slices">') == 1 and html.count('aria-label="slice: ') == 2  # one per parameter
    # Self-contained: nothing is loaded from anywhere, no script at all.
    assert "://" not in html.replace(result.storage, "") and "<script" not in html and "url(" not in html
    assert "@import" not in html and " src=" not in html and " href=" not in html
    tags = _Tags()
    tags.feed(html)
    assert not {"link", "img", "iframe", "object", "embed", "base"} & tags.names


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)


def test_sweep_page_renders_in_headless_chromium(study_dir: Path, tmp_path: Path) -> None:
    report_sweep(out_dir=study_dir)
    page = study_dir / "sweep.html"
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    screenshot = tmp_path / "sweep.png"
    with tempfile.TemporaryDirectory() as profile:
        shot = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--hide-scrollbars", f"--screenshot={screenshot}", "--window-size=1200,1800", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (1800, 1200)
    gray = pixels.mean(axis=2)
    assert gray.std() > 15  # not blank
    blue = (pixels[..., 2] > 180) & (pixels[..., 0] < 80)  # the running best, the bars, the lines
    assert blue.sum() > 300
    green = (pixels[..., 1] > 120) & (pixels[..., 0] < 60) & (pixels[..., 2] < 100)  # complete trials' dots
    assert green.sum() > 50
