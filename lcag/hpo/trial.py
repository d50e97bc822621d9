"""One evaluation of a search: a real Lightning fit of one point of the space, on a budget.

A trial lives in its own directory (``<out>/trials/<trial id>/``):

    trial.yaml     the complete fit config (``lcag fit --config trial.yaml`` reruns it)
    result.json    written last and atomically: hyperparameters, objective, metrics, wall time,
                   energy. A trial directory without it is unfinished and is redone.
    energy.json    the fit's energy (lcag.energy.EnergyLogger)
    csv/, tensorboard/, checkpoints/   the fit's loggers and checkpoints
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import yaml

from lcag.cli import LCAGCLI, quiet_known_warnings
from lcag.data import LCAGDataModule
from lcag.energy.callback import EnergyLogger
from lcag.errors import ConfigError
from lcag.files import atomic_write_json, atomic_write_text
from lcag.hpo.config import Budget
from lcag.hpo.space import apply
from lcag.module import LCAGModule

__all__ = ["OBJECTIVES", "TrialResult", "load_result", "run_trial", "trial_config"]

Objective = Literal["val_loss", "1-perfect"]
OBJECTIVES = ("val_loss", "1-perfect")
RESULT = "result.json"
CONFIG = "trial.yaml"


@dataclass
class TrialResult:
    """The record of a finished trial (``result.json``; one row of the results table)."""

    trial: str
    island: int
    rank: int
    generation: int
    hyperparameters: dict[str, Any]
    objective: float
    status: Literal["ok", "failed"]
    val_loss: float | None = None
    val_perfect: float | None = None
    epochs: int = 0
    wall_seconds: float = 0.0
    energy_joules: float | None = None
    energy_estimated: bool | None = None
    device: str = "cpu"
    error: str | None = None
    finished_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_config(
    base: Mapping[str, Any],
    point: Mapping[str, Any],
    trial_dir: Path,
    budget: Budget,
    device: tuple[str, list[int] | int] = ("cpu", 1),
) -> dict[str, Any]:
    """The fit config of one trial: ``base`` with ``point`` applied, the budget, the device,
    and every output (loggers, checkpoints) moved into ``trial_dir``."""
    config = apply(base, point)
    trainer = config.setdefault("trainer", {})
    trainer["max_epochs"] = budget.max_epochs
    trainer.pop("max_steps", None)
    if budget.max_minutes is not None:
        trainer["max_time"] = _as_duration(budget.max_minutes)
    accelerator, devices = device
    trainer.update(accelerator=accelerator, devices=devices, num_nodes=1)
    if trainer.get("strategy") not in (None, "auto"):
        trainer["strategy"] = "auto"  # one device per trial
    if accelerator == "cpu" and str(trainer.get("precision", "32")).startswith("16"):
        trainer["precision"] = "32-true"
    trainer["enable_progress_bar"] = False
    trainer["enable_model_summary"] = False
    for logger in _as_list(trainer.get("logger")):
        if isinstance(logger, dict):  # <trial>/tensorboard/, <trial>/csv/metrics.csv
            kind = logger.get("class_path", "logs").rsplit(".", 1)[-1].removesuffix("Logger")
            logger.setdefault("init_args", {}).update(
                save_dir=str(trial_dir), name="", version=kind.lower()
            )
    callbacks = []
    for callback in _as_list(trainer.get("callbacks")):
        class_path = callback.get("class_path", "") if isinstance(callback, dict) else ""
        if class_path.endswith(("ProgressBar", "RichModelSummary")):
            continue
        if class_path.endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(trial_dir / "checkpoints")
        if class_path.endswith("EnergyLogger"):
            callback.setdefault("init_args", {})["path"] = str(trial_dir / "energy.json")
        callbacks.append(callback)
    trainer["callbacks"] = callbacks
    trainer["default_root_dir"] = str(trial_dir)
    data = config.setdefault("data", {})
    if budget.max_train_events is not None:
        data["max_train_events"] = budget.max_train_events
    if budget.max_eval_events is not None:
        data["max_eval_events"] = budget.max_eval_events
    return config


def run_trial(
    config: Mapping[str, Any],
    trial_dir: Path,
    objective: Objective,
    record: Mapping[str, Any],
) -> TrialResult:
    """Fit ``config`` in this process and write ``result.json`` into ``trial_dir``.

    ``record`` holds the trial's identity (``trial``, ``island``, ``rank``, ``generation``,
    ``hyperparameters``, ``device``). A fit that raises (diverges, bad combination) is recorded
    as ``failed`` with the error and scores ``inf``; the search goes on.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective = {objective!r}: one of {list(OBJECTIVES)}")
    if trial_dir.exists():  # an interrupted attempt: start it again from nothing
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    config_path = atomic_write_text(
        trial_dir / CONFIG, yaml.safe_dump(dict(config), sort_keys=False)
    )
    start = time.perf_counter()
    try:
        metrics = _fit(config_path)
    except Exception as err:  # a failed trial must not end the search
        result = TrialResult(
            **record,
            objective=math.inf,
            status="failed",
            wall_seconds=time.perf_counter() - start,
            error=f"{type(err).__name__}: {err}",
        )
        (trial_dir / "error.txt").write_text(traceback.format_exc())
    else:
        value = metrics["val_loss"] if objective == "val_loss" else 1.0 - metrics["val_perfect"]
        finite = value is not None and math.isfinite(value)
        result = TrialResult(
            **record,
            objective=float(value) if finite else math.inf,
            status="ok" if finite else "failed",
            error=None if finite else f"{objective} is not finite ({value})",
            wall_seconds=time.perf_counter() - start,
            **metrics,
        )
    atomic_write_json(trial_dir / RESULT, result.to_dict())
    return result


