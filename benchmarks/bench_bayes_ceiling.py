"""How often can any method get a random topology's tree right? The generator's own posterior.

Run: ``python benchmarks/bench_bayes_ceiling.py [--data runs/acc_real/data] [--ckpt
runs/acc_real/tiny_transformer/best.ckpt] [--events 500] [--candidates 20]`` (without
``--data``: unseen topologies of ``configs/data/<--config>.yaml``, at most 10 leaves, are
generated).

Unseen-topology test events are reconstructed by the tuned likelihood baseline
(``lcag.evaluate.baseline_for``, what ``lcag-evaluate`` uses) and, with ``--ckpt``, by the
checkpoint's full method. Trees are then scored by the generative model that made the data:

- the prior of the random-topology sampler (:func:`lcag.data_gen.topology.
  sample_random_topologies`): children counts uniform in ``min_children..max_children``, each
  child drawn against the parent's remaining mass, final with probability ``p_final`` among
  the masses that fit, summed over the children's draw orders and over the intermediate
  particle each inner node can be;
- the likelihood of the leaves' momenta: each intermediate node's invariant mass on its
  particle's relativistic Breit-Wigner (Cauchy in ``s = m^2``) convolved with the mass
  resolution (a Voigt profile, the resolution propagated after the kinematic fit to the
  mother), and every decay uniform in its n-body phase space (density ``1 / Phi_k``, the
  phase-space volume at the measured masses, by recursive quadrature).

Every event gets ``--candidates`` proposals: the best trees of a score that exact decoding can
maximise (each leaf set's mean line shape and the massless phase-space density by number of
children, :func:`proposals`), with the baseline's and the model's trees. "posterior rerank"
keeps the candidate of highest posterior: a method, so its rate is achievable. "bound" is the
share of events whose true tree outscores every candidate: a Bayes-optimal reconstruction is
wrong wherever another tree outscores the truth, so no method exceeds it, up to the
approximations named here (the resolution handled by a Voigt profile, the phase space taken at
the measured masses). Ablations: ``--no-phase`` (no ``1 / Phi_k``), ``--no-prior`` (every draw
weighs 1, the children's masses still required to fit in the parent's), ``--massless``
(``Phi_k`` of massless children, the form :mod:`lcag.decode.children` can add in decoding).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.special import voigt_profile
from tqdm import tqdm

from lcag.evidence.grammar import phase_space
from lcag.evidence.grammar import tree_nodes as tree_sets

ROOT = Path(__file__).resolve().parents[1]


class GeneratorPosterior:
    """Log-posterior (up to a constant per event) of a tree under the random-topology sampler.

    Args:
        random: the data config's ``random:`` section.
        phase, prior, massless: the ablations of the module docstring.
    """

    def __init__(
        self, random: dict, phase: bool = True, prior: bool = True, massless: bool = False
    ) -> None:
        self.phase, self.prior, self.massless = phase, prior, massless
        self.final = sorted(float(m) for m in random["final_state_masses"])
        self.inter = sorted(float(m) for m in random["intermediate_masses"])
        self.root_mass = float(random["root_mass"])
        self.rel_width = float(random.get("relative_width", 0.0))
        weight = float(random.get("intermediate_weight", 1.0))
        self.p_final = len(self.final) / (len(self.final) + weight * len(self.inter))
        self.k_range = (int(random["min_children"]), int(random["max_children"]))
        self._ps_cache: dict[tuple, float] = {}

    def _draw(self, t: float, is_final: bool, budget: float) -> float:
        """Probability that the sampler draws particle ``t`` with ``budget`` left."""
        if not t < budget:
            return 0.0
        if not self.prior:
            return 1.0
        fit_inter = [m for m in self.inter if m < budget]
        fit_final = [m for m in self.final if m < budget]
        if is_final:
            p = self.p_final if fit_inter else 1.0
            return p / len(fit_final)
        return (1 - self.p_final) / len(fit_inter)

    def _children_prob(self, parent: float, kids: list[tuple[bool, float]]) -> float:
        """Sum over draw orders of the sequential draw probability of ``kids`` ((final, mass))."""
        k = len(kids)
        lo, hi = self.k_range
        most = min(hi, math.ceil(parent / self.final[0]) - 1)
        if not lo <= k <= most:
            return 0.0
        total = 0.0
        for order in itertools.permutations(range(k)):
            remaining, p = parent, 1.0
            for j, index in enumerate(order):
                final, mass = kids[index]
                p *= self._draw(mass, final, remaining - (k - j - 1) * self.final[0])
                if p == 0.0:
                    break
                remaining -= mass
            total += p
        return total / (most - lo + 1)

    def log_score(
        self,
        tree_sets: list[tuple[int, list[int]]],
        mass: np.ndarray,
        sigma: np.ndarray,
        leaf_mass: np.ndarray,
    ) -> float:
        """``log`` posterior of one tree.

        Args:
            tree_sets: inner nodes bottom-up as ``(leaf bit mask, children's bit masks)``,
                the root last.
            mass, sigma: ``(2^n,)`` invariant mass of every leaf set and its uncertainty.
            leaf_mass: ``(n,)`` each leaf's species mass.
        """
        types = np.array(self.inter)
        beta: dict[int, np.ndarray] = {}  # inner set -> (T,) likelihood x prior below, per type
        log_scale = 0.0
        for index, (S, kids) in enumerate(tree_sets):
            root = index == len(tree_sets) - 1
            if len(kids) > self.k_range[1]:
                return -np.inf  # the sampler never makes so many children
            kid_masses = [float(mass[c]) for c in kids]
            key = (*np.round(sorted(kid_masses), 3).tolist(), round(float(mass[S]), 3))
            ps = self._ps_cache.get(key)
            if ps is None:
                ps = float(
                    phase_space(
                        np.array(mass[S]),
                        [1e-6] * len(kids) if self.massless else sorted(kid_masses, reverse=True),
                    )
                )
                self._ps_cache[key] = ps
            if ps <= 0:
                return -np.inf
            parents = np.array([self.root_mass]) if root else types
            inner_kids = [c for c in kids if c & (c - 1)]
            fixed = [
                (True, float(leaf_mass[int(c).bit_length() - 1])) for c in kids if not c & (c - 1)
            ]
            out = np.zeros(len(parents))
            for combo in itertools.product(range(len(types)), repeat=len(inner_kids)):
                weight = 1.0
                for c, t in zip(inner_kids, combo, strict=True):
                    weight *= beta[c][t]
                if weight == 0.0:
                    continue
                kid_list = fixed + [(False, float(types[t])) for t in combo]
                for a, parent in enumerate(parents):
                    out[a] += weight * self._children_prob(float(parent), kid_list)
            if self.phase:
                out /= ps
            if not root:
                s = float(mass[S]) ** 2
                sigma_s = max(2 * float(mass[S]) * float(sigma[S]), 1e-9)
                gamma = types * (self.rel_width * types)
                if self.rel_width > 0:
                    shape = voigt_profile(s - types**2, sigma_s, gamma)
                else:
                    shape = np.exp(-0.5 * ((s - types**2) / sigma_s) ** 2) / (
                        sigma_s * np.sqrt(2 * np.pi)
                    )
                out = out * shape * 2 * np.pi
            peak = out.max()
            if peak <= 0:
                return -np.inf
            log_scale += math.log(peak)
            beta[S] = out / peak
        return log_scale + math.log(beta[tree_sets[-1][0]][0])


def proposals(p: np.ndarray, mass: np.ndarray, sigma: np.ndarray, random: dict, k: int) -> list:
    """The ``k`` best trees of a score that exact decoding can maximise: each inner node's
    mean line shape (``log 2 pi mean_t Voigt_t(m_S^2)``, minus 2) and the massless
    phase-space density by number of children (``lcag.decode.children``; more children than
    the sampler makes are forbidden)."""
    from bench_phase_space import log_phase_space, mean_line_shape

    from lcag.decode import top_k

    line = mean_line_shape(mass, sigma, random) - 2.0
    children = -log_phase_space(mass)[:, : int(random["max_children"]) - 1]
    children = np.concatenate([children, np.full((len(mass), 1), -np.inf)], axis=1)
    n = len(p)
    uniform = np.full((n, n, n + 1), 1.0 / (n + 1))  # pair scores: the same for every tree
    return [M for M, _ in top_k(uniform, k, node_scores=line, children_scores=children)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a dataset with test_unknown (default: generate one)",
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        help="also the full method of this checkpoint on the same events",
    )
    parser.add_argument("--config", default="realistic")
    parser.add_argument("--topologies", type=int, default=50)
    parser.add_argument("--events", type=int, default=1000, help="test_unknown events scored")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--no-phase", action="store_true")
    parser.add_argument("--no-prior", action="store_true")
    parser.add_argument("--massless", action="store_true")
    args = parser.parse_args()

    from lcag.baselines.masses import subset_masses
    from lcag.data import LCAGDataset
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset
    from lcag.evaluate import baseline_for

    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None:
            data = yaml.safe_load((ROOT / "configs" / "data" / f"{args.config}.yaml").read_text())
            data["random"]["max_leaves"] = 10
            data["topologies"] = {"known": 30, "unknown": args.topologies}
            data["events"] = {"train": 10, "val": 30, "test": 10, "test_unknown": 200}
            path = Path(tmp) / "data"
            generate_dataset(load_config(data), path, workers=2, progress=False)
        config = json.loads((path / "manifest.json").read_text())["config"]
        baseline = baseline_for(LCAGDataset(path, "test"), max_leaves=10)
        dataset = LCAGDataset(path, "test_unknown", max_events=args.events)
        events = [e for e in dataset.__getitems__(range(len(dataset))) if len(e["x"]) <= 10]
    random, kinematics = config["random"], config["kinematics"]
    model = GeneratorPosterior(random, not args.no_phase, not args.no_prior, args.massless)
    resolution = float(kinematics.get("momentum_resolution", 0.0))
    total = np.array([*kinematics["mother_momentum"], 0.0])
    total[3] = math.hypot(*total[:3], float(random["root_mass"]))
    truths = []
    for event in events:
        truth = event["target"].astype(np.int64)
        np.fill_diagonal(truth, 0)
        truths.append(truth)
    found = {"baseline": baseline.lcag([e["x"][:, :4].astype(np.float64) for e in events])}
    if args.ckpt is not None:
        found["model (full method)"] = full_method(args.ckpt, events)
    start = time.perf_counter()
    prefixes = sorted({k for k in (5, 10, 20, 40, 80) if k < args.candidates} | {args.candidates})
    rows = []  # (leaves, then per prefix: rerank right, truth the best of candidates + truth)
    for event, truth in tqdm(list(zip(events, truths, strict=True)), desc="posterior"):
        p = event["x"][:, :4].astype(np.float64)
        mass, sigma = subset_masses(p, resolution, total=total)
        leaf_mass = np.sqrt(np.maximum(p[:, 3] ** 2 - (p[:, :3] ** 2).sum(1), 0))
        leaf_mass = np.array([min(model.final, key=lambda m: abs(m - x)) for x in leaf_mass])
        proposed = proposals(p, mass, sigma, random, args.candidates)
        others = [found[name][len(rows)] for name in found]
        score_of = [model.log_score(tree_sets(M), mass, sigma, leaf_mass) for M in proposed]
        other_score = [model.log_score(tree_sets(M), mass, sigma, leaf_mass) for M in others]
        truth_score = model.log_score(tree_sets(truth), mass, sigma, leaf_mass)
        row = [len(p)]
        for k in prefixes:  # the first k proposals with the baseline's and the model's trees
            candidates, score = proposed[:k] + others, score_of[:k] + other_score
            best = candidates[int(np.argmax(score))]
            row += [np.array_equal(best, truth), truth_score >= max(score)]
        rows.append(tuple(row))
    rows_arr = np.array(rows)
    print(
        f"# {path}: {len(events)} test_unknown events (<= 10 leaves), {args.candidates} "
        f"proposals each; posterior scored in {time.perf_counter() - start:.0f} s"
    )
    print(
        f"{'leaves':<8} {'events':>7} "
        + " ".join(f"{name:>20}" for name in found)
        + f" {'posterior rerank':>17} {'bound (any method)':>19}"
    )
    last = 2 * len(prefixes) - 1
    for name, cut in (("<= 6", 6), ("<= 10", 10)):
        sel = rows_arr[:, 0] <= cut
        cells = []
        for matrices in found.values():
            right = [np.array_equal(M, t) for M, t in zip(matrices, truths, strict=True)]
            cells.append(f"{np.array(right)[sel].mean():>20.1%}")
        print(
            f"{name:<8} {int(sel.sum()):>7} "
            + " ".join(cells)
            + f" {rows_arr[sel, last].mean():>17.1%} {rows_arr[sel, last + 1].mean():>19.1%}"
        )
    if len(prefixes) > 1:
        print("\nBy number of proposals (with the baseline's and the model's trees), <= 10 leaves:")
        print(f"{'proposals':>9} {'posterior rerank':>17} {'bound':>7}")
        for j, k in enumerate(prefixes):
            right, bound = rows_arr[:, 1 + 2 * j].mean(), rows_arr[:, 2 + 2 * j].mean()
            print(f"{k:>9} {right:>17.1%} {bound:>7.1%}")


def full_method(ckpt: Path, events: list[dict]) -> list[np.ndarray]:
    """The checkpoint's full method (node evidence and topology prior) on ``events``."""
    from lcag.inference import Reconstructor

    reco = Reconstructor.from_checkpoint(ckpt)
    out: list = [None] * len(events)
    for n in sorted({len(e["x"]) for e in events}):
        index = [i for i, e in enumerate(events) if len(e["x"]) == n]
        x = np.stack([events[i]["x"] for i in index]).astype(np.float32)
        mask = np.ones((len(index), n), dtype=bool)
        probs, nodes, _ = reco.outputs(x, mask)
        for i, M in zip(index, reco.decode(probs, mask, nodes, x=x), strict=True):
            out[i] = M
    return out


if __name__ == "__main__":
    main()
