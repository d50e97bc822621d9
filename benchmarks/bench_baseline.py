"""The combinatorial baseline on exact and on realistic events of the paper's protocol.

Run: ``python benchmarks/bench_baseline.py [--topologies 40] [--events 50]``

Generates ``configs/data/paper.yaml`` and ``configs/data/realistic.yaml`` scaled down (topologies
with at most 10 leaves, test events only) and prints the baseline's perfect-tree rate for
<= 6 and <= 10 leaves: exact kinematics solve the task, 1 % momentum resolution and resonance
widths do not. This is the reference every model figure stands beside.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def baseline_rates(config_name: str, topologies: int, events: int, out: Path) -> dict:
    from lcag.data import LCAGDataset
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset
    from lcag.evaluate import baseline_for
    from lcag.matrix import tree_to_lcag

    data = yaml.safe_load((ROOT / "configs" / "data" / f"{config_name}.yaml").read_text())
    data["random"]["max_leaves"] = 10
    data["topologies"] = {"known": topologies, "unknown": 1}
    data["events"] = {"train": 10, "val": 0, "test": events, "test_unknown": 0}
    path = out / config_name
    generate_dataset(load_config(data), path, workers=2, progress=False)
    dataset = LCAGDataset(path, "test")
    baseline = baseline_for(dataset, max_leaves=10)
    right, sizes = [], []
    start = time.perf_counter()
    for event in dataset.__getitems__(range(len(dataset))):
        truth = event["target"].copy()
        np.fill_diagonal(truth, 0)
        tree = baseline.reconstruct([event["x"].astype(np.float64)])[0]
        right.append(np.array_equal(tree_to_lcag(tree), truth))
        sizes.append(len(truth))
    seconds = time.perf_counter() - start
    right_arr, sizes_arr = np.array(right), np.array(sizes)
    return {
        "<=6": right_arr[sizes_arr <= 6].mean(),
        "<=10": right_arr.mean(),
        "events": len(right),
        "events/s": len(right) / seconds,
        "resolution": baseline.resolution,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", type=int, default=40)
    parser.add_argument("--events", type=int, default=50, help="test events per topology")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"# {args.topologies} topologies (<= 10 leaves) x {args.events} test events")
        header = f"{'data':<12} {'resolution':>10} {'<=6 leaves':>10} {'<=10 leaves':>11}"
        print(f"{header} {'events/s':>9}")
        for name in ("paper", "realistic"):
            r = baseline_rates(name, args.topologies, args.events, Path(tmp))
            print(f"{name:<12} {r['resolution']:>10g} {r['<=6']:>10.1%} {r['<=10']:>11.1%} "
                  f"{r['events/s']:>9,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
