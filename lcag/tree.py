"""Decay trees: a rooted tree stored as a parent array, leaves first.

Node ``k < n_leaves`` is leaf ``k`` (the k-th final-state particle, in leaf order); nodes
``n_leaves ..`` are the inner nodes (intermediate particles) in any order; the root's parent is
``-1``. Every inner node has at least two children (a decay has no single-child node), which
is what makes a tree and its LCAG matrix equivalent.

Heights follow the LCAG convention: a leaf has height 0 and an inner node has height
1 + the largest height of its children. ``depth`` counts levels with the root as level 1, so a
root that decays straight into leaves gives depth 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from lcag.errors import InvalidInputError, InvalidTreeError, MissingDependencyError

__all__ = ["DecayTree", "random_tree"]

Nested = Any  # a leaf (int index or str name) or a tuple/list of Nested


class DecayTree:
    """A rooted decay tree over ``n_leaves`` final-state particles.

    Args:
        parents: ``(n_nodes,)`` parent index of every node, ``-1`` for the root. Leaves
            (nodes without children) must come first, in leaf order.
        names: optional ``(n_nodes,)`` particle names (``None`` for an unnamed node).
        pdg_ids: optional ``(n_nodes,)`` PDG ids (0 where unknown).
        masses: optional ``(n_nodes,)`` masses (NaN where unknown).

    Equality (``==``) and ``hash`` are structural: two trees are equal when they group the
    same leaves in the same way, whatever the numbering of inner nodes and whatever the
    labels. Use :meth:`isomorphic` to compare shapes regardless of leaf order.

    Raises:
        InvalidTreeError: the parent array is not a valid decay tree.
    """

    __slots__ = ("_children", "_heights", "_masses", "_n_leaves", "_names", "_parents", "_pdg_ids")

    def __init__(
        self,
        parents: Sequence[int] | np.ndarray,
        *,
        names: Sequence[str | None] | None = None,
        pdg_ids: Sequence[int] | np.ndarray | None = None,
        masses: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        parents_arr = _as_parent_array(parents)
        n_nodes = parents_arr.size
        children: list[list[int]] = [[] for _ in range(n_nodes)]
        for node, parent in enumerate(parents_arr.tolist()):
            if parent >= 0:
                children[parent].append(node)
        n_leaves = sum(1 for c in children if not c)
        for node in range(n_nodes):
            is_leaf = not children[node]
            if is_leaf and node >= n_leaves:
                raise InvalidTreeError(
                    f"parents: leaves must come first, but node {node} is a leaf while "
                    f"only nodes 0..{n_leaves - 1} may be (the tree has {n_leaves} leaves)"
                )
            if len(children[node]) == 1:
                raise InvalidTreeError(
                    f"parents: node {node} has a single child ({children[node][0]}); "
                    "a decay has at least two products"
                )
        self._parents = parents_arr
        self._parents.flags.writeable = False
        self._n_leaves = n_leaves
        self._children = tuple(tuple(c) for c in children)
        self._heights = _heights(self._children, int(np.flatnonzero(parents_arr < 0)[0]))
        self._names = _labels(names, n_nodes, "names")
        self._pdg_ids = _numeric_labels(pdg_ids, n_nodes, "pdg_ids", np.int64)
        self._masses = _numeric_labels(masses, n_nodes, "masses", np.float64)

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_parents(
        cls,
        parents: Sequence[int] | np.ndarray,
        **labels: Any,
    ) -> DecayTree:
        """Build from a parent array (leaves first); same arguments as the constructor."""
        return cls(parents, **labels)

    @classmethod
    def from_nested(cls, nested: Nested) -> DecayTree:
        """Build from nested tuples or lists, e.g. ``((0, 1), ((2, 3), 4))``.

        A tuple or list is an inner node, anything else is a leaf. Leaves are either all
        ints, a permutation of ``0..L-1`` giving each leaf's position, or all strings, taken
        as particle names with leaves numbered in reading order.
        """

        def children_of(item: Nested) -> Sequence[Nested]:
            return item if isinstance(item, (tuple, list)) else ()

        def name_of(item: Nested) -> str | None:
            return item if isinstance(item, str) else None

        tree = _build_from_walk(nested, children_of, name_of, None, None)
        leaves = _leaf_items(nested)
        if all(isinstance(x, Integral) and not isinstance(x, bool) for x in leaves):
            order = [int(x) for x in leaves]
            if sorted(order) != list(range(len(order))):
                raise InvalidTreeError(
                    f"nested: integer leaves must be a permutation of 0..{len(order) - 1}, "
                    f"got {order}"
                )
            # reading-order leaf k sits at position order[k]
            return tree.permute_leaves(np.argsort(order))
        if not all(isinstance(x, str) for x in leaves):
            kinds = sorted({type(x).__name__ for x in leaves})
            raise InvalidTreeError(
                "nested: leaves must be all int positions or all str names, "
                f"got leaves of types {kinds}: {leaves}"
            )
        return tree

    @classmethod
    def from_hierarchy(cls, root: Any, children_attr: str = "children") -> DecayTree:
        """Build from any particle hierarchy exposing ``name`` and ``children``.

        This fits, for example, ``phasespace.GenParticle`` or a decay-chain object, without
        importing their packages. A node's ``mass`` (a number) and ``pdg_id``/``pdgid`` (an
        int) are kept when present. Leaves are numbered in depth-first reading order.
        """

        def children_of(obj: Any) -> Sequence[Any]:
            if not hasattr(obj, children_attr):
                raise InvalidTreeError(f"hierarchy: {obj!r} has no attribute {children_attr!r}")
            kids = getattr(obj, children_attr)
            return list(kids() if callable(kids) else kids or ())

        def name_of(obj: Any) -> str | None:
            name = getattr(obj, "name", None)
            return None if name is None else str(name)

        def mass_of(obj: Any) -> float:
            mass = getattr(obj, "mass", None)
            return float(mass) if isinstance(mass, Real) else float("nan")

        def pdg_of(obj: Any) -> int:
            for attr in ("pdg_id", "pdgid"):
                value = getattr(obj, attr, None)
                if isinstance(value, Integral):
                    return int(value)
            return 0

        return _build_from_walk(root, children_of, name_of, mass_of, pdg_of)

    # ------------------------------------------------------------------------ structure
    @property
    def parents(self) -> np.ndarray:
        """``(n_nodes,)`` read-only parent array, ``-1`` at the root."""
        return self._parents

    @property
    def n_leaves(self) -> int:
        return self._n_leaves

    @property
    def n_nodes(self) -> int:
        return int(self._parents.size)

    @property
    def root(self) -> int:
        return int(np.flatnonzero(self._parents < 0)[0])

    @property
    def leaves(self) -> range:
        return range(self._n_leaves)

    @property
    def inner_nodes(self) -> range:
        return range(self._n_leaves, self.n_nodes)

    @property
    def depth(self) -> int:
        """Number of levels, the root counting as level 1 (a lone leaf has depth 1)."""
        return int(self._heights[self.root]) + 1

    @property
    def heights(self) -> np.ndarray:
        """``(n_nodes,)`` height of every node: 0 for leaves, 1 + tallest child otherwise."""
        return self._heights

    @property
    def names(self) -> tuple[str | None, ...] | None:
        return self._names

    @property
    def pdg_ids(self) -> np.ndarray | None:
        return self._pdg_ids

    @property
    def masses(self) -> np.ndarray | None:
        return self._masses

    def children(self, node: int) -> tuple[int, ...]:
        """The children of ``node`` (empty for a leaf)."""
        return self._children[self._check_node(node)]

    def parent(self, node: int) -> int:
        """The parent of ``node``, ``-1`` for the root."""
        return int(self._parents[self._check_node(node)])

    def is_leaf(self, node: int) -> bool:
        return self._check_node(node) < self._n_leaves

    def ancestors(self, node: int) -> list[int]:
        """The ancestors of ``node`` from its parent up to the root."""
        out = []
        node = self.parent(node)
        while node >= 0:
            out.append(node)
            node = int(self._parents[node])
        return out

    def preorder(self, node: int | None = None) -> Iterator[int]:
        """Walk the subtree of ``node`` (default: the root), parents before children.

        Children are visited in the order of their smallest leaf, so the walk does not
        depend on how inner nodes are numbered.
        """
        stack = [self.root if node is None else self._check_node(node)]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(reversed(self._sorted_children(current)))

    def leaves_under(self, node: int) -> tuple[int, ...]:
        """The leaves below ``node`` (itself for a leaf), sorted."""
        return tuple(sorted(n for n in self.preorder(node) if n < self._n_leaves))

    def label(self, node: int) -> str:
        """A short human-readable label: the name if known, else the leaf index or height."""
        node = self._check_node(node)
        name = self._names[node] if self._names is not None else None
        if node < self._n_leaves:
            return f"{name} [{node}]" if name else f"[{node}]"
        height = int(self._heights[node])
        return f"{name} (h={height})" if name else f"* (h={height})"

    # ----------------------------------------------------------------------- transforms
    def permute_leaves(self, order: Sequence[int] | np.ndarray) -> DecayTree:
        """A copy whose leaf ``k`` is this tree's leaf ``order[k]`` (labels move along).

        With ``M = tree_to_lcag(self)``, ``tree_to_lcag(self.permute_leaves(order))`` is
        ``M[order][:, order]``.
        """
        order_arr = _check_permutation(order, self._n_leaves)
        new_index = np.arange(self.n_nodes)
        new_index[order_arr] = np.arange(self._n_leaves)  # old leaf -> new leaf
        node_order = np.concatenate([order_arr, np.arange(self._n_leaves, self.n_nodes)])
        old_parents = self._parents[node_order]
        new_parents = np.where(old_parents < 0, -1, new_index[np.maximum(old_parents, 0)])
        return DecayTree(
            new_parents,
            names=None if self._names is None else [self._names[i] for i in node_order],
            pdg_ids=None if self._pdg_ids is None else self._pdg_ids[node_order],
            masses=None if self._masses is None else self._masses[node_order],
        )

    def canonical_form(self, *, leaf_ids: bool = True, labels: bool = False) -> tuple:
        """A nested tuple equal for two trees exactly when they are the same tree.

        Args:
            leaf_ids: keep leaf positions; ``False`` compares shapes only (isomorphism).
            labels: include each node's name (and mass, if known) in the comparison.
        """

        def form(node: int) -> tuple:
            own: tuple = ()
            if labels:
                name = self._names[node] if self._names is not None else None
                mass = None if self._masses is None else float(self._masses[node])
                own = (name or "", "" if mass is None or np.isnan(mass) else repr(mass))
            if node < self._n_leaves:
                return ("leaf", node if leaf_ids else -1, *own)
            kids = sorted((form(c) for c in self._children[node]), key=repr)
            return ("node", tuple(kids), *own)

        return form(self.root)

    def isomorphic(self, other: DecayTree, *, labels: bool = False) -> bool:
        """True when the two trees have the same shape, ignoring which leaf is where."""
        return self.canonical_form(leaf_ids=False, labels=labels) == other.canonical_form(
            leaf_ids=False, labels=labels
        )

    def to_nested(self) -> Nested:
        """Nested tuples of leaf indices; ``DecayTree.from_nested`` inverts it."""

        def nest(node: int) -> Nested:
            if node < self._n_leaves:
                return node
            return tuple(nest(c) for c in self._sorted_children(node))

        return nest(self.root)

    # -------------------------------------------------------------------------- display
    def draw(self) -> str:
        """An ASCII drawing, one node per line, children ordered by their smallest leaf."""
        lines: list[str] = []

        def walk(node: int, prefix: str, connector: str, child_prefix: str) -> None:
            lines.append(prefix + connector + self.label(node))
            kids = self._sorted_children(node)
            for k, child in enumerate(kids):
                last = k == len(kids) - 1
                walk(
                    child,
                    prefix + child_prefix,
                    "`-- " if last else "|-- ",
                    "    " if last else "|   ",
                )

        walk(self.root, "", "", "")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """A Graphviz DOT description (render it with ``dot -Tpng``)."""
        out = ["digraph decay {", "  node [shape=box];"]
        for node in range(self.n_nodes):
            shape = "ellipse" if node < self._n_leaves else "box"
            label = self.label(node).replace('"', '\\"')
            out.append(f'  n{node} [label="{label}", shape={shape}];')
        for node in range(self.n_nodes):
            for child in self._sorted_children(node):
                out.append(f"  n{node} -> n{child};")
        out.append("}")
        return "\n".join(out)

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` (edges parent -> child) with node attributes.

        Node attributes: ``leaf`` (bool), ``height``, and ``name``/``pdg_id``/``mass`` when
        known.
        """
        try:
            import networkx as nx
        except ImportError as exc:  # pragma: no cover - exercised only without networkx
            raise MissingDependencyError(
                "DecayTree.to_networkx needs networkx: pip install 'lcag[graph]'"
            ) from exc
        graph = nx.DiGraph()
        for node in range(self.n_nodes):
            attrs: dict[str, Any] = {
                "leaf": node < self._n_leaves,
                "height": int(self._heights[node]),
            }
            if self._names is not None:
                attrs["name"] = self._names[node]
            if self._pdg_ids is not None:
                attrs["pdg_id"] = int(self._pdg_ids[node])
            if self._masses is not None:
                attrs["mass"] = float(self._masses[node])
            graph.add_node(node, **attrs)
        graph.add_edges_from(
            (int(p), node) for node, p in enumerate(self._parents.tolist()) if p >= 0
        )
        return graph

    # --------------------------------------------------------------------------- dunder
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DecayTree):
            return NotImplemented
        return self._n_leaves == other._n_leaves and self.canonical_form() == other.canonical_form()

    def __hash__(self) -> int:
        return hash(self.canonical_form())

    def __repr__(self) -> str:
        return f"DecayTree(n_leaves={self._n_leaves}, depth={self.depth}, {self.to_nested()!r})"

    def __str__(self) -> str:
        return self.draw()

    # -------------------------------------------------------------------------- private
    def _check_node(self, node: int) -> int:
        if not isinstance(node, Integral) or not 0 <= node < self.n_nodes:
            raise InvalidInputError(f"node: {node!r} is not a node index in 0..{self.n_nodes - 1}")
        return int(node)

    def _sorted_children(self, node: int) -> list[int]:
        return sorted(self._children[node], key=self._min_leaf)

    def _min_leaf(self, node: int) -> int:
        while node >= self._n_leaves:
            node = min(self._children[node], key=self._min_leaf)
        return node


