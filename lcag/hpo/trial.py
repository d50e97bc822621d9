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
from lcag.energy.sensors import DEFAULT_WATTS_PER_CORE
from lcag.errors import ConfigError, DatasetError
from lcag.files import atomic_write_json, atomic_write_text
from lcag.hpo.config import OBJECTIVES, Budget, Objective
from lcag.hpo.space import apply
from lcag.module import LCAGModule

__all__ = ["TrialResult", "as_list", "fit_cli", "load_result", "run_trial", "trial_config"]

RESULT = "result.json"
_LOCAL_ENVIRONMENT = "lightning.fabric.plugins.environments.LightningEnvironment"
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
        """JSON-ready: a failed trial's infinite objective becomes ``null`` (valid JSON)."""
        payload = asdict(self)
        if not math.isfinite(payload["objective"]):
            payload["objective"] = None
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> TrialResult:
        values = dict(payload)
        if values.get("objective") is None:
            values["objective"] = math.inf
        return cls(**values)


def trial_config(
    base: Mapping[str, Any],
    point: Mapping[str, Any],
    trial_dir: Path,
    budget: Budget,
    device: tuple[str, list[int] | int] = ("cpu", 1),
    watts_per_core: float = DEFAULT_WATTS_PER_CORE,
) -> dict[str, Any]:
    """The fit config of one trial: ``base`` with ``point`` applied, the budget, the device,
    and every output (loggers, checkpoints, energy) moved into ``trial_dir``.

    Raises:
        ConfigError: the base config has a logger other than TensorBoard or CSV (a trial
            cannot give it a run of its own).
    """
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
    # One process per trial, whatever the launcher (srun, mpiexec) says about ranks.
    trainer["plugins"] = [{"class_path": _LOCAL_ENVIRONMENT}]
    if accelerator == "cpu" and str(trainer.get("precision", "32")).startswith("16"):
        trainer["precision"] = "32-true"
    trainer["enable_progress_bar"] = False
    trainer["enable_model_summary"] = False
    for logger in as_list(trainer.get("logger")):
        class_path = logger.get("class_path", "") if isinstance(logger, dict) else str(logger)
        kind = class_path.rsplit(".", 1)[-1]
        if kind not in ("TensorBoardLogger", "CSVLogger"):
            raise ConfigError(
                f"trainer.logger {class_path!r}: lcag-hpo trials support TensorBoardLogger and "
                "CSVLogger only; remove it from the base config"
            )
        logger.setdefault("init_args", {}).update(  # <trial>/tensorboard/, <trial>/csv/
            save_dir=str(trial_dir), name="", version=kind.removesuffix("Logger").lower()
        )
    callbacks = []
    for callback in as_list(trainer.get("callbacks")):
        class_path = callback.get("class_path", "") if isinstance(callback, dict) else ""
        if class_path.endswith(("ProgressBar", "RichModelSummary", "EnergyLogger")):
            continue
        if class_path.endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(trial_dir / "checkpoints")
        callbacks.append(callback)
    energy = {"path": str(trial_dir / "energy.json"), "watts_per_core": watts_per_core}
    callbacks.append({"class_path": "lcag.energy.EnergyLogger", "init_args": energy})
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
    ``hyperparameters``, ``device``). A fit that fails (diverges, an impossible combination,
    no validation within the budget) is recorded as ``failed`` with the error and scores
    ``inf``; the search goes on.

    Raises:
        DatasetError, FileNotFoundError: the data cannot be read. Every trial would fail the
            same way, so the search stops instead of recording it.
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
        value = metrics["val_loss"] if objective == "val_loss" else metrics["val_perfect"]
        if value is None:
            raise TrialFailedError("no validation epoch finished within the budget")
        value = value if objective == "val_loss" else 1.0 - value
        if not math.isfinite(value):
            raise TrialFailedError(f"{objective} is not finite ({value})")
    except (DatasetError, FileNotFoundError):
        raise
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
        result = TrialResult(
            **record,
            objective=float(value),
            status="ok",
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
    try:
        return TrialResult.from_dict(payload)
    except TypeError as err:
        raise ConfigError(f"{trial_dir / RESULT}: not a trial record ({err})") from None


def _fit(config_path: Path) -> dict[str, Any]:
    """Run ``lcag fit --config config_path`` in this process; return its best metrics."""
    best = _BestValidation()
    try:
        cli = fit_cli(config_path)
    except SystemExit:  # jsonargparse reports a config it cannot parse on stderr, then exits
        raise TrialFailedError(f"{config_path} does not parse (the error is above)") from None
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


def fit_cli(config_path: Path) -> LCAGCLI:
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


class TrialFailedError(RuntimeError):
    """A trial's fit ran but gave no usable objective (recorded as ``failed``)."""


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
        for key in ("val/score", "val/perfect_full", "val/perfect_decoded", "val/perfect_argmax"):
            if key in metrics:
                rate = float(metrics[key])
                self.perfect = rate if self.perfect is None else max(self.perfect, rate)
                break


def as_list(value: Any) -> list[Any]:
    """A config entry that may be one item, a list or absent, as a list."""
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
