"""Reading lcag datasets for training: a lazy HDF5 Dataset, a bucketing sampler, collate, and
the LightningDataModule.

Events are read as raw leaf 4-momenta; normalisation and pair features happen in the model's
module (``lcag.module``), so a checkpoint carries them and inference applies exactly the same.
Files are opened lazily, once per process (DataLoader workers open their own), and never read
whole: a batch is a slice of one leaf-count group of one shard.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lcag.data_gen.shards import FEATURES, TopologyTable, read_manifest, sha256_of
from lcag.errors import DatasetError
from lcag.tree import DecayTree

__all__ = ["BucketBatchSampler", "LCAGDataModule", "LCAGDataset", "collate"]

Event = dict[str, Any]


class LCAGDataset(Dataset):
    """One split of an lcag dataset, event by event, without loading it into memory.

    Args:
        root: the dataset directory (holding ``manifest.json``).
        split: ``train``, ``val``, ``test`` or ``test_unknown``.
        max_events: keep only this many events, spread evenly over the split (e.g. to overfit
            a few while keeping every leaf count).
        features: the leaf feature columns to read, by the manifest's names (default all);
            they start with ``px, py, pz, E``.
        target: ``lcag`` or ``lcas`` (stage targets, in datasets generated with ``lcas``).

    An event is a dict: ``x (n, F)`` float32 raw features (``px, py, pz, E`` first),
    ``target (n, n)`` int64 LCAG (or LCAS) with -1 on the diagonal, ``topology`` (int) and
    ``known`` (bool).

    Raises:
        DatasetError: no manifest, another schema version, an unknown split or missing shard.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        max_events: int | None = None,
        features: Sequence[str] | None = None,
        target: str = "lcag",
    ) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.columns = feature_columns(self.manifest, features, self.root)
        self.target = check_target(self.manifest, target, self.root)
        if split not in self.manifest["splits"]:
            raise DatasetError(
                f"{self.root}: no split {split!r} (has {', '.join(self.manifest['splits'])})"
            )
        self.split = split
        files, sizes, counts = [], [], []
        self.checksums: list[str | None] = []
        for shard in self.manifest["splits"][split]["shards"]:
            path = self.root / shard["file"]
            if not path.is_file():
                raise DatasetError(f"{path}: shard listed in the manifest is missing")
            files.append(path)
            self.checksums.append(shard.get("sha256"))
            for n, count in shard["leaf_counts"].items():
                sizes.append((len(files) - 1, int(n)))
                counts.append(int(count))
        self.files = files
        self.groups = sizes  # (file index, leaf count) of each group, in file order
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total = int(self.starts[-1])
        # With max_events, events spread evenly over the split, so every leaf count is kept.
        count = total if max_events is None else min(total, int(max_events))
        self.events = np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))
        self.length = len(self.events) if total else 0
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self._known: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def verify(self) -> None:
        """Check every shard against the SHA-256 in the manifest (one read of each file).

        Raises:
            DatasetError: a shard was changed, damaged or cut short since it was written.
        """
        for path, expected in zip(self.files, self.checksums, strict=True):
            if expected is not None and sha256_of(path) != expected:
                raise DatasetError(
                    f"{path}: checksum differs from the manifest's (the shard is corrupt or "
                    f"truncated); regenerate it with lcag-generate"
                )

    def group_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` index ranges of the groups (one leaf count of one shard each)."""
        bounds = np.searchsorted(self.events, self.starts)
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]

    def __getitem__(self, index: int) -> Event:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Event]:
        """Events ``indices``, read group by group with one HDF5 read each."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.length):
            raise IndexError(f"{self.split}: event index out of range 0..{self.length - 1}")
        indices = self.events[indices]
        out: list[Event | None] = [None] * len(indices)
        group_of = np.searchsorted(self.starts, indices, side="right") - 1
        for group in np.unique(group_of):
            positions = np.flatnonzero(group_of == group)
            local = indices[positions] - self.starts[group]
            order = np.argsort(local)
            file_index, n = self.groups[group]
            data = self._read(file_index, n, local[order])
            for k, position in enumerate(positions[order]):
                out[position] = {key: value[k] for key, value in data.items()}
        return out  # type: ignore[return-value]

    def _read(self, file_index: int, n: int, local: np.ndarray) -> dict[str, Any]:
        handle = self._file(file_index)
        unique, inverse = np.unique(local, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        try:
            group = handle[f"L{n}"]
            features = group["features"][lo:hi][unique - lo][inverse][..., self.columns]
            lcag = group[self.target][lo:hi][unique - lo][inverse].astype(np.int64)
            topology = group["topology"][lo:hi][unique - lo][inverse].astype(np.int64)
        except (OSError, KeyError) as exc:  # h5py: a damaged block, a missing group
            raise DatasetError(
                f"{self.files[file_index]}: cannot read /L{n} events {lo}..{hi - 1} "
                f"(corrupt or incomplete shard: {exc}); regenerate it with lcag-generate"
            ) from None
        if not np.isfinite(features).all():
            bad = np.argwhere(~np.isfinite(features))[0]
            event = int(local[bad[0]])
            raise DatasetError(
                f"{self.files[file_index]}: /L{n}/features[{event}, {bad[1]}, {bad[2]}] is "
                f"{features[tuple(bad)]}; features must be finite"
            )
        lcag[:, np.arange(n), np.arange(n)] = -1
        out = {
            "x": features.astype(np.float32),
            "target": lcag,
            "topology": topology,
            "known": self.known_topologies()[topology],
        }
        if "species" in group:  # detector datasets: each leaf's true species class
            out["species"] = group["species"][lo:hi][unique - lo][inverse].astype(np.int64)
        return out

    def true_tree(self, index: int) -> tuple[DecayTree, np.ndarray] | None:
        """The decay tree of event ``index`` with its topology's names and nominal masses.

        Returns:
            ``(tree, leaves)``: the topology's tree with its leaves renumbered so that tree
            leaf ``j`` is event leaf ``leaves[j]`` (background leaves, outside the tree, are
            left out of ``leaves``), so ``tree_to_lcag(tree)`` is the event's LCAG on
            ``leaves``; ``None`` when the shard does not record the leaf order.

        Raises:
            IndexError: ``index`` is out of range.
            DatasetError: the shard cannot be read.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"{self.split}: event index out of range 0..{self.length - 1}")
        event = int(self.events[index])
        group_index = int(np.searchsorted(self.starts, event, side="right")) - 1
        file_index, n = self.groups[group_index]
        local = event - int(self.starts[group_index])
        try:
            group = self._file(file_index)[f"L{n}"]
            if "order" not in group:
                return None
            order = group["order"][local].astype(np.int64)
            topology = int(group["topology"][local])
        except (OSError, KeyError) as exc:
            raise DatasetError(
                f"{self.files[file_index]}: cannot read /L{n} event {local} ({exc}); "
                "regenerate it with lcag-generate"
            ) from None
        leaves = np.flatnonzero(order >= 0)
        tree = self.topology_table().topology(topology).tree
        return tree.permute_leaves(order[leaves]), leaves

    def known_topologies(self) -> np.ndarray:
        """``(T,)`` bool: which topology ids were used in training."""
        if self._known is None:
            self._known = TopologyTable.read(self._file(0)["topologies"]).known.astype(bool)
        return self._known

    def topology_table(self) -> TopologyTable:
        return TopologyTable.read(self._file(0)["topologies"], where=str(self.files[0]))

    def _file(self, file_index: int) -> Any:
        import h5py

        if os.getpid() != self._pid:  # a forked DataLoader worker: open its own handles
            self._handles, self._pid = {}, os.getpid()
        if file_index not in self._handles:
            try:
                self._handles[file_index] = h5py.File(self.files[file_index], "r")
            except OSError as exc:
                raise DatasetError(f"{self.files[file_index]}: cannot open ({exc})") from None
        return self._handles[file_index]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}  # handles do not cross processes
        return state


def feature_columns(
    manifest: dict[str, Any], names: Sequence[str] | None, root: Path | str = "dataset"
) -> list[int]:
    """Column indices of the feature ``names`` in a dataset (all columns when ``None``).

    Raises:
        DatasetError: a name the dataset lacks (its names listed), a repeated name, or a
            selection not starting with ``px, py, pz, E`` (pair features read those).
    """
    have = list(manifest.get("features", FEATURES))
    if names is None:
        return list(range(len(have)))
    names = list(names)
    missing = [n for n in names if n not in have]
    if missing:
        raise DatasetError(f"{root}: no feature {missing[0]!r} (it has {', '.join(have)})")
    if len(set(names)) != len(names):
        raise DatasetError(f"features = {names}: a feature is named twice")
    if names[:4] != list(FEATURES):
        raise DatasetError(f"features = {names}: must start with px, py, pz, E")
    return [have.index(n) for n in names]


def has_background(manifest: dict[str, Any]) -> bool:
    """Whether a dataset's generation put leaves from outside the tree into its events
    (random background, ``kinematics.background_mean``, or a detector's beam background)."""
    config = manifest.get("config") or {}
    if float((config.get("kinematics") or {}).get("background_mean", 0.0) or 0.0) > 0:
        return True
    background = ((config.get("detector") or {}).get("background")) or {}
    return any(float(background.get(key, 0.0) or 0.0) > 0 for key in ("photons", "tracks"))


def check_target(manifest: dict[str, Any], target: str, root: Path | str = "dataset") -> str:
    """``target`` when the dataset holds it (``lcag`` always, ``lcas`` when generated so).

    Raises:
        DatasetError: an unknown target, or ``lcas`` from a dataset without it.
    """
    if target not in ("lcag", "lcas"):
        raise DatasetError(f"target: expected 'lcag' or 'lcas', got {target!r}")
    if target == "lcas" and "lcas" not in manifest:
        raise DatasetError(
            f"{root}: no LCAS targets (generate with an 'lcas' section in the config)"
        )
    return target


class BucketBatchSampler(Sampler[list[int]]):
    """Batches whose events all have the same leaf count (and come from one shard).

    Each epoch, events are shuffled within their group, cut into batches, and the batches
    shuffled; the order depends on ``seed`` and the epoch (``set_epoch``). Under
    ``torch.distributed`` each rank takes every ``world``-th batch; when shuffling (training)
    the list is first padded by repetition so all ranks run the same number of steps, and
    without shuffling (evaluation) every event is seen exactly once; a small evaluation split
    with fewer batches than ranks has its largest batches halved until every rank has one
    (Lightning refuses a rank without batches).
    """

    def __init__(
        self,
        dataset: LCAGDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ranges = dataset.group_ranges()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._drop_last = drop_last  # private: Lightning would rebuild a sampler exposing it
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for start, stop in self.ranges:
            events = np.arange(start, stop)
            if self.shuffle:
                events = rng.permutation(events)
            for k in range(0, len(events), self.batch_size):
                chunk = events[k : k + self.batch_size]
                if len(chunk) == self.batch_size or not self._drop_last:
                    batches.append(chunk.tolist())
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        rank, world = _rank_and_world()
        if world > 1:
            if self.shuffle:  # training: equal step counts on every rank, padded by repetition
                total = -(-len(batches) // world) * world
                batches = (batches * (total // max(len(batches), 1) + 1))[:total]
            else:
                batches = _at_least(batches, world)
            batches = batches[rank::world]  # evaluation: every event exactly once
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def _at_least(batches: list[list[int]], count: int) -> list[list[int]]:
    """``batches`` with the largest halved until there are ``count`` (or all hold one event);
    every event stays in exactly one batch."""
    batches = list(batches)
    while len(batches) < count:
        largest = max(range(len(batches)), key=lambda k: len(batches[k]), default=None)
        if largest is None or len(batches[largest]) < 2:
            break
        batch = batches.pop(largest)
        half = len(batch) // 2
        batches[largest:largest] = [batch[:half], batch[half:]]
    return batches


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def collate(events: Sequence[Event]) -> dict[str, torch.Tensor]:
    """Pad events to the longest: ``x (B, L, F)``, ``mask (B, L)``, ``target (B, L, L)``
    (-1 on the diagonal and padding), ``topology (B,)``, ``known (B,)``, ``n_leaves (B,)``, and
    ``species (B, L)`` (-1 on padding) when the events carry leaf species."""
    size = max(len(e["x"]) for e in events)
    B = len(events)
    x = np.zeros((B, size, events[0]["x"].shape[-1]), dtype=np.float32)
    target = np.full((B, size, size), -1, dtype=np.int64)
    mask = np.zeros((B, size), dtype=bool)
    for b, event in enumerate(events):
        n = len(event["x"])
        x[b, :n] = event["x"]
        target[b, :n, :n] = event["target"]
        mask[b, :n] = True
    batch = {
        "x": torch.from_numpy(x),
        "mask": torch.from_numpy(mask),
        "target": torch.from_numpy(target),
        "topology": torch.tensor([int(e["topology"]) for e in events]),
        "known": torch.tensor([bool(e["known"]) for e in events]),
        "n_leaves": torch.from_numpy(mask.sum(1)),
    }
    if all("species" in e for e in events):
        species = np.full((B, size), -1, dtype=np.int64)
        for b, event in enumerate(events):
            species[b, : len(event["species"])] = event["species"]
        batch["species"] = torch.from_numpy(species)
    return batch


class LCAGDataModule(pl.LightningDataModule):
    """Train/val/test/test_unknown/predict loaders over an lcag dataset directory.

    Validation runs over ``val`` (dataloader 0) and, where the dataset has one, ``val_unknown``
    (dataloader 1: topologies kept from training and from the test, on which the node-evidence
    weights are chosen beside the known ones; :class:`lcag.LCAGModule`).

    Args:
        data_dir: the dataset (made by ``lcag-generate``).
        batch_size: events per training batch (all with the same leaf count).
        eval_batch_size: events per validation/test batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_train_events: use only this many training events, spread over the split.
        max_eval_events: the same for each evaluation split.
        seed: shuffling seed of the training batches.
        val_split: the split validated on (``train`` checks how well a subset is learnt).
        validate_unknown: also validate on ``val_unknown`` when the dataset has it (and
            ``val_split`` is ``val``).
        verify_checksums: check every shard against the manifest's SHA-256 when the module is
            made, so a damaged file stops the run at once rather than feeding it garbage.
        features: leaf features by name (default every column of the dataset; ``px, py, pz,
            E`` first); the model's ``n_features`` must match their number.
        target: ``lcag`` (default) or ``lcas`` (the stage targets of datasets generated with
            an ``lcas`` section).
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_events: int | None = None,
        max_eval_events: int | None = None,
        seed: int = 0,
        val_split: str = "val",
        validate_unknown: bool = True,
        verify_checksums: bool = True,
        features: list[str] | None = None,
        target: str = "lcag",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.columns = feature_columns(self.manifest, features, self.data_dir)
        self.features = [self.manifest.get("features", FEATURES)[c] for c in self.columns]
        check_target(self.manifest, target, self.data_dir)
        self.datasets: dict[str, LCAGDataset] = {}
        if verify_checksums:  # here, so a damaged file stops the run before the trainer starts
            for split in self.manifest["splits"]:
                LCAGDataset(self.data_dir, split).verify()

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """Train-split ``(mean, std)`` per feature, from the manifest."""
        stats = self.manifest["normalisation"]
        return [stats["mean"][c] for c in self.columns], [stats["std"][c] for c in self.columns]

    @property
    def n_classes(self) -> int:
        """Target classes: LCAG heights (or LCAS stages) plus class 0."""
        if self.hparams.target == "lcas":
            return int(self.manifest["lcas"]["n_classes"])
        return int(self.manifest["n_classes"])

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        for split in ("train", "val", "test", "test_unknown", "val_unknown"):
            if split not in self.datasets and split in self.manifest["splits"]:
                limit = h.max_train_events if split == "train" else h.max_eval_events
                self.datasets[split] = self._dataset(split, limit)
        if "validation" not in self.datasets:
            self.datasets["validation"] = self._dataset(h.val_split, h.max_eval_events)

    def _dataset(self, split: str, limit: int | None) -> LCAGDataset:
        h = self.hparams
        return LCAGDataset(self.data_dir, split, limit, features=h.features, target=h.target)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        dataset = self.datasets[split]
        size = h.batch_size if shuffle else (h.eval_batch_size or h.batch_size)
        return DataLoader(
            dataset,
            batch_sampler=BucketBatchSampler(dataset, size, shuffle=shuffle, seed=h.seed),
            collate_fn=collate,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Known topologies (dataloader 0), then unseen ones (dataloader 1) if validated on."""
        if not self.validates_unknown:
            return self._loader("validation", shuffle=False)
        return [self._loader("validation", shuffle=False), self._loader("val_unknown", False)]

    @property
    def validates_unknown(self) -> bool:
        """Whether validation includes the ``val_unknown`` split (call after ``setup``)."""
        h = self.hparams
        wanted = h.validate_unknown and h.val_split == "val"
        return wanted and len(self.datasets.get("val_unknown", [])) > 0

    def test_dataloader(self) -> list[DataLoader]:
        """Known topologies first (dataloader 0), then unseen ones (dataloader 1) if any."""
        loaders = [self._loader("test", shuffle=False)]
        if len(self.datasets.get("test_unknown", [])):
            loaders.append(self._loader("test_unknown", shuffle=False))
        return loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
