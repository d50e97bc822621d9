"""The learnt decay grammar as a reranker of the full method's trees, as analyses get it.

Run: ``python benchmarks/bench_grammar.py --ckpt runs/acc_real/tiny_transformer/best.ckpt
--data runs/acc_real/data [--val-events 300] [--test-events 1000] [--candidates 5]
[--proposals 5]`` (a checkpoint and data of ``bench_accuracy.py``, with ``val_unknown``).

What ``lcag fit`` does after training (:func:`lcag.callbacks.calibrate_checkpoint`), done
here on a checkpoint as it is: the grammar (:class:`lcag.evidence.grammar.DecayGrammar`) is
learnt from the data's training topologies and its reranking fitted on the first
``--val-events`` of ``val`` and ``val_unknown`` (:meth:`lcag.Reconstructor.fit_rerank`): for
events whose full-method tree is of no training topology, the candidates are the model's
``--candidates`` best trees, the training-topology trees over the leaves and the grammar's
``--proposals`` trees; the kept one maximises ``score + w x grammar``, ``w`` chosen on
validation (the mean of the two splits' perfect-tree rates; ``inf``: the grammar alone), and
its probability is calibrated over the candidates. Then ``Reconstructor.reconstruct`` runs
on the first ``--test-events`` of ``test`` and ``test_unknown`` with and without the grammar:
perfect-tree rates (<= 6 and <= 10 leaves), expected calibration error of the trees'
probabilities (10 bins, :func:`lcag.evaluate.calibration`) beside the error that perfectly
calibrated probabilities would show on as many events by chance, the events reranked and the
seconds per event. The fitted reranking (weight, temperature, logistic map, the candidates'
recall on validation) is printed first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lcag.data import LCAGDataset
from lcag.evaluate import calibration
from lcag.evidence.grammar import DecayGrammar
from lcag.inference import Reconstructor


def events(data: Path, split: str, limit: int) -> list[dict]:
    dataset = LCAGDataset(data, split, max_events=limit)
    return dataset.__getitems__(range(len(dataset)))


def rates(reco: Reconstructor, found: list[dict], grammar: bool) -> dict[str, float]:
    """Perfect-tree rates at <= 6 and <= 10 leaves, ECE, share reranked, seconds per event."""
    start = time.perf_counter()
    trees = reco.reconstruct([e["x"] for e in found], grammar=grammar)
    seconds = (time.perf_counter() - start) / max(len(found), 1)
    n = np.array([len(e["x"]) for e in found])
    right = []
    for event, tree in zip(found, trees, strict=True):
        truth = event["target"].copy()
        np.fill_diagonal(truth, 0)
        right.append(np.array_equal(tree.lcag, truth))
    right = np.array(right)
    p = np.array([t.probability for t in trees])
    small = n <= 10
    cal = calibration(p[small], right[small])
    return {
        "<=6": float(right[n <= 6].mean()),
        "<=10": float(right[small].mean()),
        "ece": cal["ece"],
        "chance": cal["ece_noise"],
        "reranked": float(np.mean([t.reranked for t in trees])),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--candidates", type=int, default=5, help="the model's best trees")
    parser.add_argument("--proposals", type=int, default=5, help="the grammar's trees")
    parser.add_argument("--val-events", type=int, default=300, help="of val and val_unknown")
    parser.add_argument("--test-events", type=int, default=1000, help="of test, test_unknown")
    args = parser.parse_args()
    reco = Reconstructor.from_checkpoint(args.ckpt)
    grammar = DecayGrammar.from_dataset(args.data)
    start = time.perf_counter()
    validation = [events(args.data, s, args.val_events) for s in ("val", "val_unknown")]
    rerank = reco.fit_rerank(validation, grammar, args.candidates, args.proposals)
    fitted = time.perf_counter() - start
    print(
        f"# {args.ckpt}: {len(grammar.types)} particles, {len(grammar.species)} species learnt; "
        f"fitted on {sum(map(len, validation))} validation events in {fitted:.0f} s: weight "
        f"{rerank.weight:g}, temperature {rerank.temperature:.3g}, probability "
        f"sigmoid({rerank.slope:.3g} logit(q) {rerank.offset:+.3g}); the true tree among the "
        f"candidates in {rerank.recall:.1%} of the validation events reranked"
    )
    print(f"{'split':<13} {'method':<22} {'<=6':>6} {'<=10':>6} {'ECE':>6} {'chance':>6} "
          f"{'reranked':>9} {'s/event':>8}")  # fmt: skip
    for split, label in (("test", "known"), ("test_unknown", "unseen")):
        found = events(args.data, split, args.test_events)
        for grammar_on, method in ((False, "full method"), (True, "+ grammar rerank")):
            r = rates(reco, found, grammar_on)
            print(
                f"{label:<13} {method:<22} {r['<=6']:>6.1%} {r['<=10']:>6.1%} {r['ece']:>6.3f} "
                f"{r['chance']:>6.3f} {r['reranked']:>9.1%} {r['seconds']:>8.3f}"
            )


if __name__ == "__main__":
    main()
