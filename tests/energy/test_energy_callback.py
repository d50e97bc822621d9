"""EnergyLogger in real `lcag fit` and `lcag test` runs (in-process, tiny data, CPU)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lcag.cli import main

ROOT = Path(__file__).resolve().parents[2]
ROUNDING = 5e-4  # energy.json rounds to 3 decimals
EPS32 = float(np.finfo(np.float32).eps)

NODE_MAY_HAVE_SENSORS = Path("/sys/class/powercap").exists() or Path("/proc/driver/nvidia").exists()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NODE_MAY_HAVE_SENSORS, reason="this node may measure instead of estimate"),
    # third-party: Lightning's CLI calls jsonargparse 4.x APIs deprecated for 5.0
    pytest.mark.filterwarnings(
        r"ignore:(?s).*was deprecated in v4\.\d+\.\d+ and will be removed in v5:DeprecationWarning"
    ),
    # the config's two loggers share one directory, which `lcag test` then reuses
    pytest.mark.filterwarnings("ignore:Experiment logs directory .* exists and is not empty"),
]


def write_config(tmp_path: Path, data_dir: Path, energy_logger: bool = True, **trainer) -> Path:
    """configs/fit/tiny_transformer.yaml made small, logging under tmp_path/runs."""
    config = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_transformer.yaml").read_text())
    run = tmp_path / "runs"
    config["data"].update(data_dir=str(data_dir), max_train_events=256, max_eval_events=64)
    config["model"]["model"]["init_args"].update(dim=16, depth=1, heads=2)
    config["trainer"].update(
        {"max_epochs": 2, "log_every_n_steps": 1, "enable_progress_bar": False, **trainer}
    )
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(run)
    callbacks = [
        c for c in config["trainer"]["callbacks"] if "RichProgressBar" not in c["class_path"]
    ]
    if not energy_logger:
        callbacks = [c for c in callbacks if "EnergyLogger" not in c["class_path"]]
    for callback in callbacks:
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(run / "checkpoints")
    config["trainer"]["callbacks"] = callbacks
    path = tmp_path / "tiny_transformer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def lcag(monkeypatch):
    """`lcag` in this process (its argv is the command, not pytest's)."""
    monkeypatch.setattr(sys, "argv", ["lcag"])
    return main


def csv_column_values(path: Path) -> dict[str, list[float]]:
    """The non-empty values of every column of a CSVLogger's metrics.csv, in row order."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {
        name: [float(row[name]) for row in rows if row[name] not in ("", None)] for name in rows[0]
    }


def test_fit_then_test_write_both_stages_to_energy_json(lcag, tiny_data, tmp_path):
    config = write_config(tmp_path, tiny_data)
    lcag(["fit", "--config", str(config)])
    log_dir = tmp_path / "runs" / "tiny_transformer"
    report = json.loads((log_dir / "energy.json").read_text())
    assert report["estimated"] is True
    assert "RAPL" in report["estimate_reason"]
    assert report["sensors"][0]["name"] == "cpu-time-estimate"
    assert report["node"]["cpu_cores"] >= 1
    fit = report["stages"]["fit"]
    assert [e["epoch"] for e in fit["epochs"]] == [0, 1]
    for epoch in fit["epochs"]:
        assert epoch["train_joules"] > 0
        assert epoch["inference_joules"] > 0
        assert epoch["train_seconds"] > 0
    train, inference = fit["phases"]["train"], fit["phases"]["inference"]
    # The JSON rounds every joule, second and watt figure to 3 decimals: each is off by up to
    # ROUNDING. Only epochs switch to the train phase, so the fit's train joules are the sum of
    # the epochs' (float64, exact to ~1e-15) up to the rounding of those n + 1 figures; the
    # inference phase may also hold time outside the epochs (a sanity check), never less.
    n = len(fit["epochs"])
    epochs_train = [e["train_joules"] for e in fit["epochs"]]
    epochs_val = [e["inference_joules"] for e in fit["epochs"]]
    assert train["joules"] == pytest.approx(sum(epochs_train), rel=0, abs=(n + 1) * ROUNDING)
    assert inference["joules"] >= sum(epochs_val) - (n + 1) * ROUNDING
    # watts = round(J / s) of the unrounded J and s; J / s of the rounded ones is off by
    # (J / s) (ROUNDING / J + ROUNDING / s) to first order (x 1.01 for the second)
    ratio = train["joules"] / train["seconds"]
    slack = ROUNDING + 1.01 * ratio * (ROUNDING / train["joules"] + ROUNDING / train["seconds"])
    assert train["watts"] == pytest.approx(ratio, rel=0, abs=slack)
    assert fit["total"]["joules"] >= train["joules"] + inference["joules"] - 3 * ROUNDING
    assert fit["world_size"] == 1
    logged = csv_column_values(log_dir / "metrics.csv")
    assert {"energy/train_J", "energy/train_W", "energy/val_J", "energy/val_W"} <= set(logged)
    # logged per epoch as float32 tensors (eps32 relative), the JSON rounds to mJ (ROUNDING)
    for name, values in (("energy/train_J", epochs_train), ("energy/val_J", epochs_val)):
        slack = ROUNDING + EPS32 * max(values)
        assert logged[name] == pytest.approx(values, rel=0, abs=slack), name
    assert logged["energy/fit_train_J"] == [train["joules"]]
    assert logged["energy/fit_inference_J"] == [inference["joules"]]

    checkpoint = tmp_path / "runs" / "checkpoints" / "best.ckpt"
    lcag(["test", "--config", str(config), "--ckpt_path", str(checkpoint)])
    report = json.loads((log_dir / "energy.json").read_text())
    assert set(report["stages"]) == {"fit", "test"}
    assert report["stages"]["fit"] == fit
    test = report["stages"]["test"]
    assert test["phases"]["inference"]["joules"] > 0
    assert "train" not in test["phases"]
    assert "epochs" not in test
    assert report["estimated"] is True


def test_a_config_without_energy_logger_still_writes_energy_json(lcag, tiny_data, tmp_path):
    config = write_config(
        tmp_path, tiny_data, energy_logger=False, max_epochs=1, limit_train_batches=2
    )
    lcag(["fit", "--config", str(config)])
    report = json.loads((tmp_path / "runs" / "tiny_transformer" / "energy.json").read_text())
    assert report["estimated"] is True
    assert report["sensors"][0]["watts_per_core"] == 10.0
    assert len(report["stages"]["fit"]["epochs"]) == 1
    assert report["stages"]["fit"]["phases"]["train"]["joules"] > 0
