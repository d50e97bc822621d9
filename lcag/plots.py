"""Figures of an evaluation report (matplotlib, written as PNG files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcag.matrix import lcag_to_tree, tree_to_lcag
from lcag.tree import DecayTree
from lcag.tree_plot import leaf_sets

__all__ = ["Example", "plot_confusion", "plot_examples", "plot_rates", "plot_reliability"]

LABELS = {
    "argmax": "model, argmax",
    "decoded": "model, valid tree (pairs only)",
    "nodes": "model, valid tree + node evidence",
    "full": "model, full method (+ topology prior)",
    "grammar": "model, + decay grammar rerank",
    "baseline": "invariant-mass baseline",
}

COLORS = ("tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:red")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rates(report: dict[str, Any], by: str, path: Path) -> None:
    """Perfect-tree rate against ``by`` (``leaves`` or ``depth``), per method and split."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    styles = {"test": "-", "test_unknown": "--"}
    for split, result in report["splits"].items():
        for method, color in zip(LABELS, COLORS, strict=True):
            points = sorted(
                (int(k), v["rate"]) for k, v in result[by][method].items() if v["events"]
            )
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            known = "known" if split == "test" else "unseen"
            axis.plot(xs, np.array(ys) * 100, styles.get(split, ":"), color=color, marker="o",
                      label=f"{LABELS[method]} ({known})")  # fmt: skip
    axis.set_xlabel("leaves per event" if by == "leaves" else "tree depth")
    axis.set_ylabel("perfect trees (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    """The model's LCAG confusion matrix (valid-tree decoding), rows normalised."""
    plt = _pyplot()
    splits = [s for s, r in report["splits"].items() if r["confusion"]]
    figure, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.8), squeeze=False)
    for axis, split in zip(axes[0], splits, strict=True):
        counts = np.array(report["splits"][split]["confusion"], dtype=float)[1:, 1:]
        rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        axis.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(rows))
        axis.set_xticks(ticks, ticks + 1)
        axis.set_yticks(ticks, ticks + 1)
        axis.set_xlabel("predicted LCAG")
        axis.set_ylabel("true LCAG")
        axis.set_title(split, fontsize=9)
        for i in ticks:
            for j in ticks:
                if counts[i].sum():
                    axis.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass(frozen=True)
class Example:
    """One example event of a report: its true tree and the predicted ones.

    Attributes:
        split: the dataset split the event comes from.
        truth: ``(n, n)`` the true LCAG, 0 on the diagonal (and on background leaves' rows).
        predictions: panel key (a method of :data:`LABELS`, or any title) -> ``(n, n)``
            predicted LCAG, drawn in this order.
        momenta: ``(n, 4)`` the leaves' ``(px, py, pz, E)``: predicted nodes are labelled with
            the invariant mass of their leaves.
        true_tree: the truth with the topology's names and nominal masses, its leaf ``j``
            being event leaf ``true_leaves[j]`` (as ``LCAGDataset.true_tree`` returns it);
            default: the tree of ``truth``, unlabelled.
        true_leaves: see ``true_tree``.
        event: the event's index in its split, for the title.
    """

    split: str
    truth: np.ndarray
    predictions: Mapping[str, np.ndarray]
    momenta: np.ndarray | None = None
    true_tree: DecayTree | None = None
    true_leaves: np.ndarray | None = None
    event: int | None = None