def random_tree(
    rng: np.random.Generator,
    n_leaves: int,
    *,
    max_depth: int = 8,
    max_children: int = 6,
) -> DecayTree:
    """A random decay tree with exactly ``n_leaves`` leaves, for tests and benchmarks.

    Each inner node has 2..``max_children`` children and the depth (root = level 1) is at
    most ``max_depth``. Leaf positions are shuffled. This samples shapes only; the physics
    topology sampler with masses lives in ``lcag.data_gen``.
    """
    if n_leaves < 1:
        raise InvalidInputError(f"n_leaves: must be >= 1, got {n_leaves}")
    if max_children < 2:
        raise InvalidInputError(f"max_children: must be >= 2, got {max_children}")
    if n_leaves > max_children ** (max_depth - 1):
        raise InvalidInputError(
            f"n_leaves: {n_leaves} leaves do not fit in depth {max_depth} with at most "
            f"{max_children} children per node"
        )

    def grow(n: int, levels: int) -> Nested:
        if n == 1:
            return "x"
        capacity = max_children ** (levels - 2)  # most leaves one child subtree can hold
        lowest = max(2, -(-n // capacity))
        m = int(rng.integers(lowest, min(max_children, n) + 1))
        sizes = _random_composition(rng, n, m, capacity)
        return tuple(grow(int(s), levels - 1) for s in sizes)

    shape = grow(n_leaves, max_depth)
    tree = DecayTree.from_nested(shape)
    return DecayTree(tree.permute_leaves(rng.permutation(n_leaves)).parents)


def _random_composition(rng: np.random.Generator, n: int, m: int, cap: int) -> np.ndarray:
    """``m`` positive integers summing to ``n``, each at most ``cap`` (requires m*cap >= n)."""
    sizes = np.ones(m, dtype=np.int64)
    for _ in range(n - m):
        open_slots = np.flatnonzero(sizes < cap)
        sizes[rng.choice(open_slots)] += 1
    return sizes


# ------------------------------------------------------------------------------ helpers
def _as_parent_array(parents: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(parents)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidTreeError(f"parents: expected a non-empty 1-D array, got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr)))
    )
    if not integral:
        raise InvalidTreeError(f"parents: expected integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    n = arr.size
    bad = np.flatnonzero((arr < -1) | (arr >= n))
    if bad.size:
        i = int(bad[0])
        raise InvalidTreeError(f"parents[{i}] = {arr[i]} is not -1 or a node index in 0..{n - 1}")
    roots = np.flatnonzero(arr == -1)
    if roots.size != 1:
        raise InvalidTreeError(
            f"parents: a tree has exactly one root (parent -1), found {roots.size}: "
            f"nodes {roots.tolist()}"
        )
    # Pointer jumping: after ceil(log2 n)+1 rounds every node's jump must have hit the root.
    jump = np.where(arr < 0, np.arange(n), arr)
    for _ in range(int(np.ceil(np.log2(n + 1))) + 1):
        jump = jump[jump]
    stuck = np.flatnonzero(jump != roots[0])
    if stuck.size:
        raise InvalidTreeError(
            f"parents: node {int(stuck[0])} does not reach the root (the array has a cycle)"
        )
    return arr


def _heights(children: tuple[tuple[int, ...], ...], root: int) -> np.ndarray:
    heights = np.zeros(len(children), dtype=np.int64)
    order = [root]
    for node in order:
        order.extend(children[node])
    for node in reversed(order):
        if children[node]:
            heights[node] = 1 + max(heights[c] for c in children[node])
    heights.flags.writeable = False
    return heights


def _labels(values: Sequence[str | None] | None, n: int, field: str) -> tuple | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise InvalidTreeError(f"{field}: expected {n} entries (one per node), got {len(values)}")
    return tuple(None if v is None else str(v) for v in values)


def _numeric_labels(
    values: Sequence[float] | np.ndarray | None, n: int, field: str, dtype: type
) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=dtype)
    if arr.shape != (n,):
        raise InvalidTreeError(f"{field}: expected shape ({n},) (one per node), got {arr.shape}")
    arr.flags.writeable = False
    return arr


def _check_permutation(order: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(order)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(
            f"order: expected {n} integer leaf indices, got shape {arr.shape} dtype {arr.dtype}"
        )
    if not np.array_equal(np.sort(arr), np.arange(n)):
        raise InvalidInputError(f"order: not a permutation of 0..{n - 1}: {arr.tolist()}")
    return arr.astype(np.int64)


def _leaf_items(nested: Nested) -> list:
    if isinstance(nested, (tuple, list)):
        return [leaf for item in nested for leaf in _leaf_items(item)]
    return [nested]


def _build_from_walk(
    root: Any,
    children_of: Callable[[Any], Sequence[Any]],
    name_of: Callable[[Any], str | None],
    mass_of: Callable[[Any], float] | None,
    pdg_of: Callable[[Any], int] | None,
) -> DecayTree:
    """Number a hierarchy's nodes (leaves first, in reading order) and build the tree."""
    leaves: list[tuple[Any, int]] = []  # (object, parent slot)
    inner: list[tuple[Any, int]] = []
    stack: list[tuple[Any, int]] = [(root, -1)]
    seen = 0
    while stack:
        obj, parent_slot = stack.pop()
        seen += 1
        if seen > 1_000_000:
            raise InvalidTreeError("hierarchy: more than a million nodes (is it cyclic?)")
        kids = children_of(obj)
        if not kids:
            leaves.append((obj, parent_slot))
            continue
        slot = len(inner)
        inner.append((obj, parent_slot))
        stack.extend((kid, slot) for kid in reversed(list(kids)))
    n_leaves = len(leaves)

    def node_id(slot: int) -> int:
        return -1 if slot < 0 else n_leaves + slot

    entries = leaves + inner
    parents = [node_id(slot) for _, slot in entries]
    objs = [obj for obj, _ in entries]
    names = [name_of(o) for o in objs]
    masses = None if mass_of is None else [mass_of(o) for o in objs]
    pdg_ids = None if pdg_of is None else [pdg_of(o) for o in objs]
    return DecayTree(
        parents,
        names=names if any(n is not None for n in names) else None,
        masses=masses if masses and not np.all(np.isnan(masses)) else None,
        pdg_ids=pdg_ids if pdg_ids and any(pdg_ids) else None,
    )
