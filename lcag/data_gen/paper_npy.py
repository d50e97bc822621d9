"""Convert the published dataset of Kahn et al. 2022 into lcag's on-disk format.

The published layout has one pair of files per topology and split::

    <src>/known/leaves_<split>.<i>.npy     (N, L, 4) float64 leaf 4-momenta (px, py, pz, E)
    <src>/known/lcas_<split>.<i>.npy       (N, L, L) the events' LCAG matrices
    <src>/unknown/...                      the same for topologies never used in training

``<i>`` names one topology of its folder (the same ``i`` in several splits is the same
decay); leaves are shuffled per event, and a matrix diagonal may hold 0 or -1 (read as 0).

Splits map as ``known/train -> train``, ``known/val -> val``, ``known/test -> test`` and
``unknown/test -> test_unknown``. lcag has no validation split for unknown topologies, so
``unknown/val`` (and an ``unknown/train``, should one exist) is skipped; the skipped files are
listed in the manifest's ``config["skipped"]``.

What is reconstructed, per topology ``(folder, i)``, from the first event of its first file
(in the order train, val, test):

- the truth tree, ``lcag_to_tree`` of that event's matrix (topology leaf ``k`` is that event's
  leaf ``k``);
- node masses: a leaf's ``sqrt(E^2 - |p|^2)`` and an inner node's invariant mass of the sum of
  its leaves' 4-momenta (tiny negative squares clipped to 0). Masses that agree to within
  ``1e-5`` of the topology's largest mass are merged into one value (their mean), within a
  topology and then across topologies, so that float noise does not turn one species into
  several (``TopologyTable.final_state_masses`` stays clean). Widths are 0 (the paper's
  masses are fixed).

Known topologies get ids ``0..K-1`` and unknown ones ``K..``, each folder in increasing ``i``.
For every event, ``order[e, k]`` is the topology leaf that event leaf ``k`` is, so that
``lcag[e] == permute(tree_to_lcag(topology.tree), order[e])``. Among leaves (or subtrees) the
matrix cannot tell apart, the one whose mass matches is chosen, so ``masses[order[e]]`` are the
event's leaf masses; events where no such choice exists are counted in
``config["leaf_mass_mismatches"]`` (their matrices still match exactly).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcag.data_gen.config import SPLITS
from lcag.data_gen.shards import FEATURES, MANIFEST, TopologyTable, checksum_path, shard_path
from lcag.data_gen.topology import Topology
from lcag.data_gen.writer import ShardPlan, claim_directory, publish_shard, write_manifest
from lcag.errors import ConfigError, DatasetError, InvalidLCAGError
from lcag.matrix import is_valid_lcag, lcag_to_tree, validate_lcag
from lcag.tree import DecayTree

__all__ = ["convert_paper_npy"]

# lcag split <- (folder, published split)
SOURCES: tuple[tuple[str, str, str], ...] = (
    ("train", "known", "train"),
    ("val", "known", "val"),
    ("test", "known", "test"),
    ("test_unknown", "unknown", "test"),
)
SKIP_REASON = (
    "unknown topologies only feed test_unknown (from unknown/test); lcag has no split for "
    "unknown/val (or unknown/train)"
)
PUBLISHED_SPLITS = ("train", "val", "test")
MAX_LEAVES = 127  # order and lcag are stored as int8
MASS_TOLERANCE = 1e-5  # relative to a topology's largest mass: masses closer are one mass
_NAME = re.compile(r"^(leaves|lcas)_([^.]+)\.(\d+)\.npy$")
_CHUNK_ELEMENTS = 1 << 20  # events per chunk times L^2


@dataclass(frozen=True)
class _Pair:
    """One topology's events in one published split: a leaves file and its lcas partner."""

    folder: str
    split: str
    index: int
    leaves: Path
    lcas: Path
    n_events: int
    n_leaves: int


@dataclass(frozen=True)
class _Reference:
    """A topology as the matcher needs it.

    Attributes:
        name: ``"<folder>/<i>"``.
        source: the file whose event 0 defined the topology.
        matrix: ``(L, L)`` int64 LCAG of the topology's leaves.
        momenta: ``(L, 4)`` the defining event's leaf 4-momenta.
        masses: ``(C,)`` sorted distinct node masses of the topology.
    """

    name: str
    source: Path
    matrix: np.ndarray
    momenta: np.ndarray
    masses: np.ndarray

    @property
    def height(self) -> int:
        return int(self.matrix.max())


