"""Lightning callbacks: the results table printed (and saved) after ``lcag test``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

__all__ = ["ResultsTable"]


class ResultsTable(pl.Callback):
    """After testing, print the perfect-tree rates overall and per leaf count, known vs unseen
    topologies, and write them to ``results.json`` in the run's log directory.

    Args:
        path: where to write the JSON (default: ``<log_dir>/results.json``).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        results: dict[str, Any] = getattr(pl_module, "results", {})
        subsets = [s for s in ("test", "test_unseen") if s in results]
        if not subsets:
            return
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it.
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "results.json"
        if trainer.global_rank != 0:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Perfect-tree rate (argmax / valid-tree decoding)")
        table.add_column("leaves", justify="right")
        labels = {"test": "known topologies", "test_unseen": "unseen topologies"}
        for subset in subsets:
            table.add_column(labels[subset], justify="right")
        sizes = sorted({n for s in subsets for n in results[s]["by_size"]["perfect_argmax"]})

        def cell(subset: str, n: int | None) -> str:
            info = results[subset]
            if n is None:
                argmax, decoded, events = (
                    info["perfect_argmax"],
                    info.get("perfect_decoded"),
                    info["events"],
                )
            else:
                if n not in info["by_size"]["perfect_argmax"]:
                    return "-"
                argmax, events = info["by_size"]["perfect_argmax"][n]
                decoded = info["by_size"].get("perfect_decoded", {}).get(n, (None,))[0]
            text = f"{argmax:6.1%}" + (f" / {decoded:6.1%}" if decoded is not None else "")
            return f"{text}  ({events})"

        for n in sizes:
            table.add_row(str(n), *(cell(s, n) for s in subsets))
        table.add_row("all", *(cell(s, None) for s in subsets), style="bold")
        Console().print(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
