"""Where a checkpoint's tree probabilities are off: calibration by kind of decoded tree.

Run: ``python benchmarks/bench_calibration.py --ckpt runs/acc_real/tiny_transformer/best.ckpt
--data runs/acc_real/data [--val-events 1000]`` (a checkpoint and data of
``bench_accuracy.py``: the data need ``val_unknown``).

The temperatures are refitted on ``val`` and ``val_unknown`` (``--val-events`` of each, 0 for
all) in two ways, and the expected calibration error (10 bins, ``lcag.evaluate.calibration``)
of the full method's decoded trees printed on ``test`` and ``test_unknown``, with each kind
of tree's events, perfect-tree rate and mean probability:

- ``2 rows`` (what ``TreeCalibration`` fits): trees of a training topology, and others.
- ``3 rows``: trees of a training topology that the pair and node scores decode by
  themselves, those that the topology prior made the decoded tree, and others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lcag.data import LCAGDataset
from lcag.decode import decode
from lcag.evaluate import calibration
from lcag.evidence.calibration import fit_temperatures, labelled_batches
from lcag.inference import Reconstructor, _objects

KINDS = {
    "2 rows": ("training topology", "other"),
    "3 rows": ("training topology", "training topology by the prior", "other"),
}


def decoded_batches(reco: Reconstructor, data: Path, split: str, max_events: int | None) -> list:
    """Per batch of one leaf count: the tempering inputs, the decoded trees (with and
    without the topology prior), whether each is of a training topology, and the truth."""
    dataset = LCAGDataset(data, split, max_events=max_events)
    events = dataset.__getitems__(range(len(dataset)))
    batches = []
    for n, x, mask, truth in labelled_batches(events):
        probs, nodes, _ = reco.outputs(x, mask)
        prior = reco._topology_prior(x, mask, probs.shape[-1])
        if prior is None:
            raise SystemExit(f"{split}: the checkpoint has no topology prior to study")
        alone = decode(probs, mask, node_scores=nodes)
        full = reco.decode(probs, mask, nodes, x=x, prior=prior)
        trees, bonus = prior
        truth_bonus = np.where(reco.catalogue.contains(truth, x, mask), bonus, 0.0)
        batches.append(
            {
                "group": (
                    probs.astype(np.float64),
                    mask,
                    nodes,
                    truth,
                    _objects(trees),
                    bonus,
                    truth_bonus,
                ),
                "x": x,
                "full": full,
                "known": reco.catalogue.contains(full, x, mask),
                "by_prior": ~(full == alone).all(axis=(1, 2)),
                "perfect": (full == truth).all(axis=(1, 2)),
                "n": n,
            }
        )
    return batches


def kind(batch: dict, scheme: str) -> np.ndarray:
    """Each event's row ``(N,)`` under ``scheme``."""
    if scheme == "2 rows":
        return np.where(batch["known"], 0, 1)
    return np.where(batch["known"], np.where(batch["by_prior"], 1, 0), 2)


def fit(batches: list, scheme: str) -> np.ndarray:
    """Temperatures ``(rows, leaf counts)``: one fit per kind (the pooled fit for a kind of
    fewer than 50 events)."""
    rows = []
    for row in range(len(KINDS[scheme])):
        mine = []
        for batch in batches:
            chosen = kind(batch, scheme) == row
            if chosen.any():
                mine.append(tuple(a if a is None else a[chosen] for a in batch["group"]))
        enough = sum(len(g[0]) for g in mine) >= 50
        rows.append(fit_temperatures(mine if enough else [b["group"] for b in batches]))
    return np.stack(rows)


def probability(
    reco: Reconstructor, batch: dict, rows: np.ndarray, table: np.ndarray
) -> np.ndarray:
    """The decoded trees' probabilities ``(N,)``, each event at the temperatures of its row
    ``rows (N,)`` of ``table``: what :meth:`Reconstructor.tree_probability` gives with that
    row as the checkpoint's only one."""
    probs, mask, nodes = batch["group"][:3]
    out = np.empty(len(probs))
    kept = reco.temperature
    try:
        for row in np.unique(rows):
            chosen = rows == row
            reco.temperature = table[row][None]
            out[chosen] = reco.tree_probability(
                batch["full"][chosen], probs[chosen], mask[chosen],
                None if nodes is None else nodes[chosen], batch["x"][chosen],
            )  # fmt: skip
    finally:
        reco.temperature = kept
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--val-events", type=int, default=1000, help="of each split; 0: all")
    args = parser.parse_args()
    reco = Reconstructor.from_checkpoint(args.ckpt)
    limit = args.val_events or None
    validation = [
        batch
        for split in ("val", "val_unknown")
        for batch in decoded_batches(reco, args.data, split, limit)
    ]
    tests = {s: decoded_batches(reco, args.data, s, None) for s in ("test", "test_unknown")}
    print(f"# {args.ckpt}: topology log-odds {reco.topology_log_odds:g}, temperatures refitted "
          f"on {sum(len(b['full']) for b in validation)} validation "
          "events (val, val_unknown), 10 bins")  # fmt: skip
    for scheme, names in KINDS.items():
        table = fit(validation, scheme)
        print(f"{scheme}: temperatures by leaf count (3..10)")
        for name, row in zip(names, table, strict=True):
            print(f"  {name:<32} " + " ".join(f"{t:5.2f}" for t in row[3:]))
        for split, batches in tests.items():
            rows = [kind(b, scheme) for b in batches]
            p = np.concatenate(
                [probability(reco, b, r, table) for b, r in zip(batches, rows, strict=True)]
            )
            perfect = np.concatenate([b["perfect"] for b in batches])
            row = np.concatenate(rows)
            cal = calibration(p, perfect)
            print(
                f"  {split:<13} ECE {cal['ece']:.3f} on {len(p)} events (perfectly calibrated "
                f"trees: {cal['ece_noise']:.3f} by chance)"
            )
            for k, name in enumerate(names):
                inside = row == k
                if inside.any():
                    print(f"    {name:<30} {int(inside.sum()):>6} events, perfect "
                          f"{perfect[inside].mean():6.1%}, mean probability "
                          f"{p[inside].mean():6.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
