"""Input ntuples read in chunks of entries, checked, as padded leaf arrays.

A source is ``file.root:tree`` (uproot, a TTree or an RNTuple; the tree name may be left out
when the file holds one) or ``file.parquet`` (pyarrow, one column per branch). The leaf
features are jagged branches, one value per leaf and entry (``px``, ``py``, ``pz``, ``E`` by
default); other branches can be carried over unchanged. Chunks of ``step_size`` entries are
read one at a time (``TTree.iterate``, ``ParquetFile.iter_batches``), so memory does not grow
with the file.

Every problem is an :class:`~lcag.errors.InvalidInputError` whose one-line message names the
file (and tree), the branch and the entry: a missing file, tree or branch, a branch that is
not jagged, feature branches of unequal lengths in one entry, a NaN or infinite value, an
entry with more leaves than the model takes, ``E < |p|`` (columns out of order).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lcag.console import one_line
from lcag.errors import InvalidInputError, LCAGError, MissingDependencyError
from lcag.events import ENERGY_ATOL, ENERGY_RTOL

__all__ = [
    "DEFAULT_FEATURES",
    "Chunk",
    "Source",
    "iter_chunks",
    "open_source",
    "parse_source",
]

DEFAULT_FEATURES = ("px", "py", "pz", "E")
PARQUET_SUFFIXES = (".parquet", ".pq")
_ROOT_SPEC = re.compile(r"^(?P<path>.*\.root):(?P<tree>[^/:][^:]*)$")
TREE_CLASSES = ("TTree", "ROOT::RNTuple")
_SHOWN_NAMES = 20  # names listed in a "no such branch" message


def need(module: str) -> Any:
    """Import an optional dependency of the ``ntuple`` extra, or say what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"lcag-reconstruct needs {module.split('.')[0]} for ntuples: pip install 'lcag[ntuple]'"
        ) from exc


@dataclass
class Source:
    """One input file.

    Attributes:
        path: the file.
        tree: the TTree's name (ROOT), ``None`` for Parquet.
        n_entries: its number of entries (events).
        branches: every branch (column) name it has.
    """

    path: Path
    tree: str | None
    n_entries: int = 0
    branches: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "root" if self.tree is not None else "parquet"

    @property
    def label(self) -> str:
        """How messages name it: ``file.root:tree`` or ``file.parquet``."""
        return f"{self.path}:{self.tree}" if self.tree is not None else str(self.path)


@dataclass
class Chunk:
    """Consecutive entries of one source, checked.

    Attributes:
        source: where they come from.
        start: the first entry's number in the source.
        x: ``(N, L, F)`` float64 leaf features, zero-padded to the chunk's largest event.
        mask: ``(N, L)`` bool, ``True`` for real leaves.
        counts: ``(N,)`` int64, leaves per entry.
        carried: the carried branches' arrays (awkward), ``N`` entries each.
    """

    source: Source
    start: int
    x: np.ndarray
    mask: np.ndarray
    counts: np.ndarray
    carried: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.counts)


def parse_source(spec: str | Path) -> Source:
    """``file.root:tree``, ``file.root`` or ``file.parquet`` as an unopened :class:`Source`."""
    text = str(spec)
    match = _ROOT_SPEC.match(text)
    if match:
        return Source(Path(match["path"]), match["tree"])
    path = Path(text)
    if path.suffix.lower() == ".root":
        return Source(path, "")  # the file's only tree, found when opened
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return Source(path, None)
    raise InvalidInputError(f"--input {text}: expected file.root:tree, file.root or file.parquet")


