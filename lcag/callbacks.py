"""Lightning callbacks: the results table printed (and saved) after ``lcag test``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

__all__ = ["ResultsTable", "results_tables"]

SUBSET_LABELS = {"test": "known topologies", "test_unseen": "unseen topologies"}


class ResultsTable(pl.Callback):
    """After testing, print the perfect-tree rates overall and per leaf count, one table for
    known and one for unseen topologies, and write them to ``results.json`` in the run's log
    directory. (Lightning's own per-dataloader table is off in ``lcag test``.)

    Args:
        path: where to write the JSON (default: ``<log_dir>/results.json``).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """After testing (and after the progress bar has closed): print and save."""
        results: dict[str, Any] = getattr(pl_module, "results", {})
        subsets = [s for s in ("test", "test_unseen") if s in results]
        if stage != "test" or not subsets:
            return
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it.
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "results.json"
        if trainer.global_rank != 0:
            return
        from rich.console import Console

        console = Console()
        for table in results_tables(results, subsets):
            console.print(table)
        console.print(CAPTION)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
        console.print(f"results in {path}")


def results_tables(results: dict[str, Any], subsets: list[str]) -> list[Any]:
    """One rich table per subset (known, unseen topologies): a row per leaf count."""
    from rich.table import Table

    tables = []
    for subset in subsets:
        info = results[subset]
        table = Table(
            title=f"{SUBSET_LABELS[subset]}: perfect-tree rate on {info['events']} test events",
            min_width=64,
        )
        for column in ("leaves", "events", "argmax", "valid tree", "+ mass prior"):
            table.add_column(column, justify="right")
        by_size = info["by_size"]
        decoded, full = by_size.get("perfect_decoded", {}), by_size.get("perfect_full", {})
        for n, (argmax, events) in sorted(by_size["perfect_argmax"].items()):
            table.add_row(
                str(n), str(events), f"{argmax:.1%}",
                _percent(decoded.get(n, (None,))[0]), _percent(full.get(n, (None,))[0]),
            )  # fmt: skip
        table.add_row(
            "all", str(info["events"]), f"{info['perfect_argmax']:.1%}",
            _percent(info.get("perfect_decoded")), _percent(info.get("perfect_full")),
            style="bold",
        )  # fmt: skip
        tables.append(table)
    return tables


CAPTION = (
    "argmax: each leaf pair's likeliest class on its own (may be no tree)\n"
    "valid tree: the likeliest decay tree from the pair scores alone\n"
    "+ mass prior: the likeliest tree with each node's mass evidence (the full method)"
)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"
