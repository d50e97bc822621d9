import json
import math

import pytest
import yaml

from lcag.errors import ConfigError, DatasetError
from lcag.hpo.config import Budget
from lcag.hpo.search import load_base
from lcag.hpo.trial import load_result, run_trial, trial_config
from tests.conftest import ROOT

RECORD = {"island": 0, "rank": 0, "generation": 0, "device": "cpu:1"}


@pytest.fixture
def base(tiny_data):
    return load_base(ROOT / "configs" / "fit" / "tiny_transformer.yaml", data_dir=str(tiny_data))


def test_trial_config_moves_outputs_into_the_trial_and_sets_the_budget(base, tmp_path):
    budget = Budget(max_epochs=2, max_minutes=1.5, max_train_events=100)
    config = trial_config(base, {"model": "nri", "dim": 16}, tmp_path / "t", budget)
    trainer = config["trainer"]
    assert trainer["max_epochs"] == 2
    assert trainer["max_time"] == "00:00:01:30"
    assert trainer["accelerator"] == "cpu"
    assert trainer["devices"] == 1
    assert all(lg["init_args"]["save_dir"] == str(tmp_path / "t") for lg in trainer["logger"])
    paths = [c["init_args"].get("dirpath") for c in trainer["callbacks"] if "init_args" in c]
    assert str(tmp_path / "t" / "checkpoints") in paths
    assert not any("ProgressBar" in c["class_path"] for c in trainer["callbacks"])
    assert config["data"]["max_train_events"] == 100
    assert config["model"]["model"]["class_path"] == "lcag.models.LCAGNRI"
    energy = [c for c in trainer["callbacks"] if c["class_path"].endswith("EnergyLogger")]
    assert energy == [
        {
            "class_path": "lcag.energy.EnergyLogger",
            "init_args": {"path": str(tmp_path / "t" / "energy.json"), "watts_per_core": 10.0},
        }
    ]
    assert trainer["plugins"][0]["class_path"].endswith("LightningEnvironment")


def test_loggers_a_trial_cannot_separate_are_refused(base, tmp_path):
    base = {**base, "trainer": {**base["trainer"]}}
    base["trainer"]["logger"] = [{"class_path": "lightning.pytorch.loggers.WandbLogger"}]
    with pytest.raises(ConfigError, match="WandbLogger"):
        trial_config(base, {}, tmp_path, Budget())


def test_no_validation_within_the_budget_is_a_failed_trial(base, tmp_path):
    config = trial_config(base, {"dim": 16, "depth": 1}, tmp_path / "t", Budget(max_epochs=1))
    config["trainer"]["check_val_every_n_epoch"] = 5
    record = {**RECORD, "trial": "t2", "hyperparameters": {}}
    result = run_trial(config, tmp_path / "t", "1-perfect", record)
    assert result.status == "failed"
    assert "no validation epoch finished" in result.error
    assert json.loads((tmp_path / "t" / "result.json").read_text())["objective"] is None
    assert math.isinf(load_result(tmp_path / "t").objective)


def test_unreadable_data_stops_the_search_instead_of_failing_each_trial(base, tmp_path):
    base = {**base, "data": {**base["data"], "data_dir": str(tmp_path / "absent")}}
    config = trial_config(base, {}, tmp_path / "t", Budget(max_epochs=1))
    with pytest.raises((DatasetError, FileNotFoundError)):
        run_trial(
            config, tmp_path / "t", "val_loss", {**RECORD, "trial": "t3", "hyperparameters": {}}
        )


def test_a_trial_is_a_real_fit_recorded_last(base, tmp_path):
    trial_dir = tmp_path / "trial"
    point = {"model": "transformer", "dim": 16, "depth": 1, "heads": 2, "lr": 3e-3}
    config = trial_config(base, point, trial_dir, Budget(max_epochs=1))
    result = run_trial(
        config, trial_dir, "val_loss", {**RECORD, "trial": "t0", "hyperparameters": point}
    )
    assert result.status == "ok"
    assert result.error is None
    assert result.objective == pytest.approx(result.val_loss)
    assert math.isfinite(result.objective)
    assert 0.0 <= result.val_perfect <= 1.0
    assert result.epochs == 1
    assert result.wall_seconds > 0
    assert result.energy_joules > 0
    assert result.energy_estimated is True
    assert load_result(trial_dir) == result
    saved = yaml.safe_load((trial_dir / "trial.yaml").read_text())
    assert saved["model"]["model"]["init_args"]["dim"] == 16
    assert (trial_dir / "checkpoints" / "best.ckpt").is_file()
    assert (
        json.loads((trial_dir / "energy.json").read_text())["stages"]["fit"]["total"]["joules"] > 0
    )


def test_a_failing_fit_is_recorded_and_scores_infinity(base, tmp_path):
    trial_dir = tmp_path / "bad"
    (trial_dir / "leftover").mkdir(parents=True)  # an interrupted attempt is cleared first
    point = {"lr": -1.0}
    config = trial_config(base, point, trial_dir, Budget(max_epochs=1))
    result = run_trial(
        config, trial_dir, "1-perfect", {**RECORD, "trial": "t1", "hyperparameters": point}
    )
    assert result.status == "failed"
    assert math.isinf(result.objective)
    assert "learning rate" in result.error
    assert (trial_dir / "error.txt").read_text().startswith("Traceback")
    assert not (trial_dir / "leftover").exists()
    assert load_result(trial_dir).status == "failed"


def test_unfinished_trial_has_no_result(tmp_path):
    assert load_result(tmp_path) is None