def open_source(spec: str | Path, branches: Sequence[str]) -> Source:
    """Open a source, check that it has ``branches`` and count its entries (reads no data).

    Raises:
        InvalidInputError: the file is missing or unreadable, or lacks the tree or a branch.
    """
    source = parse_source(spec)
    if not source.path.is_file():
        raise InvalidInputError(f"{source.path}: input file not found")
    if source.kind == "root":
        with _open_root(source.path) as file:
            tree = _find_tree(file, source)
            source.n_entries = int(tree.num_entries)
            source.branches = tuple(tree.keys())
    else:
        parquet = _open_parquet(source.path)
        source.n_entries = int(parquet.metadata.num_rows)
        source.branches = tuple(parquet.schema_arrow.names)
    missing = [name for name in branches if name not in source.branches]
    if missing:
        shown = ", ".join(source.branches[:_SHOWN_NAMES])
        more = len(source.branches) - _SHOWN_NAMES
        shown += f" and {more} more" if more > 0 else ""
        raise InvalidInputError(
            f"{source.label}: no branch '{missing[0]}' (it has: {shown or 'none'})"
        )
    return source


def iter_chunks(
    source: Source,
    features: Sequence[str],
    carry: Sequence[str],
    step_size: int,
    max_leaves: int,
) -> Iterator[Chunk]:
    """The source's entries in checked chunks of ``step_size`` (one empty chunk when it has none).

    Args:
        source: an opened source (:func:`open_source`).
        features: the jagged leaf-feature branches, in the model's order.
        carry: branches passed through unchanged.
        step_size: entries per chunk.
        max_leaves: the most leaves an entry may have.

    Raises:
        InvalidInputError: naming file, branch and entry (see the module's docstring).
    """
    names = list(dict.fromkeys([*features, *carry]))
    start = 0
    for arrays in _read(source, names, step_size):
        chunk = _chunk(source, start, arrays, features, carry, max_leaves)
        start += len(chunk)
        yield chunk


def _read(source: Source, names: list[str], step_size: int) -> Iterator[dict[str, Any]]:
    """Chunks as ``{name: awkward array}``; one empty chunk for an empty source."""
    ak = need("awkward")
    if source.kind == "root":
        with _open_root(source.path) as file:
            tree = _find_tree(file, source)
            if tree.num_entries == 0:
                arrays = tree.arrays(names, entry_stop=0, library="ak")
                yield {name: arrays[name] for name in names}
                return
            try:
                for arrays in tree.iterate(names, step_size=step_size, library="ak"):
                    yield {name: arrays[name] for name in names}
            except LCAGError:
                raise
            except Exception as exc:  # uproot's own (a damaged basket, an unknown class, ...)
                raise InvalidInputError(f"{source.label}: unreadable ({one_line(exc)})") from None
        return
    parquet = _open_parquet(source.path)
    if parquet.metadata.num_rows == 0:
        arrays = ak.from_arrow(parquet.schema_arrow.empty_table().select(names))
        yield {name: arrays[name] for name in names}
        return
    pa = need("pyarrow")
    try:
        for batch in parquet.iter_batches(batch_size=step_size, columns=names):
            arrays = ak.from_arrow(pa.Table.from_batches([batch]))
            yield {name: arrays[name] for name in names}
    except (OSError, pa.ArrowException) as exc:
        raise InvalidInputError(f"{source.label}: unreadable ({one_line(exc)})") from None