def convert_paper_npy(
    src: Path,
    out: Path,
    *,
    overwrite: bool = False,
    dtype: str = "float64",
    events_per_shard: int = 20_000,
) -> dict[str, Any]:
    """Convert the published ``known/`` + ``unknown/`` ``.npy`` layout in ``src`` into ``out``.

    Args:
        src: the folder holding ``known/`` (required) and ``unknown/`` (optional).
        out: the dataset directory to write (empty, or a dataset of this same conversion).
        overwrite: replace a dataset of another config found in ``out``.
        dtype: ``"float32"`` or ``"float64"``, the feature dtype on disk.
        events_per_shard: most events per shard; a topology's events may span shards.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        ConfigError: ``dtype`` or ``events_per_shard`` is not allowed.
        DatasetError: ``src`` is missing or not in the published layout, a file is unreadable
            or has the wrong shape, a momentum is not finite, a matrix is not a valid LCAG or
            not the tree of its topology (the message names the file and event), or ``out``
            holds another dataset.
    """
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype = {dtype!r}: expected 'float32' or 'float64'")
    if isinstance(events_per_shard, bool) or not isinstance(events_per_shard, int):
        raise ConfigError(f"events_per_shard = {events_per_shard!r}: expected an integer")
    if events_per_shard < 1:
        raise ConfigError(f"events_per_shard = {events_per_shard}: must be at least 1")
    src, out = Path(src), Path(out)
    pairs, skipped = _scan(src)
    names = _topology_names(src, pairs)
    firsts = [_first_event(folder, index, pairs) for folder, index in names]
    node_masses = _snap_masses([masses for *_, masses in firsts])
    references: list[_Reference] = []
    topologies: list[Topology] = []
    for (folder, index), (source, matrix, momenta, shape, _), masses in zip(
        names, firsts, node_masses, strict=True
    ):
        tree = DecayTree(shape.parents, masses=masses)
        topologies.append(Topology(tree, widths=np.zeros(tree.n_nodes)))
        references.append(
            _Reference(f"{folder}/{index}", source, matrix, momenta, np.unique(masses))
        )
    n_known = sum(1 for folder, _ in names if folder == "known")
    table = TopologyTable.from_topologies(topologies, n_known=n_known)

    config: dict[str, Any] = {
        "source": "paper_npy",
        "path": str(src.resolve()),
        "dtype": dtype,
        "events_per_shard": events_per_shard,
    }
    claim_directory(out, config, overwrite)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest until every shard is rewritten

    plans: list[ShardPlan] = []
    mismatches = 0
    for split, folder, published in SOURCES:
        writer = _SplitWriter(out, split, table, np.dtype(dtype), events_per_shard)
        for tid, (topology_folder, index) in enumerate(names):
            pair = pairs.get((folder, published, index))
            if topology_folder != folder or pair is None:
                continue
            for features, lcag, order, n_bad in _convert_pair(pair, references[tid]):
                writer.add(tid, features, lcag, order)
                mismatches += n_bad
        plans += writer.close()
    _remove_stale_shards(out, plans)

    return write_manifest(
        out,
        config={
            **config,
            "skipped": skipped,
            "skipped_reason": SKIP_REASON if skipped else "",
            "topology_sources": [f"{folder}/{index}" for folder, index in names],
            "leaf_mass_mismatches": mismatches,
        },
        shards=plans,
        table=table,
        n_classes=max(t.depth for t in topologies),
        units="a.u. (the paper's mass units)",
        dtype=dtype,
    )


# ------------------------------------------------------------------------------ the layout
def _scan(src: Path) -> tuple[dict[tuple[str, str, int], _Pair], list[str]]:
    """Pair up and check the headers of every published file.

    Returns:
        ``(folder, published split, i) -> pair`` for the files to convert, and the sorted
        paths (relative to ``src``) of the files skipped.
    """
    if not src.exists():
        raise DatasetError(f"{src}: source folder not found")
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder (expected the published known/ and unknown/)")
    if not (src / "known").is_dir():
        raise DatasetError(
            f"{src}: no known/ folder; expected the published layout "
            "known/leaves_<split>.<i>.npy and known/lcas_<split>.<i>.npy"
        )
    pairs: dict[tuple[str, str, int], _Pair] = {}
    skipped: list[str] = []
    for folder in ("known", "unknown"):
        files = _list_folder(src / folder)
        if folder == "known" and not any(kind == "leaves" for kind, _, _ in files):
            raise DatasetError(
                f"{src / 'known'}: no leaves_<split>.<i>.npy files (the published leaf momenta)"
            )
        for (kind, split, index), path in sorted(files.items()):
            partner_kind = "lcas" if kind == "leaves" else "leaves"
            partner = files.get((partner_kind, split, index))
            if partner is None:
                missing = path.with_name(f"{partner_kind}_{split}.{index}.npy")
                raise DatasetError(f"{path}: its partner {missing.name} is missing")
            if folder == "unknown" and split != "test":
                skipped.append(str(path.relative_to(src)))
                continue
            if kind == "leaves":
                pairs[folder, split, index] = _check_pair(folder, split, index, path, partner)
    return pairs, sorted(skipped)


