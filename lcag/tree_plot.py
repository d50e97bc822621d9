"""Decay trees drawn as node-link diagrams on a matplotlib Axes (no graphviz needed).

The layout is computed by hand: the leaves are spread on the x axis one unit apart in the
tree's depth-first order (children ordered by their smallest leaf, as ``DecayTree.preorder``
walks them), so no two edges cross; each inner node sits at the mean x of its children; y is
the node's height (the LCAG convention: leaves on the bottom line at 0, each inner node one
above its tallest child) or its level below the root.

Nodes of two trees over the same leaves are compared by their leaf sets (frozensets of event
leaf indices), since the numbering of inner nodes differs from tree to tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lcag.errors import InvalidInputError
from lcag.tree import DecayTree

__all__ = [
    "differing_nodes",
    "draw_tree",
    "inner_leaf_sets",
    "invariant_mass",
    "layout_tree",
    "leaf_sets",
]

LeafSet = frozenset[int]

EDGE_COLOR = "0.55"
LEAF_COLOR = "white"
NODE_COLOR = "tab:blue"
INK = "0.15"


def layout_tree(tree: DecayTree, *, y: Literal["height", "depth"] = "height") -> np.ndarray:
    """A tidy top-down layout: ``(n_nodes, 2)`` positions ``(x, y)`` indexed by node.

    Args:
        tree: the tree to lay out.
        y: ``"height"`` puts every leaf at y = 0 and a node at its height; ``"depth"`` puts
            the root at ``tree.depth - 1`` and every node one below its parent.

    Leaves take x = 0, 1, .. in depth-first order; an inner node's x is the mean of its
    children's, so it lies within the span of its leaves and above them.
    """
    if y not in ("height", "depth"):
        raise InvalidInputError(f"y: expected 'height' or 'depth', got {y!r}")
    walk = list(tree.preorder())
    xs = np.zeros(tree.n_nodes)
    leaves = [node for node in walk if tree.is_leaf(node)]
    xs[leaves] = np.arange(len(leaves), dtype=float)
    for node in reversed(walk):  # children before their parent
        kids = tree.children(node)
        if kids:
            xs[node] = float(np.mean(xs[list(kids)]))
    if y == "height":
        ys = tree.heights.astype(float)
    else:
        level = np.zeros(tree.n_nodes)
        for node in walk:  # parents before children
            parent = tree.parent(node)
            level[node] = 0.0 if parent < 0 else level[parent] + 1.0
        ys = (tree.depth - 1) - level
    return np.stack([xs, ys], axis=1)


def leaf_sets(tree: DecayTree, leaf_ids: Sequence[int] | np.ndarray | None = None) -> list[LeafSet]:
    """The set of leaves below each node, ``[node] -> frozenset``.

    Args:
        leaf_ids: the event leaf index of each tree leaf (default: the tree's own numbering),
            for a tree that covers only some of an event's leaves.
    """
    ids = _leaf_ids(tree, leaf_ids)
    out: list[LeafSet] = [frozenset()] * tree.n_nodes
    for node in reversed(list(tree.preorder())):
        kids = tree.children(node)
        if kids:
            out[node] = frozenset().union(*(out[c] for c in kids))
        else:
            out[node] = frozenset({int(ids[node])})
    return out


def inner_leaf_sets(
    tree: DecayTree, leaf_ids: Sequence[int] | np.ndarray | None = None
) -> set[LeafSet]:
    """The leaf sets of the tree's inner nodes (the root included): the tree, as sets."""
    sets = leaf_sets(tree, leaf_ids)
    return {sets[node] for node in tree.inner_nodes}


def differing_nodes(
    tree: DecayTree,
    reference: DecayTree,
    *,
    leaf_ids: Sequence[int] | np.ndarray | None = None,
    reference_leaf_ids: Sequence[int] | np.ndarray | None = None,
) -> set[LeafSet]:
    """Leaf sets of the inner nodes of ``tree`` that are no inner node of ``reference``.

    With ``tree`` a prediction and ``reference`` the truth these are the wrong nodes; the
    other way round, the truth's particles that were missed. Empty in both directions
    exactly when the two trees are equal.
    """
    return inner_leaf_sets(tree, leaf_ids) - inner_leaf_sets(reference, reference_leaf_ids)


def invariant_mass(momenta: np.ndarray, leaves: Sequence[int] | LeafSet) -> float:
    """The invariant mass of the leaves' summed 4-momenta, rows ``(px, py, pz, E)``.

    A negative squared mass (rounding, or smearing of near-massless leaves) gives 0.
    """
    rows = np.asarray(momenta, dtype=np.float64)[sorted(leaves)]
    px, py, pz, energy = rows.sum(axis=0)[:4]
    return float(np.sqrt(max(energy**2 - px**2 - py**2 - pz**2, 0.0)))


def draw_tree(
    axis: Any,
    tree: DecayTree,
    *,
    compare_to: DecayTree | None = None,
    leaf_ids: Sequence[int] | np.ndarray | None = None,
    compare_leaf_ids: Sequence[int] | np.ndarray | None = None,
    momenta: np.ndarray | None = None,
    extra_leaves: Sequence[int] = (),
    mark_color: str = "tab:red",
    title: str | None = None,
    title_color: str = INK,
    y: Literal["height", "depth"] = "height",
) -> set[LeafSet]:
    """Draw ``tree`` on a matplotlib ``axis`` as nodes and edges; return the marked nodes.

    Labels: a leaf shows its event index, and its name when the tree has names; an inner
    node shows its name when known and its mass: ``tree.masses`` where known, else the
    invariant mass of its leaves from ``momenta``.

    Args:
        axis: a matplotlib ``Axes``.
        tree: the tree to draw.
        compare_to: mark (in ``mark_color``) each inner node of ``tree`` whose leaf set is no
            inner node of this tree (see :func:`differing_nodes`).
        leaf_ids: the event leaf index of each leaf of ``tree`` (default: its own numbering).
        compare_leaf_ids: the same for ``compare_to``.
        momenta: ``(n, 4)`` the event's leaves' ``(px, py, pz, E)``, indexed by event leaf.
        extra_leaves: event leaves outside the tree (background), drawn apart to its right.
        mark_color: colour of the marked nodes and their labels.
        title: the panel's title, in ``title_color``.
        y: ``"height"`` or ``"depth"`` (see :func:`layout_tree`).

    Returns:
        The leaf sets of the marked nodes (empty without ``compare_to``).
    """
    ids = _leaf_ids(tree, leaf_ids)
    if momenta is not None and len(momenta) <= max([int(ids.max()), *extra_leaves]):
        raise InvalidInputError(
            f"momenta: {len(momenta)} rows, but the tree has event leaf {int(ids.max())}"
        )
    position = layout_tree(tree, y=y)
    sets = leaf_sets(tree, ids)
    marked = (
        set()
        if compare_to is None
        else differing_nodes(tree, compare_to, leaf_ids=ids, reference_leaf_ids=compare_leaf_ids)
    )
    for node in range(tree.n_nodes):
        parent = tree.parent(node)
        if parent >= 0:
            axis.plot(*position[[parent, node]].T, color=EDGE_COLOR, lw=1.0, zorder=1)
    leaves = list(tree.leaves)
    axis.scatter(*position[leaves].T, s=70, marker="o", facecolor=LEAF_COLOR,
                 edgecolor=INK, linewidth=1.0, zorder=2)  # fmt: skip
    inner = list(tree.inner_nodes)
    colors = [mark_color if sets[node] in marked else NODE_COLOR for node in inner]
    axis.scatter(*position[inner].T, s=90, marker="s", c=colors, edgecolor=INK,
                 linewidth=0.8, zorder=2)  # fmt: skip
    names = tree.names
    for node in leaves:
        name = names[node] if names is not None else None
        axis.annotate(f"{int(ids[node])}" + (f"\n{name}" if name else ""), position[node],
                      xytext=(0, -7), textcoords="offset points", ha="center", va="top",
                      fontsize=7, color=INK)  # fmt: skip
    for node in inner:
        text = _node_label(tree, node, sets[node], momenta)
        if text:
            color = mark_color if sets[node] in marked else INK
            axis.annotate(text, position[node], xytext=(6, 2), textcoords="offset points",
                          ha="left", va="bottom", fontsize=7, color=color)  # fmt: skip
    right = float(position[:, 0].max())
    for k, leaf in enumerate(extra_leaves):  # background leaves: apart, on the leaves' line
        at = (right + 1.5 + k, 0.0)
        axis.scatter(*at, s=70, marker="o", facecolor="0.85", edgecolor="0.5", zorder=2)
        axis.annotate(f"{leaf}\nbkg", at, xytext=(0, -7), textcoords="offset points",
                      ha="center", va="top", fontsize=7, color="0.4")  # fmt: skip
    width = right + (1.5 + len(extra_leaves) if extra_leaves else 0.0)
    top = float(position[:, 1].max())
    axis.set_xlim(-0.7, width + 0.9)
    axis.set_ylim(-0.9, top + 0.6)
    axis.set_axis_off()
    if title is not None:
        axis.set_title(title, fontsize=8, color=title_color)
    return marked


def _node_label(tree: DecayTree, node: int, leaves: LeafSet, momenta: np.ndarray | None) -> str:
    name = tree.names[node] if tree.names is not None else None
    mass = float("nan") if tree.masses is None else float(tree.masses[node])
    if np.isnan(mass) and momenta is not None:
        mass = invariant_mass(momenta, leaves)
    parts = [name] if name else []
    if not np.isnan(mass) and name != f"m{mass:g}":  # random topologies are named by mass
        parts.append(f"m={mass:.4g}")
    return "\n".join(parts)


def _leaf_ids(tree: DecayTree, leaf_ids: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if leaf_ids is None:
        return np.arange(tree.n_leaves)
    ids = np.asarray(leaf_ids, dtype=np.int64)
    if ids.shape != (tree.n_leaves,) or len(set(ids.tolist())) != tree.n_leaves:
        raise InvalidInputError(
            f"leaf_ids: expected {tree.n_leaves} distinct event leaf indices (one per leaf of "
            f"the tree), got {ids.tolist()}"
        )
    return ids
