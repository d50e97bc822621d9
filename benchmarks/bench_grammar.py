"""The learnt decay grammar as a reranker of the full method's best trees.

Run: ``python benchmarks/bench_grammar.py --ckpt runs/acc_real/tiny_transformer/best.ckpt
--data runs/acc_real/data [--candidates 5] [--val-events 500] [--test-events 2000]``
(a checkpoint and data of ``bench_accuracy.py``).

The grammar (:class:`lcag.evidence.grammar.DecayGrammar`) is learnt from the training
topologies of the data (the topology table's known topologies, the resolution from the
manifest). Every event's candidates are the full method's ``--candidates`` best trees
(``lcag.decode.top_k`` with the checkpoint's node evidence) and the trees of the training
topologies over its leaves with their topology-prior bonus; the tree kept maximises
``score + w * grammar log-likelihood`` (``score``: the full method's tree score, with the
topology prior's bonus for trees of training topologies; ``w = 0`` is the full method).
With ``--proposals P`` the grammar's own ``P`` best trees join the candidates
(:meth:`DecayGrammar.proposal_scores`, exact decoding with children-count scores). Dividing
the scores by the checkpoint's calibrated temperatures instead was tried: no better.
``w`` is chosen on ``val`` and ``val_unknown`` (the
mean of their perfect-tree rates); every ``w`` is printed with the test splits, ``w = 0``
being the full method and ``inf`` the grammar alone among the candidates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lcag.data import LCAGDataset
from lcag.evidence.calibration import labelled_batches
from lcag.evidence.grammar import DecayGrammar
from lcag.evidence.grammar_rerank import Candidates
from lcag.evidence.grammar_rerank import candidates as grammar_candidates
from lcag.inference import Reconstructor

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, np.inf)


def candidates(
    reco: Reconstructor,
    grammar: DecayGrammar,
    data: Path,
    split: str,
    k: int,
    limit: int | None,
    proposals: int = 0,
) -> list[tuple[int, np.ndarray, Candidates]]:
    """Per event: leaf count, which candidates are the true tree ``(A,)`` bool, and the
    candidates (:func:`lcag.evidence.grammar_rerank.candidates`)."""
    dataset = LCAGDataset(data, split, max_events=limit)
    events = dataset.__getitems__(range(len(dataset)))
    rows = []
    for n, x, mask, truth in tqdm(list(labelled_batches(events)), desc=split, leave=False):
        for event, true in zip(
            grammar_candidates(reco, grammar, x, mask, k, proposals), truth, strict=True
        ):
            rows.append((n, (event.trees == true).all(axis=(1, 2)), event))
    return rows


def rate(rows: list, w: float, most: int = 10) -> float:
    right = []
    for n, hits, event in rows:
        if n <= most:
            right.append(bool(hits[event.index(w)]))
    return float(np.mean(right))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument(
        "--proposals",
        type=int,
        default=0,
        help="also the grammar's own best trees (proposal_scores)",
    )
    parser.add_argument("--val-events", type=int, default=500)
    parser.add_argument("--test-events", type=int, default=2000)
    args = parser.parse_args()
    reco = Reconstructor.from_checkpoint(args.ckpt)
    grammar = DecayGrammar.from_dataset(args.data)
    start = time.perf_counter()
    rows = {
        split: candidates(reco, grammar, args.data, split, args.candidates, limit, args.proposals)
        for split, limit in (
            ("val", args.val_events),
            ("val_unknown", args.val_events),
            ("test", args.test_events),
            ("test_unknown", args.test_events),
        )
    }
    score = {w: (rate(rows["val"], w) + rate(rows["val_unknown"], w)) / 2 for w in WEIGHTS}
    chosen = max(WEIGHTS, key=lambda w: (score[w], -w))
    print(
        f"# {args.ckpt}: {len(grammar.types)} particles, {len(grammar.species)} species learnt; "
        f"{args.candidates} best trees + known trees per event; {time.perf_counter() - start:.0f} s"
    )
    for split in ("test", "test_unknown"):
        recall = np.mean([hits.any() for n, hits, _ in rows[split] if n <= 10])
        print(
            f"# {split}: {len(rows[split])} events, the true tree among the candidates {recall:.1%}"
        )
    print(
        f"{'w':>5} {'val score':>9} {'known <=6':>10} {'known <=10':>11} {'unseen <=6':>11} "
        f"{'unseen <=10':>12}"
    )
    for w in WEIGHTS:
        cells = [
            f"{rate(rows[s], w, cut):>{width}.1%}"
            for s, cut, width in (
                ("test", 6, 10),
                ("test", 10, 11),
                ("test_unknown", 6, 11),
                ("test_unknown", 10, 12),
            )
        ]
        mark = " <- chosen on validation" if w == chosen else ""
        print(f"{w:>5g} {score[w]:>9.3f} " + " ".join(cells) + mark)


if __name__ == "__main__":
    main()
