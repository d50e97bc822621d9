"""``EnergyLogger``: the energy monitor as a Lightning callback.

Training and inference are kept apart: batches of training count as ``train``; validation,
test and predict loops count as ``inference``. Per epoch it logs to every Lightning logger

    energy/train_J, energy/train_W        (the epoch's training, summed over all processes)
    energy/val_J,   energy/val_W          (the epoch's validation)

and after ``fit``/``validate``/``test``/``predict`` the run's totals (``energy/fit_train_J``,
...). It writes ``energy.json`` in the run's log directory with the sensors, whether the
figures are estimated (and why), the node composition, and per stage the phases, totals and
epochs. ``lcag fit`` adds one automatically when a config has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lcag.energy.monitor import (
    OTHER,
    EnergyMonitor,
    PhaseTotals,
    energy_summary,
)
from lcag.energy.sensors import DEFAULT_WATTS_PER_CORE, nvml_indices
from lcag.files import atomic_write_json

__all__ = ["EnergyLogger"]

TRAIN, INFERENCE = "train", "inference"


class EnergyLogger(pl.Callback):
    """Log joules and average watts per epoch and per run; write ``energy.json``.

    Args:
        watts_per_core: power per busy core (W) for the estimate used where the node has no
            RAPL or NVML sensor (the report then says ``"estimated": true`` and why).
        poll_seconds: background sensor read interval (catches counter wrap-arounds).
        path: where to write the JSON (default ``<log_dir>/energy.json``).
    """

    def __init__(
        self,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        poll_seconds: float = 10.0,
        path: str | None = None,
    ) -> None:
        self.watts_per_core = watts_per_core
        self.poll_seconds = poll_seconds
        self.path = path
        self.monitor: EnergyMonitor | None = None
        self.epochs: list[dict[str, float]] = []
        self._epoch_start: dict[str, dict[str, float]] = {}
        self._stage_start: dict[str, dict[str, float]] = {}

    # -- set-up and tear-down ----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.monitor is None:
            # One process: read its own GPU only (HPO ranks share a node, one GPU each).
            # Several: local rank 0 reads the node's sensors, the others add nothing to them.
            device = trainer.strategy.root_device
            on_gpu = device.type == "cuda"
            own = [device.index or 0] if on_gpu and trainer.world_size == 1 else None
            self.monitor = EnergyMonitor(
                watts_per_core=self.watts_per_core,
                poll_seconds=self.poll_seconds,
                node_sensors=trainer.local_rank == 0,
                gpu_indices=nvml_indices(own) if on_gpu else None,
                use_gpu=on_gpu,
            )
        self.monitor.start()
        self._stage_start = self.monitor.totals()
        self.epochs = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning skips teardown when a run raises: stop the polling thread here.
        if self.monitor is not None:
            self.monitor.stop()

    # -- phases ------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._monitor.totals()
        self._monitor.switch(TRAIN)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitor.switch(INFERENCE)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._monitor.switch(None)
        elif trainer.state.fn == "fit":
            self._monitor.switch(TRAIN)
        elif trainer.state.fn == "validate":
            self._finish_stage(trainer, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitor.switch(INFERENCE)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitor.switch(INFERENCE)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitor.switch(None)
        epoch = _difference(self._monitor.totals(), self._epoch_start)
        joules = _sum_over_ranks(trainer, [_get(epoch, TRAIN), _get(epoch, INFERENCE)])
        train = {"joules": joules[0], "seconds": _get(epoch, TRAIN, "seconds")}
        val = {"joules": joules[1], "seconds": _get(epoch, INFERENCE, "seconds")}
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "train_joules": round(train["joules"], 3),
                "train_seconds": round(train["seconds"], 3),
                "inference_joules": round(val["joules"], 3),
                "inference_seconds": round(val["seconds"], 3),
            }
        )
        metrics = {
            "energy/train_J": train["joules"],
            "energy/train_W": _watts(train),
            "energy/val_J": val["joules"],
            "energy/val_W": _watts(val),
        }
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_fit_end: Lightning tears the strategy down before it, and the sum over ranks
        # is a collective.
        self._finish_stage(trainer, "fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, "test")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_stage(trainer, "predict")

    # -- reporting ---------------------------------------------------------------------------
    def _finish_stage(self, trainer: pl.Trainer, stage: str) -> None:
        self._monitor.switch(None)
        own = _difference(self._monitor.totals(), self._stage_start)
        phases = (TRAIN, INFERENCE, OTHER)  # the same list on every rank: a collective follows
        flag = float(self._monitor.estimated)
        *joules, estimated_ranks = _sum_over_ranks(trainer, [*(_get(own, p) for p in phases), flag])
        totals = {
            p: {"joules": j, "seconds": _get(own, p, "seconds")}
            for p, j in zip(phases, joules, strict=True)
            if p in own
        }
        summary = energy_summary(totals)
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it.
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "energy.json"
        if trainer.global_rank != 0:
            return
        metrics = {}
        for phase, entry in summary["phases"].items():
            if phase != OTHER:
                metrics[f"energy/{stage}_{phase}_J"] = entry["joules"]
                metrics[f"energy/{stage}_{phase}_W"] = entry["watts"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        stage_report: dict[str, Any] = {**summary, "world_size": trainer.world_size}
        if stage == "fit":
            stage_report["epochs"] = self.epochs
        # A new fit starts a new record; validate/test/predict add to the fit's.
        report = {} if stage == "fit" else _read_previous(path)
        report.update(self._monitor.describe())
        report["estimated"] = estimated_ranks > 0  # on any rank
        report.setdefault("stages", {})[stage] = stage_report
        atomic_write_json(path, report)
        self.report_path = path

    @property
    def _monitor(self) -> EnergyMonitor:
        if self.monitor is None:
            raise RuntimeError("EnergyLogger used before Lightning called its setup()")
        return self.monitor


def _difference(now: PhaseTotals, start: PhaseTotals) -> PhaseTotals:
    return {
        p: {k: v - start.get(p, {}).get(k, 0.0) for k, v in entry.items()}
        for p, entry in now.items()
    }


def _get(totals: dict[str, dict[str, float]], phase: str, key: str = "joules") -> float:
    return float(totals.get(phase, {}).get(key, 0.0))


def _sum_over_ranks(trainer: pl.Trainer, values: list[float]) -> list[float]:
    """Sum per-process joules over all processes (a collective: every rank calls it)."""
    if trainer.world_size == 1 or not values:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
    return trainer.strategy.reduce(tensor, reduce_op="sum").tolist()


def _watts(entry: dict[str, float]) -> float:
    return entry["joules"] / entry["seconds"] if entry["seconds"] > 0 else 0.0


def _read_previous(path: Path) -> dict[str, Any]:
    """The stages an earlier ``fit`` or ``test`` wrote to the same file (kept, not lost)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}
