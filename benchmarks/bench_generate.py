"""Generation throughput and memory: ``lcag-generate`` on the paper's protocol, scaled down.

Run: ``python benchmarks/bench_generate.py [--workers 2] [--topologies 40]``

1. ``configs/data/paper.yaml`` with fewer topologies and events, through the real command with
   ``--workers N``, at two sizes 10x apart: events/s (wall clock, start-up included) and the
   peak resident memory of the whole process tree (main + workers, sampled every 50 ms: the sum
   of RSS, which counts shared library pages once per process, and, once a second, of PSS,
   which does not); from the two sizes, the marginal rate and the start-up (the 1x run less
   its events at that rate).
2. The straightforward way, for comparison: one phasespace ``GenParticle`` tree per topology
   and split, one ``generate`` call each (what the paper's code does), on a few topologies.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "data" / "paper.yaml"


def scaled_config(topologies: int, events: dict[str, int]) -> dict:
    data = yaml.safe_load(PAPER.read_text())
    data = copy.deepcopy(data)
    data["topologies"] = {"known": topologies, "unknown": max(1, topologies // 4)}
    data["events"] = events
    return data


def run_generate(config: dict, workers: int) -> tuple[int, float, float, float]:
    """Run lcag-generate; returns (events, seconds, peak RSS and peak PSS of the process tree,
    in MiB). RSS counts a shared page (TensorFlow's libraries) once per process that maps it;
    PSS splits it between them, so the PSS sum is the memory the run holds."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [
            sys.executable, "-m", "lcag.data_gen.cli", "--config", str(path),
            "--out", str(Path(tmp) / "data"), "--workers", str(workers), "--no-progress",
        ]  # fmt: skip
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = peak_pss = 0
        parent = psutil.Process(process.pid)
        for sample in itertools.count():
            if process.poll() is not None:
                break
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                if sample % 20 == 10:  # reading smaps costs CPU time: once a second
                    memory = [p.memory_full_info() for p in tree]
                    peak_pss = max(peak_pss, sum(getattr(m, "pss", m.rss) for m in memory))
            except psutil.Error:
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if process.returncode:
            raise SystemExit(process.stderr.read().decode())
        process.stderr.close()
        manifest = yaml.safe_load((Path(tmp) / "data" / "manifest.json").read_text())
        events = sum(split["events"] for split in manifest["splits"].values())
    return events, seconds, peak / 2**20, peak_pss / 2**20


def plain_loop(topologies: int, events: dict[str, int]) -> tuple[int, float]:
    """One GenParticle tree per topology and split, one generate() call each."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import phasespace

    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import build_topologies

    cfg = load_config(scaled_config(topologies, events))
    drawn = build_topologies(cfg)[:topologies]

    def as_particle(tree, node, counter):
        counter[0] += 1
        name = f"p{counter[0]}"
        kids = [as_particle(tree, c, counter) for c in tree.children(node)]
        particle = phasespace.GenParticle(name, float(tree.masses[node]))
        return particle.set_children(*kids) if kids else particle

    total = 0
    start = time.perf_counter()
    for topology in drawn:
        for split in ("train", "val", "test"):
            root = as_particle(topology.tree, topology.tree.root, [0])
            n = events[split]
            seed = int(np.random.default_rng(total).integers(2**31))
            _, particles = root.generate(n_events=n, seed=seed)
            leaves = [particles[name].numpy() for name in particles]  # materialise them
            total += n * (len(leaves) > 0)
    return total, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--topologies", type=int, default=40, help="known topologies")
    parser.add_argument("--plain-topologies", type=int, default=5)
    args = parser.parse_args()
    small = {"train": 2000, "val": 200, "test": 200, "test_unknown": 200}
    large = {k: 10 * v for k, v in small.items()}
    print(
        f"# paper.yaml scaled: {args.topologies} known topologies, --workers {args.workers}, "
        f"{psutil.cpu_count()} cores"
    )
    columns = ("events", "seconds", "events/s", "peak RSS", "peak PSS")
    print(f"{'run':<28} " + " ".join(f"{c:>9}" for c in columns))
    runs = []
    for label, events in (("lcag-generate (1x)", small), ("lcag-generate (10x)", large)):
        n, seconds, rss, pss = run_generate(scaled_config(args.topologies, events), args.workers)
        runs.append((n, seconds))
        print(f"{label:<28} {n:>9,} {seconds:>8.1f} {n / seconds:>9,.0f} {rss:>8.0f}M {pss:>8.0f}M")
    (n1, t1), (n10, t10) = runs
    rate = (n10 - n1) / (t10 - t1)
    print(
        f"# marginal rate (10x - 1x) {rate:,.0f} events/s, start-up (1x less its events at that "
        f"rate) {t1 - n1 / rate:.1f} s"
    )
    n, seconds = plain_loop(args.plain_topologies, small)
    print(f"{'plain phasespace loop':<28} {n:>9,} {seconds:>8.1f} {n / seconds:>9,.0f}        -")
    print(f"# plain loop: {args.plain_topologies} topologies x (train, val, test), one process")


if __name__ == "__main__":
    main()
