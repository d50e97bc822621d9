"""``lcag``: train, validate, test and predict from YAML configs (a LightningCLI).

    lcag fit --config configs/fit/tiny_transformer.yaml
    lcag test --config configs/fit/tiny_transformer.yaml --ckpt_path best
    lcag export --ckpt best.ckpt --format onnx --out model.onnx    # lcag.export.cli
    lcag info best.ckpt

A config file is the whole experiment: model (by ``class_path``), data, trainer, callbacks.
Every run logs its energy: a config without an :class:`lcag.energy.EnergyLogger` callback gets
one with the defaults (``energy.json`` in the run directory).

``lcag test`` and ``lcag validate`` print lcag's own results table (:class:`lcag.callbacks.
ResultsTable`, known and unseen topologies side by side); Lightning's per-dataloader table is
off (``--verbose true`` turns it back on). lcag's errors (a missing dataset, a corrupt shard or
checkpoint) end the command with one line on stderr and exit status 2 (``LCAG_TRACEBACK=1``
shows the traceback).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lcag.checkpoints import load_checkpoint
from lcag.console import run_console
from lcag.data import LCAGDataModule
from lcag.energy.callback import EnergyLogger
from lcag.export.cli import SUBCOMMANDS as EXPORT_SUBCOMMANDS
from lcag.export.cli import main as export_main
from lcag.module import LCAGModule

__all__ = ["LCAGCLI", "main", "quiet_known_warnings", "tensorboard_without_tensorflow"]


def quiet_known_warnings() -> None:
    """Silence third-party warnings with nothing for a user to act on."""
    # "Seed set to 0" on stderr before every run: the seed is in the saved config.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning 2.6 on torch 2.13: torch's LeafSpec, on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Lightning's CLI uses jsonargparse APIs deprecated in jsonargparse 4.49.
    warnings.filterwarnings(
        "ignore",
        message=r"(?s).*(JsonargparseDeprecation|was deprecated in v4\.)",
        category=DeprecationWarning,
    )


# ckpt_path values that Lightning resolves itself rather than reading a file
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


def tensorboard_without_tensorflow() -> None:
    """Let TensorBoard logging use its own TensorFlow stub rather than import TensorFlow.

    TensorFlow is installed for the simulator (phasespace); TensorBoard's writer imports it when
    present, which costs seconds and prints TensorFlow's start-up lines on stderr of every run.
    ``tensorboard.compat.notf`` is TensorBoard's switch to its stub; writing event files works
    the same.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", ModuleType("tensorboard.compat.notf"))


class LCAGCLI(LightningCLI):
    """LightningCLI that adds an :class:`EnergyLogger` when the config has none, checks
    ``--ckpt_path`` before anything runs, and leaves the results table to lcag."""

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # Lightning's table repeats every metric under each dataloader; ResultsTable
            # prints known and unseen topologies side by side instead.
            parser.set_defaults(verbose=False)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and _is_local_file_path(str(ckpt_path)):
            load_checkpoint(ckpt_path)  # CheckpointError for a missing, truncated, corrupt file

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, EnergyLogger) for c in trainer.callbacks):
            trainer.callbacks.append(EnergyLogger())
        return trainer


def _is_local_file_path(ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` names a local file (not ``best``, ``last``, a URL, ...)."""
    keyword = ckpt_path.split(":", 1)[0]
    return keyword not in CKPT_KEYWORDS and "://" not in ckpt_path and bool(Path(ckpt_path).name)


MORE_SUBCOMMANDS = (
    "\nalso:\n"
    "  lcag export --ckpt CKPT --format onnx|torchscript --out FILE   (lcag export --help)\n"
    "  lcag info CKPT                                                 (lcag info --help)"
)


def main(args: list[str] | None = None) -> int:
    """``lcag fit|validate|test|predict|export|info``; returns the exit status.

    ``export`` and ``info`` (:mod:`lcag.export.cli`) are plain argparse commands, run before
    (and without) LightningCLI.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXPORT_SUBCOMMANDS:
        return export_main(argv)
    quiet_known_warnings()
    tensorboard_without_tensorflow()

    def run() -> None:
        LCAGCLI(LCAGModule, LCAGDataModule, save_config_kwargs={"overwrite": True}, args=args)

    try:
        return run_console("lcag", run, user_errors=(MisconfigurationException,))
    finally:
        if argv[:1] in (["-h"], ["--help"]):  # Lightning's help names its own subcommands only
            print(MORE_SUBCOMMANDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
