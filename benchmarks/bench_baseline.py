"""The combinatorial baseline on exact and on realistic events of the paper's protocol.

Run: ``python benchmarks/bench_baseline.py [--topologies 40] [--events 50] [--val-events 50]``

Generates ``configs/data/paper.yaml``, ``configs/data/realistic.yaml`` and ``realistic.yaml``
without widths (``random.relative_width: 0``) scaled down (topologies with at most 10 leaves,
validation and test events only) and prints the baseline's perfect-tree rate for <= 6 and
<= 10 leaves, for the chi-square window and for the likelihood tuned on the validation split
(``lcag.evaluate.baseline_for``, up to 500 validation events), without and with the kinematic
fit to the mother's 4-momentum, all on the same test events.
Exact kinematics solve the task; 1 % momentum resolution and resonance widths do not. This is
the reference every model figure stands beside.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CASES = (  # (name, config file, relative width override or None)
    ("paper", "paper", None),
    ("realistic", "realistic", None),
    ("realistic, no widths", "realistic", 0.0),
)
METHODS = (("window", False), ("likelihood", False), ("likelihood", True))  # (method, fit)


def generate(
    config_name: str, width: float | None, topologies: int, events: int, val_events: int, out: Path
) -> Path:
    """A scaled-down copy of a data config (at most 10 leaves), generated under ``out``."""
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset

    data = yaml.safe_load((ROOT / "configs" / "data" / f"{config_name}.yaml").read_text())
    data["random"]["max_leaves"] = 10
    if width is not None:
        data["random"]["relative_width"] = width
    data["topologies"] = {"known": topologies, "unknown": 1}
    data["events"] = {"train": 10, "val": val_events, "test": events, "test_unknown": 0}
    path = out / f"{config_name}-{width}"
    generate_dataset(load_config(data), path, workers=2, progress=False)
    return path


def baseline_rates(path: Path, method: str, kinematic_fit: bool = True) -> dict:
    """Perfect-tree rates of one baseline method on the test split of ``path``."""
    from lcag.data import LCAGDataset
    from lcag.evaluate import baseline_for

    dataset = LCAGDataset(path, "test")
    start = time.perf_counter()
    baseline = baseline_for(dataset, max_leaves=10, method=method, kinematic_fit=kinematic_fit)
    tuning = time.perf_counter() - start
    events = dataset.__getitems__(range(len(dataset)))
    start = time.perf_counter()
    found = baseline.lcag([event["x"].astype(np.float64) for event in events])
    seconds = time.perf_counter() - start
    right, sizes = [], []
    for matrix, event in zip(found, events, strict=True):
        truth = event["target"].copy()
        np.fill_diagonal(truth, 0)
        right.append(np.array_equal(matrix, truth))
        sizes.append(len(truth))
    right_arr, sizes_arr = np.array(right), np.array(sizes)
    return {
        "<=6": right_arr[sizes_arr <= 6].mean(),
        "<=10": right_arr.mean(),
        "events": len(right),
        "events/s": len(right) / seconds,
        "tuning s": tuning,
        "resolution": baseline.resolution,
        "baseline": baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", type=int, default=40)
    parser.add_argument("--events", type=int, default=50, help="test events per topology")
    parser.add_argument("--val-events", type=int, default=50, help="validation events per topology")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"# {args.topologies} topologies (<= 10 leaves) x {args.events} test events, "
            f"{args.val_events} validation events each"
        )
        print(
            f"{'data':<21} {'resolution':>10} {'method':<18} {'<=6 leaves':>10} "
            f"{'<=10 leaves':>11} {'events/s':>9}  tuned: penalty, resolution x, widths x"
        )
        for name, config, width in CASES:
            path = generate(config, width, args.topologies, args.events, args.val_events, Path(tmp))
            for method, fit in METHODS:
                r = baseline_rates(path, method, fit)
                b = r["baseline"]
                tuned = (
                    f"{b.node_penalty:g}, {b.resolution_scale:g}, {b.width_scale:g} "
                    f"({r['tuning s']:.1f} s)"
                    if method == "likelihood"
                    else "-"
                )
                label = method + ("" if fit or method == "window" else ", no fit")
                print(
                    f"{name:<21} {r['resolution']:>10g} {label:<18} {r['<=6']:>10.1%} "
                    f"{r['<=10']:>11.1%} {r['events/s']:>9,.0f}  {tuned}"
                )


if __name__ == "__main__":
    main()
