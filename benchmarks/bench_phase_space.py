"""The phase-space density in decoding: a score per inner node and its number of children.

Run: ``python benchmarks/bench_phase_space.py --ckpt runs/acc_real/tiny_transformer/best.ckpt
--data runs/acc_real/data [--val-events 1000]`` (a checkpoint and data of
``bench_accuracy.py``).

An n-body decay is uniform in its phase space, so a tree's leaves have density
``prod_v 1 / Phi_k(v)(m_v)`` over its inner nodes (times the line shapes, which the node
evidence already reads). In the massless limit ``Phi_k(M) = (2 pi)^(4 - 3k) (pi / 2)^(k - 1)
M^(2k - 4) / ((k - 1)! (k - 2)!)``: a function of a node's mass and its number of children
``k``, which :mod:`lcag.decode.children` adds exactly in decoding. The full method (node
evidence and topology prior, as the checkpoint chose) is decoded with ``w * (-log Phi_k)``
added for every inner node; ``w`` is chosen on ``val`` and ``val_unknown`` (the mean of their
perfect-tree rates, as ``val/score``), and the test splits are printed for every ``w``.

``--physics-events N`` adds decoding without the model on ``N`` events of ``test_unknown``:
node scores ``log(2 pi x mean_t Voigt_t(m_S^2)) + penalty`` (the data config's intermediate
masses and widths, the resolution propagated after the kinematic fit to the mother, as the
baseline) with and without the phase-space term, for several penalties per node, all on the
same events.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from lcag.baselines.masses import members
from lcag.data import LCAGDataset
from lcag.decode import decode, tree_score
from lcag.decode.children import children_counts
from lcag.evidence.calibration import labelled_batches
from lcag.evidence.grammar import log_massless_phase_space
from lcag.evidence.topology_prior import apply_bonus, known_scores
from lcag.inference import Reconstructor

MAX_CHILDREN = 5  # the last column: this many children or more


def log_phase_space(mass: np.ndarray) -> np.ndarray:
    """``(..., K)``: ``log Phi_k`` of massless k-body phase space at ``mass (...)``,
    ``k = 2..MAX_CHILDREN``."""
    return log_massless_phase_space(mass, np.arange(2, MAX_CHILDREN + 1))


def children_table(x: np.ndarray) -> np.ndarray:
    """``(N, 2^n, K)`` ``-log Phi_k(m_S)`` for every leaf set of ``x (N, n, F)``."""
    p = members(x.shape[1]) @ x[..., :4].astype(np.float64)  # (N, 2^n, 4)
    mass = np.sqrt(np.maximum(p[..., 3] ** 2 - (p[..., :3] ** 2).sum(-1), 0.0))
    return -log_phase_space(mass)


def children_term(trees: np.ndarray, table: np.ndarray) -> float:
    """Sum of ``table[S, k - 2]`` over the inner nodes of every tree ``(A, n, n)``."""
    K = table.shape[1]
    return np.array(
        [sum(table[S, min(c - 2, K - 1)] for S, c in children_counts(t)) for t in trees]
    )


def rates(
    reco: Reconstructor, data: Path, split: str, weights: list[float], max_events: int | None
) -> dict[float, np.ndarray]:
    """Per weight, ``(events, 2)``: each event's leaf count and whether its tree is right."""
    dataset = LCAGDataset(data, split, max_events=max_events)
    events = dataset.__getitems__(range(len(dataset)))
    out: dict[float, list] = {w: [] for w in weights}
    for n, x, mask, truth in labelled_batches(events, 512):
        probs, nodes, _ = reco.outputs(x, mask)
        prior = reco._topology_prior(x, mask, probs.shape[-1])
        table = children_table(x)
        base_known = None
        if prior is not None:
            base_known = known_scores(prior[0], probs, mask, nodes)
            known_terms = [children_term(k, table[e]) for e, k in enumerate(prior[0])]
        for w in weights:
            kids = w * table
            trees = decode(probs, mask, node_scores=nodes, children_scores=kids)
            if prior is not None:
                scores = tree_score(trees, probs, mask, node_scores=nodes, children_scores=kids)
                values = [b + w * t for b, t in zip(base_known, known_terms, strict=True)]
                trees = apply_bonus(trees, scores, prior[0], values, mask, prior[1])
            right = (trees == truth).all(axis=(1, 2))
            out[w].extend((n, bool(r)) for r in right)
    return {w: np.array(v) for w, v in out.items()}


