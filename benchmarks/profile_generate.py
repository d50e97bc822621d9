"""Where a generation worker's time goes: TensorFlow start-up, tracing, and phasespace decays.

Run: ``python benchmarks/profile_generate.py [--topologies 40] [--events 2000]``

In one process, with one thread as in a worker (``paper.yaml`` scaled as in
``bench_generate.py``): the seconds to import TensorFlow and to trace phasespace for each
number of children, then one shard-like batch of events (``--events`` per topology) through
``generate_events``, counting per number of children the rest-frame decays the events need,
the decays accept-reject made, and the microseconds per decay in phasespace's calls; last,
the cost per decay at other call sizes (``--chunks``), which the engine's fixed call size
trades against tracing once, and run eagerly (no tracing). Resident memory is printed after
the imports, after TensorFlow's and after tracing.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", type=int, default=40, help="known topologies")
    parser.add_argument("--events", type=int, default=2000, help="events per topology")
    parser.add_argument("--chunks", type=int, nargs="*", default=[4096, 16384, 65536])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench_generate import scaled_config

    from lcag.data_gen.config import load_config
    from lcag.data_gen.kinematics import NBodyEngine, children_counts, generate_events, max_weights
    from lcag.data_gen.writer import build_topologies

    process = psutil.Process()
    print(f"RSS with lcag's generation modules imported: {process.memory_info().rss >> 20} MB")
    cfg = load_config(scaled_config(args.topologies, {"train": args.events}))
    topologies = build_topologies(cfg)
    start = time.perf_counter()
    import tensorflow

    print(f"import tensorflow: {time.perf_counter() - start:.2f} s, "
          f"RSS {process.memory_info().rss >> 20} MB")  # fmt: skip
    engine = NBodyEngine()
    for n in sorted(children_counts(topologies)):
        start = time.perf_counter()
        engine.prepare([n])
        print(f"trace phasespace, {n} children: {time.perf_counter() - start:.2f} s")
    print(f"RSS once traced: {process.memory_info().rss >> 20} MB")
    start = time.perf_counter()
    ceilings = max_weights(topologies, engine, cfg.seed)
    print(f"weight maxima of {len(topologies)} topologies: {time.perf_counter() - start:.2f} s")

    made: collections.Counter = collections.Counter()
    seconds: collections.Counter = collections.Counter()
    raw = engine.raw

    def counted(ratios: np.ndarray, rng: np.random.Generator) -> tuple:
        begin = time.perf_counter()
        out = raw(ratios, rng)
        seconds[ratios.shape[1]] += time.perf_counter() - begin
        made[ratios.shape[1]] += len(ratios)
        return out

    engine.raw = counted  # type: ignore[method-assign]
    counts = [args.events] * len(topologies)
    start = time.perf_counter()
    generate_events(topologies, counts, np.random.default_rng(1), engine, cfg.kinematics, ceilings)
    total = time.perf_counter() - start
    events = sum(counts)
    needed: collections.Counter = collections.Counter()
    for topology in topologies:
        for node in topology.tree.inner_nodes:
            needed[len(topology.tree.children(node))] += args.events
    print(f"generate_events: {events:,} events in {total:.2f} s ({events / total:,.0f} events/s), "
          f"{sum(seconds.values()):.2f} s of it in phasespace")  # fmt: skip
    header = ("children", "needed/event", "made/event", "acceptance", "us/decay")
    print(" ".join(f"{h:>12}" for h in header))
    for n in sorted(made):
        print(f"{n:>12} {needed[n] / events:>12.2f} {made[n] / events:>12.2f} "
              f"{needed[n] / made[n]:>12.0%} {1e6 * seconds[n] / made[n]:>12.2f}")  # fmt: skip
    print("cost per decay by call size (rows per phasespace call; each size traces again):")
    rng = np.random.default_rng(0)
    for chunk in args.chunks:
        sized = NBodyEngine(chunk)
        cells = []
        for n in (2, 3, 5):
            sized.prepare([n])
            rows = np.full((max(chunk, 1 << 18), n), 0.1)
            begin = time.perf_counter()
            sized.raw(rows, rng)
            cells.append(f"{n} children {1e6 * (time.perf_counter() - begin) / len(rows):.2f} us")
        print(f"  {chunk:>6} rows: " + ", ".join(cells))
    tensorflow.config.run_functions_eagerly(True)  # last: it changes how every call runs
    cells = []
    for n in (2, 3, 5):
        eager = NBodyEngine(16384)
        begin = time.perf_counter()
        eager.prepare([n])
        first = time.perf_counter() - begin
        rows = np.full((1 << 18, n), 0.1)
        begin = time.perf_counter()
        eager.raw(rows, rng)
        cells.append(f"{n} children {1e6 * (time.perf_counter() - begin) / len(rows):.2f} us "
                     f"(first call {first:.2f} s)")  # fmt: skip
    print("  eagerly, 16384 rows, no tracing: " + ", ".join(cells))


if __name__ == "__main__":
    main()