def _list_folder(folder: Path) -> dict[tuple[str, str, int], Path]:
    """``(kind, split, i) -> path`` of the ``leaves_*``/``lcas_*`` files of ``folder``."""
    if not folder.is_dir():
        return {}
    found: dict[tuple[str, str, int], Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(("leaves_", "lcas_")):
            continue
        match = _NAME.match(path.name)
        if match is None or match.group(2) not in PUBLISHED_SPLITS:
            raise DatasetError(
                f"{path}: unexpected file name; expected leaves_<split>.<i>.npy or "
                f"lcas_<split>.<i>.npy with <split> one of {', '.join(PUBLISHED_SPLITS)}"
            )
        key = (match.group(1), match.group(2), int(match.group(3)))
        if key in found:
            raise DatasetError(f"{path}: the same file as {found[key].name} (index {key[2]})")
        found[key] = path
    return found


def _open(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file (never unpickling), as a numeric array."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path}: expected one .npy array, got {type(array).__name__}")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise DatasetError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return array


def _check_pair(folder: str, split: str, index: int, leaves: Path, lcas: Path) -> _Pair:
    """Check the shapes of a leaves file and its lcas partner (headers only)."""
    momenta = _open(leaves)
    if momenta.ndim != 3 or momenta.shape[2] != 4:
        raise DatasetError(
            f"{leaves}: expected shape (N, L, 4) (px, py, pz, E per leaf), got {momenta.shape}"
        )
    n_events, n_leaves, _ = momenta.shape
    if not 2 <= n_leaves <= MAX_LEAVES:
        raise DatasetError(f"{leaves}: {n_leaves} leaves per event, expected 2..{MAX_LEAVES}")
    matrices = _open(lcas)
    if matrices.ndim != 3 or matrices.shape[1] != matrices.shape[2]:
        raise DatasetError(f"{lcas}: expected shape (N, L, L), got {matrices.shape}")
    if matrices.shape[0] != n_events:
        raise DatasetError(f"{lcas}: {matrices.shape[0]} events but {leaves.name} has {n_events}")
    if matrices.shape[1] != n_leaves:
        raise DatasetError(
            f"{lcas}: {matrices.shape[1]} leaves per event but {leaves.name} has {n_leaves}"
        )
    return _Pair(folder, split, index, leaves, lcas, n_events, n_leaves)


def _topology_names(src: Path, pairs: dict[tuple[str, str, int], _Pair]) -> list[tuple[str, int]]:
    """``(folder, i)`` of every topology with events, known first; list position = id."""
    names: list[tuple[str, int]] = []
    for folder in ("known", "unknown"):
        indices = sorted({i for (f, _, i), p in pairs.items() if f == folder and p.n_events})
        names += [(folder, i) for i in indices]
    if not any(folder == "known" for folder, _ in names):
        raise DatasetError(f"{src / 'known'}: every leaves_<split>.<i>.npy file holds 0 events")
    return names


# ------------------------------------------------------------------------- the topologies
def _first_event(
    folder: str, index: int, pairs: dict[tuple[str, str, int], _Pair]
) -> tuple[Path, np.ndarray, np.ndarray, DecayTree, np.ndarray]:
    """The first event of topology ``(folder, i)``'s first non-empty file.

    Returns:
        The lcas file, the event's LCAG ``(L, L)`` int64 and leaf momenta ``(L, 4)``, its
        tree (no labels) and the invariant mass ``(n_nodes,)`` of every node.
    """
    mine = [pairs[k] for s in PUBLISHED_SPLITS if (k := (folder, s, index)) in pairs]
    first = next(p for p in mine if p.n_events)
    for other in mine:
        if other.n_leaves != first.n_leaves:
            raise DatasetError(
                f"{other.leaves}: {other.n_leaves} leaves per event, but topology "
                f"{folder}/{index} has {first.n_leaves} ({first.leaves.name})"
            )
    momenta = np.array(_open(first.leaves)[0], dtype=np.float64)
    _check_finite(momenta[None], first.leaves, 0)
    matrix = _zero_diagonal(np.array(_open(first.lcas)[:1]))[0]
    try:
        matrix = validate_lcag(matrix)
    except InvalidLCAGError as exc:
        raise DatasetError(f"{first.lcas}: event 0: {exc}") from None
    shape = lcag_to_tree(matrix)
    masses = np.array(
        [_mass(momenta[list(shape.leaves_under(n))].sum(axis=0)) for n in range(shape.n_nodes)]
    )
    return first.lcas, matrix, momenta, shape, masses


def _snap_masses(raw: list[np.ndarray]) -> list[np.ndarray]:
    """Node masses with float noise removed: per topology, masses closer than
    ``MASS_TOLERANCE`` times its largest mass become their mean; then the same across
    topologies (with the smallest topology's tolerance), unless that would merge two masses
    a topology keeps apart.

    Args:
        raw: per topology, ``(n_nodes,)`` masses.

    Returns:
        Per topology, ``(n_nodes,)`` snapped masses.
    """
    own = [_distinct_masses(m, MASS_TOLERANCE * _scale(m)) for m in raw]
    everything = _distinct_masses(np.concatenate(own), MASS_TOLERANCE * min(_scale(d) for d in own))
    snapped = []
    for masses, distinct in zip(raw, own, strict=True):
        shared = everything[_nearest(everything, distinct)]
        if len(np.unique(shared)) == len(distinct):
            distinct = shared
        snapped.append(distinct[_nearest(distinct, masses)])
    return snapped


def _scale(masses: np.ndarray) -> float:
    return max(float(np.max(masses)), float(np.finfo(np.float64).tiny))


def _mass(momenta: np.ndarray) -> np.ndarray:
    """Invariant masses ``(...)`` of 4-momenta ``(..., 4)`` (px, py, pz, E), negatives -> 0."""
    square = momenta[..., 3] ** 2 - np.square(momenta[..., :3]).sum(axis=-1)
    return np.sqrt(np.maximum(square, 0.0))


def _distinct_masses(masses: np.ndarray, tolerance: float) -> np.ndarray:
    """``(C,)`` sorted distinct values of ``masses``: runs with gaps <= ``tolerance`` become
    their mean."""
    values = np.sort(masses)
    group = np.concatenate([[0], np.cumsum(np.diff(values) > tolerance)])
    return np.bincount(group, weights=values) / np.bincount(group)


def _nearest(distinct: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Index into sorted ``distinct (C,)`` of the value nearest each of ``masses``."""
    return np.searchsorted((distinct[1:] + distinct[:-1]) / 2, masses)


# ------------------------------------------------------------------------------ the events
def _convert_pair(
    pair: _Pair, reference: _Reference
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Stream a pair's events in chunks as ``(features (n, L, 4) float64, lcag (n, L, L) int64,
    order (n, L) int64, events whose leaf masses do not fit the topology)``."""
    leaves, lcas = _open(pair.leaves), _open(pair.lcas)
    L = pair.n_leaves
    chunk = max(1, _CHUNK_ELEMENTS // (L * L))
    for start in range(0, pair.n_events, chunk):
        stop = min(start + chunk, pair.n_events)
        try:
            momenta = np.array(leaves[start:stop], dtype=np.float64)
            matrices = _zero_diagonal(np.array(lcas[start:stop]))
        except (ValueError, OSError) as exc:  # a file truncated after its header was read
            raise DatasetError(
                f"{pair.leaves}: cannot read events {start}..{stop} ({exc})"
            ) from None
        _check_finite(momenta, pair.leaves, start)
        valid = is_valid_lcag(matrices)
        if not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            try:
                validate_lcag(matrices[bad])
                detail = "invalid LCAG"
            except InvalidLCAGError as exc:
                detail = str(exc)
            raise DatasetError(f"{pair.lcas}: event {start + bad}: {detail}")
        matrices = matrices.astype(np.int64)
        order, same_tree, masses_fit = _match(matrices, momenta, reference)
        if not same_tree.all():
            bad = int(np.flatnonzero(~same_tree)[0])
            if start == 0 and not same_tree[0]:
                raise DatasetError(
                    f"{pair.lcas}: event 0 is not the tree of topology {reference.name} "
                    f"(defined by event 0 of {reference.source.name})"
                )
            raise DatasetError(
                f"{pair.lcas}: event {start + bad} is not the same tree shape as event 0 of "
                "this file (every event of a file must be one topology)"
            )
        yield momenta, matrices, order, int((~masses_fit).sum())


def _read(array: np.ndarray, start: int, stop: int, path: Path) -> np.ndarray:
    """Events ``start..stop`` of a memory-mapped file, copied into memory."""
    try:
        return np.array(array[start:stop])
    except (ValueError, OSError) as exc:  # the file changed or was truncated since opened
        raise DatasetError(f"{path}: cannot read events {start}..{stop - 1} ({exc})") from None


def _zero_diagonal(matrices: np.ndarray) -> np.ndarray:
    """Set diagonal entries that are 0 or -1 to 0 in place (others stay, to be reported)."""
    diagonal = np.einsum("nii->ni", matrices)
    rows, cols = np.nonzero(diagonal == -1)
    matrices[rows, cols, cols] = 0
    return matrices


def _check_finite(momenta: np.ndarray, path: Path, start: int) -> None:
    finite = np.isfinite(momenta)
    if not finite.all():
        event, leaf, component = (int(x) for x in np.argwhere(~finite)[0])
        value = momenta[event, leaf, component]
        raise DatasetError(
            f"{path}: event {start + event} leaf {leaf}: {FEATURES[component]} "
            f"= {value} is not finite"
        )


def _match(
    matrices: np.ndarray, momenta: np.ndarray, reference: _Reference
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which topology leaf each event leaf is, for a batch of one topology's events.

    Every event (and the reference) gets a canonical leaf order, vectorised over events:
    leaves sorted depth-first, each node's children ordered by (shape key, leaf-mass key,
    mass key, smallest leaf). The shape key of a cluster at level ``h`` (the leaves joined at
    or below ``h``) ranks the sorted shape keys of its clusters at level ``h - 1`` (AHU
    canonical naming); the leaf-mass key does the same starting from each leaf's mass (the
    nearest topology mass), and the mass key also appends the cluster's own invariant mass.
    Ordering by shape first makes the match right for the matrix whatever the masses; the
    mass keys then put leaves (and subtrees) the matrix cannot tell apart where their masses
    belong. Keys are ranked over the whole batch, so the event leaf at canonical position
    ``k`` is the reference leaf at position ``k``.

    Args:
        matrices: ``(n, L, L)`` int64 valid LCAGs.
        momenta: ``(n, L, 4)`` the events' leaf 4-momenta.
        reference: the topology.

    Returns:
        ``order (n, L)`` int64, ``same_tree (n,)`` bool (the matrix is the topology under
        ``order``), and ``masses_fit (n,)`` bool (every leaf's mass is the one of the topology
        leaf it is mapped to).
    """
    M = np.concatenate([reference.matrix[None], matrices])  # event 0 is the reference
    P = np.concatenate([reference.momenta[None], momenta])
    B, L, _ = M.shape
    leaf = np.arange(L)
    rep = np.broadcast_to(leaf, (B, L))  # smallest leaf of each leaf's cluster
    shape = np.zeros((B, L), dtype=np.int64)
    leaf_label = _nearest(reference.masses, _mass(P))
    leaves, label = leaf_label, leaf_label
    keys = [rep, label, leaves, shape]  # np.lexsort: the last key is the primary one
    for h in range(1, reference.height + 1):
        member = M <= h
        new_rep = np.argmax(member, axis=2)
        heads = np.nonzero(new_rep == leaf)  # one (event, leaf) per cluster at level h
        child = member[heads] & (rep[heads[0]] == leaf)  # (R, L) its clusters at level h - 1
        cluster_p = np.matmul(member.astype(np.float64), P)[heads]  # (R, 4)
        own = _nearest(reference.masses, _mass(cluster_p))
        shape = _spread(_rank_rows(_child_keys(shape, heads[0], child)), heads, new_rep)
        leaves = _spread(_rank_rows(_child_keys(leaves, heads[0], child)), heads, new_rep)
        label = _spread(
            _rank_rows(np.column_stack([_child_keys(label, heads[0], child), own])), heads, new_rep
        )
        rep = new_rep
        keys += [rep, label, leaves, shape]
    canonical = np.lexsort(np.stack(keys), axis=-1)  # (B, L) leaves in canonical order
    order = np.empty((B - 1, L), dtype=np.int64)
    np.put_along_axis(order, canonical[1:], np.broadcast_to(canonical[0], (B - 1, L)), axis=1)
    expected = reference.matrix[order[:, :, None], order[:, None, :]]
    same_tree = (expected == matrices).all(axis=(1, 2))
    masses_fit = (leaf_label[1:] == leaf_label[0][order]).all(axis=1)
    return order, same_tree, masses_fit


def _child_keys(key: np.ndarray, events: np.ndarray, child: np.ndarray) -> np.ndarray:
    """``(R, L)`` the sorted keys (from ``key (B, L)``) of each cluster's children, -1 padded."""
    return np.sort(np.where(child, key[events], -1), axis=1)


def _rank_rows(rows: np.ndarray) -> np.ndarray:
    """``(R,)`` int64 lexicographic ranks of the rows of ``rows (R, W)`` (values >= -1).

    Columns are packed into one integer per row (mixed radix, re-ranked before it would
    overflow), which sorts far faster than ``np.unique(axis=0)``.
    """
    ids = np.zeros(len(rows), dtype=np.int64)
    span = 1  # ids < span
    for column in (rows + 1).T:
        base = int(column.max(initial=0)) + 1
        if span * base >= 1 << 62:
            _, ids = np.unique(ids, return_inverse=True)
            span = int(ids.max(initial=0)) + 1
        ids = ids * base + column
        span *= base
    _, ids = np.unique(ids, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def _spread(ids: np.ndarray, heads: tuple[np.ndarray, np.ndarray], rep: np.ndarray) -> np.ndarray:
    """``(B, L)``: each leaf gets the id of its cluster, given per cluster head."""
    full = np.zeros(rep.shape, dtype=np.int64)
    full[heads] = ids
    return np.take_along_axis(full, rep, axis=1)


# ------------------------------------------------------------------------------- the shards
class _SplitWriter:
    """Collect one split's events and publish a shard every ``limit`` events."""

    def __init__(
        self, out: Path, split: str, table: TopologyTable, dtype: np.dtype, limit: int
    ) -> None:
        self.out, self.split, self.table, self.dtype, self.limit = out, split, table, dtype, limit
        self.plans: list[ShardPlan] = []
        self._reset()

    def _reset(self) -> None:
        self.parts: dict[int, list[tuple[np.ndarray, ...]]] = {}
        self.pieces: list[list[int]] = []  # [topology id, events]
        self.count = 0

    def add(self, tid: int, features: np.ndarray, lcag: np.ndarray, order: np.ndarray) -> None:
        """Append events ``features (n, L, 4)``, ``lcag (n, L, L)``, ``order (n, L)``."""
        start = 0
        while start < len(features):
            take = min(self.limit - self.count, len(features) - start)
            part = slice(start, start + take)
            topology = np.full(take, tid, dtype=np.int32)
            self.parts.setdefault(features.shape[1], []).append(
                (features[part], lcag[part], topology, order[part])
            )
            if self.pieces and self.pieces[-1][0] == tid:
                self.pieces[-1][1] += take
            else:
                self.pieces.append([tid, take])
            self.count += take
            start += take
            if self.count == self.limit:
                self._flush()

    def close(self) -> list[ShardPlan]:
        """Publish what is left; returns the split's shards."""
        self._flush()
        return self.plans

    def _flush(self) -> None:
        if not self.count:
            return
        index = len(self.plans)
        groups = {n: _concatenate(parts) for n, parts in self.parts.items()}
        publish_shard(
            shard_path(self.out, self.split, index),
            groups,
            self.table,
            self.dtype,
            split=self.split,
            index=index,
        )
        self.plans.append(ShardPlan(self.split, index, tuple((t, c) for t, c in self.pieces)))
        self._reset()


def _concatenate(
    parts: list[tuple[np.ndarray, ...]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    features, lcag, topology, order = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return features, lcag, topology, order


def _remove_stale_shards(out: Path, plans: list[ShardPlan]) -> None:
    """Delete shards of an earlier conversion of this source that this one did not write."""
    keep = {shard_path(out, p.split, p.index) for p in plans}
    keep |= {checksum_path(path) for path in keep}
    for split in SPLITS:
        for path in (out / split).glob("shard-*"):
            if path not in keep:
                path.unlink()
