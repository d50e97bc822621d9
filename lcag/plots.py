"""Figures of an evaluation report (matplotlib, written as PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lcag.matrix import lcag_to_tree

__all__ = ["plot_confusion", "plot_examples", "plot_rates", "plot_reliability"]

LABELS = {
    "argmax": "model, argmax",
    "decoded": "model, valid tree (pairs only)",
    "full": "model, valid tree + mass prior",
    "baseline": "invariant-mass baseline",
}

COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:red")


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


def plot_examples(examples: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """Example events: the true and the predicted tree side by side (ASCII drawings)."""
    plt = _pyplot()
    rows = max(len(examples), 1)
    figure, axes = plt.subplots(rows, 2, figsize=(8, 2.6 * rows), squeeze=False)
    for row, (split, truth, predicted) in enumerate(examples):
        for column, (title, matrix) in enumerate((("true", truth), ("predicted", predicted))):
            axis = axes[row][column]
            axis.axis("off")
            axis.set_title(f"{split}: {title}", fontsize=9, loc="left")
            axis.text(0, 1, lcag_to_tree(matrix).draw(), family="monospace", fontsize=7, va="top")
    if not examples:
        axes[0][0].axis("off")
        axes[0][1].axis("off")
        axes[0][0].text(0, 0.5, "every event was reconstructed perfectly", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
        axis.plot(xs, ys, "o-", label=f"{known} (ECE {cal['ece']:.3f}, {cal['events']} events)")
    axis.set_xlabel("tree probability (bin mean)")
    axis.set_ylabel("perfect trees in the bin")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