def _chunk(
    source: Source,
    start: int,
    arrays: dict[str, Any],
    features: Sequence[str],
    carry: Sequence[str],
    max_leaves: int,
) -> Chunk:
    """Check one chunk's feature branches and pad them into ``x (N, L, F)``."""
    where = source.label
    counts = None
    columns = []
    for name in features:
        n, v = _jagged_numbers(arrays[name], where, name, start)
        if counts is None:
            counts = n
        elif not np.array_equal(n, counts):
            entry = int(np.flatnonzero(n != counts)[0])
            raise InvalidInputError(
                f"{where}: entry {start + entry}: branch '{name}' has {n[entry]} values but "
                f"'{features[0]}' has {counts[entry]}; the leaf-feature branches need one "
                "value per leaf"
            )
        columns.append(v)
    assert counts is not None
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    for name, column in zip(features, columns, strict=True):
        bad = ~np.isfinite(column)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            entry = int(np.searchsorted(offsets, k, side="right")) - 1
            raise InvalidInputError(
                f"{where}: entry {start + entry}, branch '{name}', leaf {k - offsets[entry]}: "
                f"{column[k]} (NaN, infinite and missing values are not accepted)"
            )
    too_many = counts > max_leaves
    if too_many.any():
        entry = int(np.flatnonzero(too_many)[0])
        raise InvalidInputError(
            f"{where}: entry {start + entry}: {counts[entry]} leaves (branch '{features[0]}'), "
            f"the model takes at most {max_leaves}"
        )
    n_events, size = len(counts), max(int(counts.max(initial=0)), 1)
    row = np.repeat(np.arange(n_events), counts)
    col = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    x = np.zeros((n_events, size, len(features)))
    for f, column in enumerate(columns):
        x[row, col, f] = column
    mask = np.zeros((n_events, size), dtype=bool)
    mask[row, col] = True
    if len(features) >= 4:  # the Reconstructor's check, here with file, branches and entry
        p = np.sqrt(np.sum(x[..., :3] ** 2, axis=-1))
        low = mask & (x[..., 3] < p * (1 - ENERGY_RTOL) - ENERGY_ATOL)
        if low.any():
            entry, leaf = (int(i) for i in np.argwhere(low)[0])
            raise InvalidInputError(
                f"{where}: entry {start + entry}, leaf {leaf}: {features[3]} = "
                f"{x[entry, leaf, 3]:.6g} below |p| = {p[entry, leaf]:.6g} from "
                f"{', '.join(features[:3])}; the first four feature branches must be "
                "(px, py, pz, E)"
            )
    return Chunk(source, start, x, mask, counts, {name: arrays[name] for name in carry})


def _jagged_numbers(array: Any, where: str, name: str, start: int) -> tuple[np.ndarray, np.ndarray]:
    """A jagged branch as ``(counts (N,), flat values float64)``; missing values become NaN."""
    ak = need("awkward")
    if array.ndim != 2:
        raise InvalidInputError(
            f"{where}: branch '{name}' is not jagged (one list of numbers per entry, one number "
            f"per leaf): its type is {array.type}"
        )
    null = np.asarray(ak.is_none(array, axis=0))
    if null.any():
        entry = int(np.flatnonzero(null)[0])
        raise InvalidInputError(f"{where}: entry {start + entry}, branch '{name}': missing (null)")
    counts = np.asarray(ak.fill_none(ak.num(array, axis=1), 0), dtype=np.int64)
    try:
        values = ak.to_numpy(ak.fill_none(ak.flatten(array), np.nan))
        values = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInputError(
            f"{where}: branch '{name}' does not hold numbers: its type is {array.type}"
        ) from None
    return counts, values


def _open_root(path: Path) -> Any:
    uproot = need("uproot")
    try:
        return uproot.open(path, array_cache=None, object_cache=None)
    except Exception as exc:  # uproot raises ValueError, OSError, ... for a file not ROOT's
        raise InvalidInputError(f"{path}: not a readable ROOT file ({one_line(exc)})") from None


def _find_tree(file: Any, source: Source) -> Any:
    """The source's TTree or RNTuple (its only one when no name is given)."""
    classes = file.classnames(cycle=False)
    trees = [name for name, kind in classes.items() if kind in TREE_CLASSES]
    if not source.tree:
        if len(trees) != 1:
            listed = ", ".join(trees) or "none"
            raise InvalidInputError(
                f"{source.path}: name the tree as {source.path}:<tree> (its trees: {listed})"
            )
        source.tree = trees[0]
    if source.tree not in trees:
        raise InvalidInputError(
            f"{source.label}: no tree '{source.tree}' in the file "
            f"(its trees: {', '.join(trees) or 'none'})"
        )
    try:
        return file[source.tree]
    except Exception as exc:
        raise InvalidInputError(f"{source.label}: unreadable tree ({one_line(exc)})") from None


def _open_parquet(path: Path) -> Any:
    pq = need("pyarrow.parquet")
    pa = need("pyarrow")
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidInputError(f"{path}: not a readable Parquet file ({one_line(exc)})") from None
