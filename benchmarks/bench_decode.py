"""Decoding throughput: events/s of valid-tree decoding on one CPU core.

Run: ``python benchmarks/bench_decode.py [--events 1000] [--classes 8]``

Exact decoding at L = 6, 8, 10 and the dendrogram approximation at L = 14, each on a batch of
noisy model-like probabilities (a random tree's one-hot LCAG mixed with Dirichlet noise) and on
pure Dirichlet noise (the hardest case: no tree stands out). Argmax decoding is shown for scale.
Then, at L = 6, 8, 10: exact decoding with node scores (normal, sd 2, per leaf set), the exact
log-partition over all valid trees, and the five best trees (``top_k``); and exact decoding
and the log-partition with children-count scores too (``K = 4`` columns, normal, sd 2).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, as the target is stated

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from lcag import (  # noqa: E402
    decode,
    decode_argmax,
    is_valid_lcag,
    log_partition,
    top_k,
    tree_score,
    tree_to_lcag,
)
from lcag.tree import random_tree  # noqa: E402


def model_like_probs(rng: np.random.Generator, n_events: int, L: int, C: int) -> np.ndarray:
    """``(N, L, L, C)``: 70 % on a random tree's classes, 30 % Dirichlet noise."""
    probs = rng.dirichlet(np.ones(C), size=(n_events, L, L)) * 0.3
    for n in range(n_events):
        M = tree_to_lcag(random_tree(rng, L, max_depth=C, max_children=5))
        probs[n, np.arange(L)[:, None], np.arange(L)[None, :], M] += 0.7
    return probs


def measure(probs: np.ndarray, method: str, repeats: int = 3) -> tuple[float, bool]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = decode_argmax(probs) if method == "argmax" else decode(probs, method=method)
        best = min(best, time.perf_counter() - start)
    valid = bool(is_valid_lcag(out).all())
    return len(probs) / best, valid


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=8, help="C: class 0 plus heights 1..C-1")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    start = time.perf_counter()
    decode(rng.dirichlet(np.ones(args.classes), size=(2, 4, 4)))  # compile (or load cache)
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"# first call (kernel compile or cache load): {time.perf_counter() - start:.2f} s")
    print(f"# batches of {args.events} events, C = {args.classes} classes, one thread")
    print(f"{'method':<8} {'L':>3} {'inputs':<11} {'events/s':>10} {'ms/event':>9} all valid")
    cases = [("exact", 6), ("exact", 8), ("exact", 10), ("approx", 14), ("argmax", 14)]
    for method, L in cases:
        for name, probs in (
            ("model-like", model_like_probs(rng, args.events, L, args.classes)),
            ("noise", rng.dirichlet(np.ones(args.classes), size=(args.events, L, L))),
        ):
            rate, valid = measure(probs, method)
            print(f"{method:<8} {L:>3} {name:<11} {rate:>10.0f} {1000 / rate:>9.3f} {valid}")

    print("# with node scores (model-like pair inputs); top-5 on a tenth of the events")
    print(f"{'L':>3} {'decode ms/event':>16} {'log Z ms/event':>15} {'top-5 ms/event':>15}")
    for L in (6, 8, 10):
        probs = model_like_probs(rng, args.events, L, args.classes)
        nodes = rng.normal(scale=2.0, size=(args.events, 1 << L))
        decode(probs[:2], node_scores=nodes[:2])  # compile
        log_partition(probs[:2], node_scores=nodes[:2])
        tenth = len(probs) // 10
        times = [
            timed(decode, probs, node_scores=nodes),
            timed(log_partition, probs, node_scores=nodes),
            timed(top_k, probs[:tenth], 5, node_scores=nodes[:tenth]),
        ]
        per = [1000 * times[0] / len(probs), 1000 * times[1] / len(probs)]
        per.append(1000 * times[2] / tenth)
        print(f"{L:>3} {per[0]:>16.3f} {per[1]:>15.3f} {per[2]:>15.2f}")

    print("# with node and children-count scores (K = 4 columns)")
    print(f"{'L':>3} {'decode ms/event':>16} {'log Z ms/event':>15}")
    for L in (6, 8, 10):
        probs = model_like_probs(rng, args.events, L, args.classes)
        nodes = rng.normal(scale=2.0, size=(args.events, 1 << L))
        kids = rng.normal(scale=2.0, size=(args.events, 1 << L, 4))
        decode(probs[:2], node_scores=nodes[:2], children_scores=kids[:2])  # compile
        log_partition(probs[:2], node_scores=nodes[:2], children_scores=kids[:2])
        decode_s = timed(decode, probs, node_scores=nodes, children_scores=kids)
        log_z_s = timed(log_partition, probs, node_scores=nodes, children_scores=kids)
        print(f"{L:>3} {1000 * decode_s / len(probs):>16.3f} {1000 * log_z_s / len(probs):>15.3f}")

    print("# approximation quality at L = 10: share of events where it finds the exact optimum")
    for name, probs in (
        ("model-like", model_like_probs(rng, args.events, 10, args.classes)),
        ("noise", rng.dirichlet(np.ones(args.classes), size=(args.events, 10, 10))),
    ):
        exact = tree_score(decode(probs, method="exact"), probs)
        approx = tree_score(decode(probs, method="approx"), probs)
        optimal = np.mean(approx >= exact - 1e-9)
        print(
            f"approx    10 {name:<11} optimal in {optimal:6.1%}, mean score gap "
            f"{np.mean(exact - approx):.3f}"
        )


if __name__ == "__main__":
    main()