def load_result(trial_dir: Path) -> TrialResult | None:
    """The finished trial recorded in ``trial_dir``, or ``None`` if it did not finish."""
    try:
        payload = json.loads((trial_dir / RESULT).read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise ConfigError(f"{trial_dir / RESULT}: not valid JSON ({err})") from None
    return TrialResult(**payload)


def _fit(config_path: Path) -> dict[str, Any]:
    """Run ``lcag fit --config config_path`` in this process; return its best metrics."""
    best = _BestValidation()
    cli = _fit_cli(config_path)
    trainer = cli.trainer
    trainer.callbacks.append(best)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    energy = next((c for c in trainer.callbacks if isinstance(c, EnergyLogger)), None)
    joules, estimated = None, None
    if energy is not None and getattr(energy, "report_path", None):
        report = json.loads(Path(energy.report_path).read_text())
        joules = report["stages"]["fit"]["total"]["joules"]
        estimated = report["estimated"]
    return {
        "val_loss": best.loss,
        "val_perfect": best.perfect,
        "epochs": trainer.current_epoch,
        "energy_joules": joules,
        "energy_estimated": estimated,
    }


def _fit_cli(config_path: Path) -> LCAGCLI:
    """The model, data and trainer of ``lcag fit --config config_path``, not yet fitted."""
    with warnings.catch_warnings():  # the calling program's sys.argv is not meant for the fit
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")
        quiet_known_warnings()
        return LCAGCLI(
            LCAGModule,
            LCAGDataModule,
            args=["--config", str(config_path)],
            run=False,
            save_config_callback=None,
        )


class _BestValidation(pl.Callback):
    """Keeps the lowest validation loss and the highest perfect-tree rate over the epochs."""

    def __init__(self) -> None:
        self.loss: float | None = None
        self.perfect: float | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (not on_validation_epoch_end: callbacks run before the module logs its epoch metrics)
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if "val/loss" in metrics:
            loss = float(metrics["val/loss"])
            self.loss = loss if self.loss is None else min(self.loss, loss)
        for key in ("val/perfect_decoded", "val/perfect_argmax"):
            if key in metrics:
                rate = float(metrics[key])
                self.perfect = rate if self.perfect is None else max(self.perfect, rate)
                break


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _as_duration(minutes: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS`` for ``minutes``."""
    seconds = max(1, round(minutes * 60))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{mins:02d}:{secs:02d}"
