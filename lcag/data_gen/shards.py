"""The dataset's on-disk format: shard files, the topology table, the manifest, checksums.

```
<dir>/manifest.json            written last, atomically (see write_manifest)
<dir>/<split>/shard-00000.h5   /L{n}/features (N, n, F), /L{n}/lcag int8 (N, n, n),
                               /L{n}/topology int32 (N,), /L{n}/order int8 (N, n),
                               with an `lcas:` config /L{n}/lcas int8 (N, n, n), with a
                               `detector:` config /L{n}/species int8 (N, n),
                               /topologies/* (the table of every topology of the dataset)
<dir>/<split>/shard-00000.sha256   the shard's checksum, written before the shard appears
<dir>/generation.json          the config being generated (written first)
<dir>/parts/part-<i>-of-<N>.json   done-markers of a generation in parts (lcag.data_gen.parts)
```
``order[e, k]`` is the topology leaf that event leaf ``k`` is (``-1`` for a background leaf),
so ``lcag[e] == permute(tree_to_lcag(topology), order[e])`` on the tree's leaves and 0 on
background rows; ``lcas`` likewise with the stage labels (:mod:`lcag.stages`). The
manifest's ``features`` names the feature columns (``px, py, pz, E`` first; more with a
detector), ``species`` the species classes and ``lcas`` the stage map. Writes go to a
temporary name and are renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcag.data_gen.topology import Topology
from lcag.errors import DatasetError
from lcag.tree import DecayTree

__all__ = [
    "FEATURES",
    "SCHEMA_VERSION",
    "TopologyTable",
    "read_manifest",
    "sha256_of",
    "shard_path",
]

SCHEMA_VERSION = 1
FEATURES = ("px", "py", "pz", "E")
MANIFEST = "manifest.json"


def shard_path(root: Path, split: str, index: int) -> Path:
    return Path(root) / split / f"shard-{index:05d}.h5"


def checksum_path(shard: Path) -> Path:
    return shard.with_suffix(".sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of dataset ``root``, checked for presence and schema version.

    Raises:
        DatasetError: no manifest (an unfinished or foreign directory) or another schema.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path}: no manifest; {root} is not a finished lcag dataset "
            "(run lcag-generate, or rerun it to finish an interrupted generation)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {version!r}, this lcag reads {SCHEMA_VERSION}; "
            "regenerate the dataset with this version"
        )
    return manifest


@dataclass(frozen=True)
class TopologyTable:
    """Every topology of a dataset as flat arrays (no pickle), indexed by topology id.

    Node ``k`` of topology ``t`` is row ``node_offsets[t] + k`` of the per-node arrays.
    """

    node_offsets: np.ndarray  # (T + 1,) int64
    parents: np.ndarray  # (nodes,) int32
    masses: np.ndarray  # (nodes,) float64
    widths: np.ndarray  # (nodes,) float64
    pdg_ids: np.ndarray  # (nodes,) int64, 0 where unknown
    names: tuple[str, ...]  # (nodes,), "" where unknown
    known: np.ndarray  # (T,) bool: used for train/val/test

    @classmethod
    def from_topologies(cls, topologies: Sequence[Topology], n_known: int) -> TopologyTable:
        sizes = [t.tree.n_nodes for t in topologies]
        names: list[str] = []
        pdg_ids: list[np.ndarray] = []
        for t in topologies:
            tree = t.tree
            names += [n or "" for n in tree.names] if tree.names else [""] * tree.n_nodes
            pdg_ids.append(tree.pdg_ids if tree.pdg_ids is not None else np.zeros(tree.n_nodes))
        return cls(
            node_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            parents=np.concatenate([t.tree.parents for t in topologies]).astype(np.int32),
            masses=np.concatenate([t.tree.masses for t in topologies]).astype(np.float64),
            widths=np.concatenate([t.widths for t in topologies]).astype(np.float64),
            pdg_ids=np.concatenate(pdg_ids).astype(np.int64),
            names=tuple(names),
            known=np.arange(len(topologies)) < n_known,
        )

    def __len__(self) -> int:
        return len(self.node_offsets) - 1

    def topology(self, index: int) -> Topology:
        lo, hi = int(self.node_offsets[index]), int(self.node_offsets[index + 1])
        names = list(self.names[lo:hi])
        tree = DecayTree(
            self.parents[lo:hi],
            names=names if any(names) else None,
            pdg_ids=self.pdg_ids[lo:hi] if self.pdg_ids[lo:hi].any() else None,
            masses=self.masses[lo:hi],
        )
        return Topology(tree, self.widths[lo:hi])

    def final_state_masses(self) -> np.ndarray:
        """The distinct leaf masses over all topologies, sorted."""
        leaf = np.zeros(len(self.parents), dtype=bool)
        for t in range(len(self)):
            lo, hi = int(self.node_offsets[t]), int(self.node_offsets[t + 1])
            has_children = np.zeros(hi - lo, dtype=bool)
            parents = self.parents[lo:hi]
            has_children[parents[parents >= 0]] = True
            leaf[lo:hi] = ~has_children
        return np.unique(self.masses[leaf])

    def __iter__(self) -> Iterator[Topology]:
        return (self.topology(i) for i in range(len(self)))

    def write(self, group: Any) -> None:
        """Store the table in an h5py group."""
        import h5py

        for field in ("node_offsets", "parents", "masses", "widths", "pdg_ids", "known"):
            group.create_dataset(field, data=getattr(self, field), track_times=False)
        group.create_dataset(
            "names",
            data=np.array(self.names, dtype=object),
            dtype=h5py.string_dtype(),
            track_times=False,
        )

    @classmethod
    def read(cls, group: Any, where: str = "topologies") -> TopologyTable:
        """Load the table from an h5py group; ``where`` names it in errors."""
        try:
            return cls(
                node_offsets=group["node_offsets"][()],
                parents=group["parents"][()],
                masses=group["masses"][()],
                widths=group["widths"][()],
                pdg_ids=group["pdg_ids"][()],
                names=tuple(n.decode() if isinstance(n, bytes) else n for n in group["names"][()]),
                known=group["known"][()],
            )
        except KeyError as exc:
            raise DatasetError(f"{where}: missing field {exc}") from None
