"""Lightning callbacks: the results table printed (and saved) after ``lcag test``, and the
calibration of tree probabilities written into the best checkpoint after ``lcag fit``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

__all__ = ["ResultsTable", "TreeCalibration", "calibrate_checkpoint", "results_tables"]

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
        console.print(caption(reported_methods(results[subsets[0]])))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
        console.print(f"results in {path}")


class TreeCalibration(pl.Callback):
    """After fitting, fit the tree temperature (:meth:`lcag.Reconstructor.calibrate`) of the
    best checkpoint on validation events and write it into that checkpoint, so that every
    ``Reconstruction.probability`` read from it is calibrated.

    Args:
        max_events: validation events used (at most ``EXACT_MAX_LEAVES`` leaves each).
    """

    def __init__(self, max_events: int = 1000) -> None:
        self.max_events = max_events

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        path = getattr(callback, "best_model_path", "") if callback else ""
        datamodule = getattr(trainer, "datamodule", None)
        if pl_module.hparams.get("target", "lcag") != "lcag":
            print("tree probabilities are LCAG-only: no calibration for an LCAS model")
            path = ""
        if path and datamodule is not None and trainer.global_rank == 0:
            temperature = calibrate_checkpoint(path, datamodule.data_dir, self.max_events)
            known, other = (", ".join(f"{t:.3g}" for t in row[2:]) for row in temperature)
            print(
                "tree probabilities calibrated on validation: temperatures by leaf count "
                f"(2..) {known} for trees of training topologies, {other} for others"
            )
        trainer.strategy.barrier()


def calibrate_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    max_events: int = 1000,
    grammar_events: int | None = None,
) -> np.ndarray:
    """Fit the tree temperatures (per leaf count, for trees of training topologies and for
    others: :meth:`lcag.Reconstructor.calibrate`) of checkpoint ``path`` on the
    validation split of ``data_dir`` (up to ``max_events``), and as many events again of its
    ``val_unknown`` split where it has one (topologies never trained on: the probabilities
    are then calibrated for a mix of known and unseen decays, not for known ones alone), and
    write them into the checkpoint (``tree_temperature``; the file is replaced atomically).
    With a topology prior and a dataset whose topologies carry masses, the decay grammar is
    learnt from the training topologies and its reranking fitted on the same events (the
    first ``grammar_events`` of each split where given; 0: none;
    :meth:`lcag.Reconstructor.fit_rerank`), kept as ``grammar_rerank``. Returns the
    temperatures."""
    from lcag.checkpoints import load_checkpoint
    from lcag.data import LCAGDataset, read_manifest
    from lcag.inference import Reconstructor

    splits = [s for s in ("val", "val_unknown") if s in read_manifest(data_dir)["splits"]]
    by_split = []
    for split in splits:
        dataset = LCAGDataset(data_dir, split, max_events=max_events)
        by_split.append(dataset.__getitems__(range(len(dataset))))
    reco = Reconstructor.from_checkpoint(path)
    temperature = reco.calibrate([e for events in by_split for e in events])
    rerank = None
    wanted = grammar_events != 0 and reco.topology_log_odds > -np.inf
    grammar = _grammar(data_dir) if wanted else None
    if grammar is not None:
        rerank = reco.fit_rerank([events[:grammar_events] for events in by_split], grammar)
        learnt = f"decay grammar learnt from {len(grammar.types)} training particles"
        if rerank.weight > 0:
            alone = " (the grammar alone)" if rerank.weight == np.inf else ""
            print(
                f"{learnt}: reranks events whose tree is of no training topology, weight "
                f"{rerank.weight:g}{alone} chosen on validation"
            )
        else:
            print(f"{learnt}: off, it did not help on validation")
    checkpoint = load_checkpoint(path)
    checkpoint["state_dict"]["tree_temperature"] = torch.from_numpy(temperature.copy())
    if rerank is not None:
        checkpoint["grammar_rerank"] = rerank.to_dict()
    partial = Path(f"{path}.calibrating")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return temperature


def _grammar(data_dir: str | Path) -> Any:
    """The decay grammar of the dataset's training topologies, or ``None`` (printed why) when
    its topologies carry no masses to learn from."""
    from lcag.errors import LCAGError
    from lcag.evidence.grammar import DecayGrammar

    try:
        grammar = DecayGrammar.from_dataset(data_dir)
    except (LCAGError, KeyError, ValueError) as exc:
        print(f"no decay grammar: the training topologies cannot give one ({exc})")
        return None
    if not len(grammar.types) and not len(grammar.roots):
        return None
    return grammar


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
        by_size = info["by_size"]
        methods = reported_methods(info)
        for column in ("leaves", "events", *(column_label(m, methods) for m in methods)):
            table.add_column(column, justify="right")
        for n, (_, events) in sorted(by_size["perfect_argmax"].items()):
            rates = [_percent(by_size.get(m, {}).get(n, (None,))[0]) for m in methods]
            table.add_row(str(n), str(events), *rates)
        totals = [_percent(info.get(m)) for m in methods]
        table.add_row("all", str(info["events"]), *totals, style="bold")
        tables.append(table)
    return tables


METHODS = (
    "perfect_argmax",
    "perfect_decoded",
    "perfect_prior",
    "perfect_nodes",
    "perfect_full",
    "perfect_grammar",
)
_LABELS = {
    "perfect_argmax": ("argmax", "each leaf pair's likeliest class on its own (may be no tree)"),
    "perfect_decoded": ("valid tree", "the likeliest decay tree from the pair scores alone"),
    "perfect_prior": ("+ mass prior", "the likeliest tree with each node's mass evidence added"),
    "perfect_nodes": (
        "+ subset head",
        "with the learnt subset head's node evidence instead",
    ),
    "perfect_full": (
        "+ topology prior",
        "and trees of the training topologies favoured by the topology prior (the full method)",
    ),
    "perfect_grammar": (
        "+ grammar",
        "and events whose tree is of no training topology reranked by the decay grammar "
        "learnt from the training topologies (what Reconstructor gives)",
    ),
}


def reported_methods(info: dict[str, Any]) -> list[str]:
    """The decoding methods a subset's results hold, in :data:`METHODS` order."""
    return [m for m in METHODS if m in info.get("by_size", {}) or m in info]


def _label(method: str, methods: list[str]) -> tuple[str, str]:
    """A method's column title and description; without a subset head (no
    ``perfect_prior`` column) the node evidence is the mass prior."""
    if method == "perfect_nodes" and "perfect_prior" not in methods:
        return _LABELS["perfect_prior"]
    return _LABELS[method]


def column_label(method: str, methods: list[str]) -> str:
    """A method's column title."""
    return _label(method, methods)[0]


def caption(methods: list[str]) -> str:
    """What each column is, one line per method (weights chosen on the validation split)."""
    lines = [": ".join(_label(method, methods)) for method in methods]
    if any(m in methods for m in ("perfect_prior", "perfect_nodes", "perfect_full")):
        lines.append(
            "node-evidence weights and the topology prior's odds were chosen on validation "
            "(known topologies, and unseen ones where the data has a val_unknown split)"
        )
    return "\n".join(lines)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"
