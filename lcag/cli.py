"""``lcag``: train, validate, test and predict from YAML configs (a LightningCLI).

    lcag fit --config configs/fit/tiny_transformer.yaml
    lcag test --config configs/fit/tiny_transformer.yaml --ckpt_path best

A config file is the whole experiment: model (by ``class_path``), data, trainer, callbacks.
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from lcag.data import LCAGDataModule
from lcag.module import LCAGModule

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    # Lightning 2.6 on torch 2.13 warns about torch's LeafSpec on every run; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    LightningCLI(
        LCAGModule,
        LCAGDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