def plot_examples(
    examples: Sequence[Example | tuple[str, np.ndarray, np.ndarray]], path: Path
) -> None:
    """Example events, one row each: the true tree, then each predicted tree, as diagrams.

    A predicted node whose leaf set is no node of the truth is red; the truth's nodes that
    the last prediction (the full method) missed are orange. A predicted node that is a
    true one takes the truth's name; its mass is its leaves' invariant mass. A tuple
    ``(split, truth, predicted)`` is taken as an :class:`Example` with one prediction.
    """
    from lcag.tree_plot import differing_nodes, draw_tree

    plt = _pyplot()
    rows = [_as_example(e) for e in examples]
    columns = 1 + max((len(e.predictions) for e in rows), default=1)
    figure, axes = plt.subplots(len(rows) or 1, columns, figsize=(3.9 * columns,
                                3.3 * max(len(rows), 1)), squeeze=False)  # fmt: skip
    for axis_row, example in zip(axes, rows, strict=False):
        truth, truth_leaves, background = _true_tree(example)
        trees = {key: lcag_to_tree(m) for key, m in example.predictions.items()}
        last = list(trees)[-1] if trees else None
        where = f"{example.split}" + ("" if example.event is None else f" event {example.event}")
        n = len(example.truth)
        draw_tree(axis_row[0], truth, leaf_ids=truth_leaves, extra_leaves=background,
                  compare_to=None if last is None else trees[last], mark_color=MISSED,
                  title=f"{where}, {n} leaves: true tree"
                  + ("" if last is None else f"\n(orange: missed by {_label(last)})"))  # fmt: skip
        truth_names = _names_by_leaf_set(truth, truth_leaves)
        for axis, (key, tree) in zip(axis_row[1:], trees.items(), strict=False):
            right = np.array_equal(_zero_diagonal(example.predictions[key]),
                                   _zero_diagonal(example.truth))  # fmt: skip
            wrong = draw_tree(axis, _named(tree, truth_names), compare_to=truth,
                              compare_leaf_ids=truth_leaves, momenta=example.momenta)  # fmt: skip
            missed = differing_nodes(truth, tree, leaf_ids=truth_leaves)
            verdict = "right" if right else f"wrong: {len(wrong)} false, {len(missed)} missed"
            axis.set_title(f"{_label(key)}\n{verdict}", fontsize=8,
                           color=RIGHT if right else WRONG)  # fmt: skip
        for axis in axis_row[1 + len(trees) :]:
            axis.set_axis_off()
    if not rows:
        for axis in axes[0]:
            axis.axis("off")
        axes[0][0].text(0, 0.5, "every event was reconstructed perfectly", fontsize=9)
    else:
        figure.legend(handles=_legend_handles(), loc="lower center", ncol=4, fontsize=7,
                      frameon=False)  # fmt: skip
    figure.tight_layout(rect=(0, 0.04 if rows else 0, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


MISSED = "tab:orange"
RIGHT = "tab:green"
WRONG = "tab:red"


def _label(key: str) -> str:
    return LABELS.get(key, key)


def _as_example(example: Example | tuple[str, np.ndarray, np.ndarray]) -> Example:
    if isinstance(example, Example):
        return example
    split, truth, predicted = example
    return Example(split, np.asarray(truth), {"predicted": np.asarray(predicted)})


def _zero_diagonal(matrix: np.ndarray) -> np.ndarray:
    out = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(out, 0)
    return out


def _true_tree(example: Example) -> tuple[DecayTree, np.ndarray, list[int]]:
    """The truth to draw, the event leaf of each of its leaves, and the background leaves."""
    truth = _zero_diagonal(example.truth)
    signal = np.flatnonzero((truth > 0).any(axis=1)) if len(truth) > 1 else np.arange(1)
    background = sorted(set(range(len(truth))) - set(signal.tolist()))
    tree = example.true_tree
    if tree is not None and example.true_leaves is not None:
        leaves = np.asarray(example.true_leaves)
        if np.array_equal(leaves, signal) and np.array_equal(
            tree_to_lcag(tree), truth[np.ix_(signal, signal)]
        ):
            return tree, leaves, background
    return lcag_to_tree(truth[np.ix_(signal, signal)]), signal, background


def _names_by_leaf_set(tree: DecayTree, leaf_ids: np.ndarray) -> dict[frozenset[int], str]:
    if tree.names is None:
        return {}
    sets = leaf_sets(tree, leaf_ids)
    return {sets[n]: tree.names[n] for n in range(tree.n_nodes) if tree.names[n]}


def _named(tree: DecayTree, names: dict[frozenset[int], str]) -> DecayTree:
    """``tree`` with the truth's names on the nodes (and leaves) that are true ones."""
    if not names:
        return tree
    sets = leaf_sets(tree)
    return DecayTree(tree.parents, names=[names.get(s) for s in sets])


def _legend_handles() -> list[Any]:
    from matplotlib.lines import Line2D

    def marker(shape: str, face: str, text: str) -> Any:
        return Line2D([], [], ls="", marker=shape, markerfacecolor=face, markeredgecolor="0.15",
                      markersize=7, label=text)  # fmt: skip

    return [
        marker("o", "white", "leaf (event index)"),
        marker("s", "tab:blue", "particle (mass: nominal if true, else of its leaves)"),
        marker("s", WRONG, "predicted, not in the truth"),
        marker("s", MISSED, "true, missed"),
    ]


def plot_reliability(report: dict[str, Any], path: Path) -> None:
    """Perfect-tree rate against the full method's tree probability, per split."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for split, result in report["splits"].items():
        cal = result["calibration"]
        if not cal["bins"]:
            continue
        xs = [b["probability"] for b in cal["bins"]]
        ys = [b["rate"] for b in cal["bins"]]
        known = "known" if split == "test" else "unseen" if split == "test_unknown" else split
        chance = f", chance {cal['ece_noise']:.3f}" if "ece_noise" in cal else ""
        label = f"{known} (ECE {cal['ece']:.3f}{chance}, {cal['events']} events)"
        axis.plot(xs, ys, "o-", label=label)
    axis.set_xlabel("tree probability (bin mean)")
    axis.set_ylabel("perfect trees in the bin")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