def mean_line_shape(mass: np.ndarray, sigma: np.ndarray, random: dict) -> np.ndarray:
    """``(2^n,)`` ``log(2 pi x mean_t line_t(m_S^2))`` over the data config's intermediate
    particles ``t``: a Breit-Wigner in ``s`` (width ``relative_width`` of each mass) convolved
    with the propagated resolution ``sigma`` (a Voigt profile; a Gaussian without widths)."""
    from scipy.special import voigt_profile

    inter = np.asarray(random["intermediate_masses"], dtype=np.float64)
    gamma = inter**2 * float(random.get("relative_width", 0.0))
    spread = np.maximum(2 * mass * sigma, 1e-9)[:, None]
    offset = (mass**2)[:, None] - inter**2
    if gamma.any():
        density = voigt_profile(offset, spread, gamma).mean(1)
    else:
        density = (np.exp(-0.5 * (offset / spread) ** 2) / (spread * np.sqrt(2 * np.pi))).mean(1)
    return np.log(np.maximum(2 * np.pi * density, 1e-300))


def physics_rates(data: Path, max_events: int, penalties: list[float]) -> dict:
    """Per ``(phase space on, penalty)``, ``(events, 2)`` leaf counts and right or wrong, of
    decoding ``test_unknown`` from the line shapes alone (see the module docstring)."""
    import json

    from lcag.baselines.masses import subset_masses

    config = json.loads((data / "manifest.json").read_text())["config"]
    random, kinematics = config["random"], config["kinematics"]
    total = np.array([*kinematics["mother_momentum"], 0.0])
    total[3] = math.hypot(*total[:3], float(random["root_mass"]))
    resolution = float(kinematics["momentum_resolution"])
    dataset = LCAGDataset(data, "test_unknown", max_events=max_events)
    out: dict = {(ps, pen): [] for ps in (False, True) for pen in penalties}
    for event in dataset.__getitems__(range(len(dataset))):
        p = event["x"][:, :4].astype(np.float64)
        n = len(p)
        if n > 10:
            continue
        truth = event["target"].astype(np.int64)
        np.fill_diagonal(truth, 0)
        mass, sigma = subset_masses(p, resolution, total=total)
        line = mean_line_shape(mass, sigma, random)
        uniform = np.full((n, n, n + 1), 1.0 / (n + 1))  # pair scores: the same for every tree
        for ps in (False, True):
            for pen in penalties:
                tree = decode(
                    uniform,
                    node_scores=line + pen,
                    method="exact",
                    children_scores=-log_phase_space(mass) if ps else None,
                )
                out[ps, pen].append((n, np.array_equal(tree, truth)))
    return {key: np.array(v) for key, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--val-events", type=int, default=1000)
    parser.add_argument("--test-events", type=int, default=None, help="default: all")
    parser.add_argument(
        "--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    )
    parser.add_argument("--physics-events", type=int, default=0)
    args = parser.parse_args()
    if args.physics_events:
        print(f"# line shapes alone (no model), {args.physics_events} test_unknown events")
        print("phase space  penalty   <=6 leaves  <=10 leaves")
        for (ps, pen), r in physics_rates(
            args.data, args.physics_events, [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0]
        ).items():
            print(
                f"{'yes' if ps else 'no':<12} {pen:>7g} {r[r[:, 0] <= 6, 1].mean():>12.1%} "
                f"{r[:, 1].mean():>12.1%}"
            )
    reco = Reconstructor.from_checkpoint(args.ckpt)
    val = [rates(reco, args.data, s, args.weights, args.val_events) for s in ("val", "val_unknown")]
    score = {w: np.mean([v[w][:, 1].mean() for v in val]) for w in args.weights}
    chosen = max(args.weights, key=lambda w: (score[w], -w))
    test = {
        s: rates(reco, args.data, s, args.weights, args.test_events)
        for s in ("test", "test_unknown")
    }
    print(f"# {args.ckpt}: full method + w * (-log Phi_k), w chosen on val + val_unknown: {chosen}")
    print(
        f"{'w':>5} {'val score':>9} "
        + " ".join(f"{s + ' ' + c:>22}" for s in ("known", "unseen") for c in ("<=6", "<=10"))
    )
    for w in args.weights:
        cells = []
        for split in ("test", "test_unknown"):
            r = test[split][w]
            for cut in (6, 10):
                cells.append(f"{r[r[:, 0] <= cut, 1].mean():>22.1%}")
        mark = " <- chosen" if w == chosen else ""
        print(f"{w:>5g} {score[w]:>9.3f} " + " ".join(cells) + mark)


if __name__ == "__main__":
    main()
