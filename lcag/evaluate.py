"""``lcag-evaluate``: a report on a trained model beside the combinatorial physics baseline.

    lcag-evaluate --ckpt runs/tiny_transformer/checkpoints/best.ckpt --data data/tiny \\
        --split test test_unknown --out reports/tiny

Writes ``report.json``, ``report.md`` and PNG plots to ``--out``: the perfect-tree rate against
leaf count and against depth for the model with argmax, with valid-tree decoding from the pair
scores alone, with the model's node evidence, with the topology prior too (the full method),
with the checkpoint's decay grammar reranking the events whose tree is of no training topology
(what ``Reconstructor`` gives), and the baseline, all on the same events; the model's LCAG
confusion matrix; the reliability of the reconstructed trees' probabilities (and their
expected calibration error); three example events the model got wrong, drawn as trees: the
truth with its particles' names and masses, then the trees decoded from pair scores alone and
the reconstructed one, wrong nodes marked.
Known (``test``) and unseen (``test_unknown``) topologies are reported separately.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lcag.baselines import CombinatorialBaseline
from lcag.console import run_console
from lcag.data import LCAGDataset, collate, has_background
from lcag.inference import Reconstructor

__all__ = ["baseline_dataset", "baseline_for", "evaluate", "main"]

METHODS = ("argmax", "decoded", "nodes", "full", "grammar", "baseline")
BASELINE_TUNE_EVENTS = 500  # validation events the baseline's likelihood is tuned on
CALIBRATION_BINS = 10
BASELINE_FEATURES = ("px", "py", "pz", "E", "charge", "is_photon")


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    splits: list[str],
    out: str | Path,
    *,
    max_events: int | None = None,
    baseline_max_leaves: int = 12,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Evaluate a checkpoint on dataset splits; write the report and plots; return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reco = Reconstructor.from_checkpoint(checkpoint)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "data": str(data), "splits": {}}
    examples = []
    baseline = None
    for split in splits:
        dataset = LCAGDataset(
            data, split, max_events=max_events, features=reco.features, target=reco.target
        )
        dataset.verify()
        if baseline is None:  # one baseline for every split, tuned once on the validation split
            baseline = baseline_for(dataset, baseline_max_leaves)
        depths = np.array([t.depth for t in dataset.topology_table()])
        inputs = baseline_dataset(data, split, baseline, max_events=max_events)
        result = _evaluate_split(reco, dataset, inputs, baseline, depths, batch_size)
        examples += result.pop("examples")
        report["splits"][split] = result
    report["baseline"] = {
        "masses": [float(m) for m in baseline.masses],
        "resolution": baseline.resolution,
        "max_leaves": baseline_max_leaves,
        "method": baseline.method,
        "node_penalty": baseline.node_penalty,
        "resolution_scale": baseline.resolution_scale,
        "width_scale": baseline.width_scale,
        "kinematic_fit": baseline.total_momentum is not None and not baseline.background,
        "background": baseline.background,
        "background_penalty": baseline.background_penalty,
        "detector": baseline.detector is not None,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out / "report.md").write_text(_markdown(report))
    from lcag.plots import plot_confusion, plot_examples, plot_rates, plot_reliability

    plot_rates(report, "leaves", out / "perfect_vs_leaves.png")
    plot_rates(report, "depth", out / "perfect_vs_depth.png")
    plot_confusion(report, out / "confusion.png")
    plot_examples(examples[:3], out / "examples.png")
    plot_reliability(report, out / "reliability.png")
    return report


def baseline_for(
    dataset: LCAGDataset,
    max_leaves: int,
    *,
    method: str = "likelihood",
    tune_events: int = BASELINE_TUNE_EVENTS,
    kinematic_fit: bool = True,
) -> CombinatorialBaseline:
    """The combinatorial baseline for a dataset, as good as the dataset's own description allows.

    Masses and widths are the topologies' intermediate particles (the roots aside; for
    decay tables the PDG values of ``particle`` that generated them). The leaves' resolution
    is the generation's: one relative resolution, or with a detector response the detector's
    per-species resolutions (the baseline then reads ``charge`` and ``is_photon`` too, see
    :func:`baseline_dataset`). With background leaves (random or beam background) the
    baseline chooses the tree's leaves as well, by the roots' masses or, when known, the
    mother's 4-momentum. With ``method="likelihood"``:

    - with ``kinematic_fit``, the event's total 4-momentum is known when every event is one
      mother of known momentum and mass (a root's mass is never drawn from its line shape);
      without background the leaves are fitted to it, with background it scores the root;
    - the free parameters are tuned (:meth:`CombinatorialBaseline.tune`) on up to
      ``tune_events`` events of the dataset's ``val`` split with at most ``max_leaves``
      leaves, when it has one.

    ``method="window"`` is the chi-square window with its defaults, untuned and without the fit.
    """
    table = dataset.topology_table()
    masses: dict[float, float] = {}
    roots = set()
    for topology in table:
        tree = topology.tree
        roots.add(float(tree.masses[tree.root]))
        for node in tree.inner_nodes:
            if node != tree.root:
                masses[float(tree.masses[node])] = float(topology.widths[node])
    config = dataset.manifest.get("config", {})
    kinematics = config.get("kinematics", {})
    resolution = float(kinematics.get("momentum_resolution", 0.0))
    detector = _detector(dataset)
    background = has_background(dataset.manifest)
    if not masses:  # only two-level trees: any mass below the root can match nothing
        masses = {float(table.masses.max()) * 2: 0.0}
    mother = kinematics.get("mother_momentum")
    total = None
    if method == "likelihood" and kinematic_fit and mother is not None and len(roots) == 1:
        momentum = np.asarray(mother, dtype=np.float64)
        total = [*momentum.tolist(), float(np.sqrt(momentum @ momentum + min(roots) ** 2))]
    baseline = CombinatorialBaseline(
        list(masses),
        widths=list(masses.values()),
        resolution=resolution,
        max_leaves=max_leaves,
        method=method,
        detector=detector,
        background=background and method == "likelihood",
        root_masses=sorted(roots),
        total_momentum=total,
    )
    if method != "likelihood" or "val" not in dataset.manifest["splits"]:
        return baseline
    val = baseline_dataset(dataset.root, "val", baseline, max_events=tune_events)
    events = [e for e in val.__getitems__(range(len(val))) if len(e["x"]) <= max_leaves]
    if not events:
        return baseline
    return baseline.tune([e["x"].astype(np.float64) for e in events], [e["target"] for e in events])


def baseline_dataset(
    root: str | Path, split: str, baseline: CombinatorialBaseline, max_events: int | None = None
) -> LCAGDataset:
    """A split as the baseline reads it: its feature columns and LCAG targets."""
    features = list(BASELINE_FEATURES[: baseline.n_features])
    return LCAGDataset(root, split, max_events=max_events, features=features, target="lcag")


def _detector(dataset: LCAGDataset) -> Any:
    """The dataset's detector response (``lcag.data_gen.config.Detector``), or ``None``."""
    if not dataset.manifest.get("config", {}).get("detector"):
        return None
    from lcag.data_gen.config import load_config

    return load_config(dataset.manifest["config"]).detector


def _evaluate_split(
    reco: Reconstructor,
    dataset: LCAGDataset,
    baseline_inputs: LCAGDataset,
    baseline: CombinatorialBaseline,
    depths: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    n_classes = None
    perfect = {m: [] for m in METHODS}
    probabilities: list[float] = []
    sizes, event_depths = [], []
    confusion = species_confusion = None
    examples = []
    drawable = reco.target == "lcag" and not reco.background  # examples: trees of every leaf
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        events = dataset.__getitems__(indices)
        baseline_events = baseline_inputs.__getitems__(indices)
        batch = collate(events)
        x, mask = batch["x"].numpy().astype(np.float64), batch["mask"].numpy()
        target = batch["target"].numpy()
        probs, nodes, species = reco.outputs(x, mask)
        n_classes = probs.shape[-1]
        argmax = probs.argmax(-1)
        decoded = reco.decode(probs, mask)
        with_nodes = reco.decode(probs, mask, nodes)
        full = reco.decode(probs, mask, nodes, x=x)  # and the topology prior
        tree_probability = np.full(len(x), np.nan)
        final = full.copy()  # what Reconstructor gives: the decay grammar's rerank
        if reco.target == "lcag":
            tree_probability = reco.tree_probability(full, probs, mask, nodes, x=x)
            for e, (p, _) in reco.apply_rerank(x, probs, mask, nodes, final).items():
                tree_probability[e] = p
        if species is not None and "species" in batch:
            true_species = batch["species"].numpy()
            known = true_species >= 0
            if species_confusion is None:
                species_confusion = np.zeros((species.shape[-1],) * 2, dtype=np.int64)
            np.add.at(species_confusion, (true_species[known], species.argmax(-1)[known]), 1)
        if confusion is None:
            confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        valid = target >= 0
        np.add.at(confusion, (target[valid], np.clip(decoded[valid], 0, n_classes - 1)), 1)
        small = [k for k, e in enumerate(events) if len(e["x"]) <= baseline.max_leaves]
        found = baseline.lcag([baseline_events[k]["x"].astype(np.float64) for k in small])
        by_baseline = dict(zip(small, found, strict=True))
        for k, event in enumerate(events):
            n = len(event["x"])
            real = np.arange(n)
            truth = event["target"].copy()
            np.fill_diagonal(truth, 0)
            a = argmax[k][np.ix_(real, real)].copy()
            np.fill_diagonal(a, 0)
            d = decoded[k][np.ix_(real, real)]
            perfect["argmax"].append(np.array_equal(a, truth))
            perfect["decoded"].append(np.array_equal(d, truth))
            perfect["nodes"].append(np.array_equal(with_nodes[k][np.ix_(real, real)], truth))
            perfect["full"].append(np.array_equal(full[k][np.ix_(real, real)], truth))
            perfect["grammar"].append(np.array_equal(final[k][np.ix_(real, real)], truth))
            probabilities.append(float(tree_probability[k]))
            b = by_baseline.get(k)
            lcag_truth = baseline_events[k]["target"].copy()
            np.fill_diagonal(lcag_truth, 0)
            perfect["baseline"].append(None if b is None else np.array_equal(b, lcag_truth))
            sizes.append(n)
            event_depths.append(int(depths[event["topology"]]))
            if drawable and len(examples) < 3 and n >= 4 and not perfect["grammar"][-1]:
                trees = {"decoded": d, "full": final[k][np.ix_(real, real)]}
                examples.append(_example(dataset, start + k, event, truth, trees))
    sizes_arr, depth_arr = np.array(sizes), np.array(event_depths)
    result: dict[str, Any] = {"events": len(sizes), "overall": {}, "leaves": {}, "depth": {}}
    for method in METHODS:
        flags = np.array([np.nan if f is None else float(f) for f in perfect[method]])
        result["overall"][method] = _rate(flags)
        for key, values in (("leaves", sizes_arr), ("depth", depth_arr)):
            result[key].setdefault(method, {})
            for v in np.unique(values):
                result[key][method][str(int(v))] = _rate(flags[values == v])
    result["confusion"] = confusion.tolist() if confusion is not None else []
    if species_confusion is not None:
        result["species"] = species_accuracy(species_confusion, reco.species_names)
    result["calibration"] = calibration(np.array(probabilities), np.array(perfect["grammar"]))
    result["examples"] = examples
    return result


def species_accuracy(confusion: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """The particle-type head's accuracy per true species from its confusion matrix
    ``(S, S)`` (rows true, columns predicted): ``{"overall": .., "per_species": {name:
    {"accuracy", "leaves"}}}``, species without leaves left out."""
    per = {}
    for k, name in enumerate(names):
        total = int(confusion[k].sum())
        if total:
            per[name] = {"accuracy": float(confusion[k, k] / total), "leaves": total}
    overall = float(np.trace(confusion) / max(int(confusion.sum()), 1))
    return {"overall": overall, "per_species": per}


def calibration(
    probability: np.ndarray, perfect: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Reliability of the tree probabilities: events binned by probability.

    Args:
        probability: ``(N,)`` each decoded tree's probability (NaN where not computed).
        perfect: ``(N,)`` bool, whether that tree is the true one.

    Returns:
        ``ece`` (expected calibration error: the event-weighted mean over bins of
        ``|perfect rate - mean probability|``); ``ece_noise``, the error that perfectly
        calibrated probabilities would show on these events on average (each tree right with
        its probability, :func:`ece_noise_floor`): an ``ece`` near it is within the events'
        statistics; and per bin its range, events, mean probability and perfect rate.
    """
    known = np.isfinite(probability)
    probability, perfect = probability[known], perfect[known].astype(float)
    index = _calibration_bins(probability, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = []
    for b in range(n_bins):
        inside = index == b
        if not inside.any():
            continue
        mean, rate = float(probability[inside].mean()), float(perfect[inside].mean())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                     "events": int(inside.sum()), "probability": mean, "rate": rate})  # fmt: skip
    return {
        "ece": _ece(probability, perfect[None], index, n_bins)[0],
        "ece_noise": ece_noise_floor(probability, n_bins),
        "events": len(probability),
        "bins": bins,
    }


def ece_noise_floor(
    probability: np.ndarray, n_bins: int = CALIBRATION_BINS, draws: int = 400, seed: int = 0
) -> float:
    """The expected calibration error of perfectly calibrated trees with these probabilities
    ``(N,)``: the mean over ``draws`` samples (fixed ``seed``) in which each tree is right with
    its probability. With few events per bin an ECE of several points is chance alone."""
    probability = np.asarray(probability, dtype=np.float64)
    if not len(probability):
        return float("nan")
    index = _calibration_bins(probability, n_bins)
    right = np.random.default_rng(seed).random((draws, len(probability))) < probability
    return float(_ece(probability, right.astype(float), index, n_bins).mean())


def _calibration_bins(probability: np.ndarray, n_bins: int) -> np.ndarray:
    """``(N,)`` each probability's bin among ``n_bins`` equal ones on ``[0, 1]``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(probability, edges[1:-1]), 0, n_bins - 1)


def _ece(probability: np.ndarray, perfect: np.ndarray, index: np.ndarray, n_bins: int):
    """``(D,)`` expected calibration error of each row of outcomes ``perfect (D, N)``."""
    ece = np.zeros(len(perfect))
    for b in range(n_bins):
        inside = index == b
        if inside.any():
            gap = np.abs(perfect[:, inside].mean(1) - probability[inside].mean())
            ece += inside.sum() / len(probability) * gap
    return ece


def _example(
    dataset: LCAGDataset,
    index: int,
    event: dict[str, Any],
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
) -> Any:
    """An example event for the report's ``examples.png`` (an ``lcag.plots.Example``): the
    true tree with the topology's names and masses, the predicted trees, the momenta."""
    from lcag.plots import Example

    found = dataset.true_tree(index)
    return Example(
        split=dataset.split,
        truth=truth,
        predictions=predictions,
        momenta=np.asarray(event["x"], dtype=np.float64),
        true_tree=None if found is None else found[0],
        true_leaves=None if found is None else found[1],
        event=index,
    )


def _rate(flags: np.ndarray) -> dict[str, float | int]:
    attempted = flags[~np.isnan(flags)]
    return {"rate": float(attempted.mean()) if attempted.size else float("nan"),
            "events": int(attempted.size)}  # fmt: skip


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# lcag evaluation\n\ncheckpoint `{report['checkpoint']}`, data `{report['data']}`\n"]
    for split, result in report["splits"].items():
        label = "unseen topologies" if split == "test_unknown" else "known topologies"
        lines.append(f"## {split} ({label}, {result['events']} events)\n")
        lines.append(
            "| leaves | model, argmax | model, valid tree (pairs only) | "
            "+ node evidence | full method (+ topology prior) | + decay grammar | baseline |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for n in sorted(result["leaves"]["argmax"], key=int):
            cells = []
            for method in METHODS:
                info = result["leaves"][method].get(n, {"rate": float("nan"), "events": 0})
                cells.append(
                    "-" if not info["events"] else f"{info['rate']:.1%} ({info['events']})"
                )
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        overall = [f"**{result['overall'][m]['rate']:.1%}**" for m in METHODS]
        lines.append("| all | " + " | ".join(overall) + " |\n")
        if "species" in result:
            per = result["species"]["per_species"]
            cells = ", ".join(f"{name} {v['accuracy']:.1%}" for name, v in per.items())
            lines.append(
                f"Particle-type head: {result['species']['overall']:.1%} of leaves right "
                f"({cells}).\n"
            )
        cal = result["calibration"]
        lines.append(
            f"Tree probability of the reconstructed trees (with the decay grammar): expected "
            f"calibration error "
            f"{cal['ece']:.3f} over {cal['events']} events ({CALIBRATION_BINS} bins; "
            f"`reliability.png`); perfectly calibrated trees would show "
            f"{cal['ece_noise']:.3f} on as many events, by chance.\n"
        )
    baseline = report["baseline"]
    if baseline.get("method", "window") == "likelihood":
        how = (
            f"likelihood of every leaf subset's invariant mass under {len(baseline['masses'])} "
            f"intermediate particles' line shapes (node penalty {baseline['node_penalty']:g}, "
            f"resolution x {baseline['resolution_scale']:g}, widths x "
            f"{baseline['width_scale']:g}"
            + (", kinematic fit to the mother" if baseline.get("kinematic_fit") else "")
            + (
                f", the tree's leaves chosen (background penalty "
                f"{baseline['background_penalty']:g} per leaf set aside)"
                if baseline.get("background")
                else ""
            )
            + ")"
        )
    else:
        how = f"invariant-mass matching to {len(baseline['masses'])} intermediate masses"
    lines.append(
        f"Baseline: {how}, "
        + (
            "the detector's per-species resolutions"
            if baseline.get("detector")
            else f"momentum resolution {baseline['resolution']:g}"
        )
        + ", events with at most "
        f"{baseline['max_leaves']} leaves.\n"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lcag-evaluate", description="Evaluate a checkpoint beside the physics baseline."
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint from lcag fit")
    parser.add_argument("--data", type=Path, required=True, help="dataset directory")
    parser.add_argument("--split", nargs="+", default=["test", "test_unknown"])
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("--max-events", type=int, default=None, help="events per split")
    parser.add_argument("--baseline-max-leaves", type=int, default=12)
    args = parser.parse_args(argv)

    def run() -> None:
        report = evaluate(
            args.ckpt, args.data, args.split, args.out,
            max_events=args.max_events, baseline_max_leaves=args.baseline_max_leaves,
        )  # fmt: skip
        print(_markdown(report))
        print(f"report and plots in {args.out}")

    return run_console("lcag-evaluate", run)


if __name__ == "__main__":
    sys.exit(main())
