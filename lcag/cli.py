"""``lcag``: train, validate, test and predict from YAML configs (a LightningCLI).

    lcag fit --config configs/fit/tiny_transformer.yaml
    lcag test --config configs/fit/tiny_transformer.yaml --ckpt_path best

A config file is the whole experiment: model (by ``class_path``), data, trainer, callbacks.
Every run logs its energy: a config without an :class:`lcag.energy.EnergyLogger` callback gets
one with the defaults (``energy.json`` in the run directory).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lcag.data import LCAGDataModule
from lcag.energy.callback import EnergyLogger
from lcag.module import LCAGModule

__all__ = ["LCAGCLI", "main", "quiet_known_warnings"]


def quiet_known_warnings() -> None:
    """Silence third-party warnings with nothing for a user to act on."""
    # Lightning 2.6 on torch 2.13: torch's LeafSpec, on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Lightning's CLI uses jsonargparse APIs deprecated in jsonargparse 4.49.
    warnings.filterwarnings(
        "ignore",
        message=r"(?s).*(JsonargparseDeprecation|was deprecated in v4\.)",
        category=DeprecationWarning,
    )


class LCAGCLI(LightningCLI):
    """LightningCLI that adds an :class:`EnergyLogger` when the config has none."""

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, EnergyLogger) for c in trainer.callbacks):
            trainer.callbacks.append(EnergyLogger())
        return trainer


def main(args: list[str] | None = None) -> None:
    quiet_known_warnings()
    LCAGCLI(
        LCAGModule,
        LCAGDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
