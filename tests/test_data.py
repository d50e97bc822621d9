"""Reading datasets: lazy HDF5 access, bucketing, collate, and clear errors on bad data."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

import lcag.data
from lcag.data import BucketBatchSampler, LCAGDataModule, LCAGDataset, collate
from lcag.errors import DatasetError
from lcag.matrix import tree_to_lcag


def test_events_match_the_shards(tiny_data):
    dataset = LCAGDataset(tiny_data, "train")
    assert len(dataset) == 4800
    rng = np.random.default_rng(0)
    picks = rng.choice(len(dataset), size=50, replace=False)
    batch = dataset.__getitems__(picks)
    for index, event in zip(picks, batch, strict=True):
        single = dataset[int(index)]
        np.testing.assert_array_equal(event["x"], single["x"])
        n = len(event["x"])
        assert event["x"].dtype == np.float32
        assert event["x"].shape == (n, 4)
        assert (np.diag(event["target"]) == -1).all()
        assert event["known"]
        off = ~np.eye(n, dtype=bool)
        assert (event["target"][off] >= 1).all()


def test_true_tree_is_the_events_tree_with_masses(tiny_data):
    dataset = LCAGDataset(tiny_data, "test_unknown")
    table = dataset.topology_table()
    for index in (0, 17, len(dataset) - 1):
        event = dataset[index]
        tree, leaves = dataset.true_tree(index)
        n = len(event["x"])
        np.testing.assert_array_equal(leaves, np.arange(n))  # tiny has no background leaves
        target = event["target"].copy()
        np.fill_diagonal(target, 0)
        np.testing.assert_array_equal(tree_to_lcag(tree), target)
        nominal = table.topology(int(event["topology"])).tree
        assert tree.isomorphic(nominal, labels=True)  # the topology's names and masses
        # each leaf's nominal mass is its 4-momentum's (tiny: no smearing; masses 1..12)
        px, py, pz, energy = event["x"].astype(np.float64).T
        mass = np.sqrt(np.maximum(energy**2 - px**2 - py**2 - pz**2, 0))
        np.testing.assert_allclose(mass, tree.masses[:n], rtol=1e-3)  # float32 momenta
    with pytest.raises(IndexError):
        dataset.true_tree(len(dataset))


def test_unseen_topologies_are_flagged(tiny_data):
    dataset = LCAGDataset(tiny_data, "test_unknown")
    assert not any(event["known"] for event in dataset.__getitems__(range(len(dataset))))


def test_bucketing_covers_every_event_once_with_equal_leaf_counts(tiny_data):
    dataset = LCAGDataset(tiny_data, "train")
    sampler = BucketBatchSampler(dataset, batch_size=64, shuffle=True, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
    for batch in batches[:20]:
        sizes = {len(e["x"]) for e in dataset.__getitems__(batch)}
        assert len(sizes) == 1
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_bucketing_splits_batches_across_ranks(tiny_data, monkeypatch):
    dataset = LCAGDataset(tiny_data, "train")
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(lcag.data, "_rank_and_world", lambda rank=rank: (rank, 2))
        per_rank.append(list(BucketBatchSampler(dataset, 64, shuffle=True, seed=3)))
    assert len(per_rank[0]) == len(per_rank[1])
    covered = {i for batches in per_rank for b in batches for i in b}
    assert covered == set(range(len(dataset)))


def test_a_small_evaluation_split_gives_every_rank_a_batch(tiny_data, monkeypatch):
    """val_unknown of tiny.yaml: 200 events in batches of 512 are 4 batches (one per leaf
    count); 8 ranks each get one, every event exactly once, batches of one leaf count."""
    dataset = LCAGDataset(tiny_data, "val_unknown")
    per_rank = []
    for rank in range(8):
        monkeypatch.setattr(lcag.data, "_rank_and_world", lambda rank=rank: (rank, 8))
        per_rank.append(list(BucketBatchSampler(dataset, 512, shuffle=False)))
    assert all(len(batches) >= 1 for batches in per_rank)
    seen = sorted(i for batches in per_rank for b in batches for i in b)
    assert seen == list(range(len(dataset)))
    for batches in per_rank:
        for batch in batches:
            assert len({len(dataset[i]["x"]) for i in batch}) == 1


def test_collate_pads_and_masks(tiny_data):
    dataset = LCAGDataset(tiny_data, "train")
    sizes = {}
    for start, _ in dataset.group_ranges():
        sizes.setdefault(len(dataset[start]["x"]), start)
    small, large = sizes[min(sizes)], sizes[max(sizes)]
    batch = collate(dataset.__getitems__([small, large]))
    L = max(sizes)
    assert batch["x"].shape == (2, L, 4)
    assert batch["mask"][0].sum() == min(sizes)
    assert batch["mask"][1].all()
    n = min(sizes)
    assert (batch["target"][0, n:] == -1).all()
    assert (batch["target"][0, :, n:] == -1).all()
    assert (batch["x"][0, n:] == 0).all()
    assert batch["n_leaves"].tolist() == [n, L]


def test_datamodule_loaders_and_statistics(tiny_data):
    dm = LCAGDataModule(str(tiny_data), batch_size=32, eval_batch_size=100)
    dm.setup("fit")
    mean, std = dm.normalisation
    assert len(mean) == 4
    assert std[3] > 0
    assert dm.n_classes == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[0] <= 32
    assert batch["x"].dtype == torch.float32
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    assert not next(iter(loaders[1]))["known"].any()
    known, unseen = dm.val_dataloader()  # tiny.yaml keeps 4 topologies for val_unknown
    assert sum(len(b["x"]) for b in known) == 600
    assert sum(len(b["x"]) for b in unseen) == 4 * 50
    assert not any(b["known"].any() for b in unseen)
    only_known = LCAGDataModule(str(tiny_data), batch_size=32, validate_unknown=False)
    only_known.setup("fit")
    assert sum(len(b["x"]) for b in only_known.val_dataloader()) == 600


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no manifest"):
        LCAGDataset(tmp_path, "train")


def test_schema_version_mismatch_is_named(tiny_data, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tiny_data, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="schema_version 0"):
        LCAGDataModule(str(copy))


def test_nan_features_are_named(tiny_data, tmp_path):
    copy = tmp_path / "nan"
    shutil.copytree(tiny_data, copy)
    shard = copy / "train" / "shard-00000.h5"
    with h5py.File(shard, "r+") as handle:
        group = next(k for k in handle if k.startswith("L"))
        features = handle[group]["features"]
        values = features[()]
        values[3, 1, 2] = np.nan
        features[...] = values
    dataset = LCAGDataset(copy, "train")
    with pytest.raises(DatasetError, match=rf"shard-00000.h5: /{group}/features\[3, 1, 2\] is nan"):
        dataset.__getitems__(range(10))


def test_unknown_split_and_missing_shard(tiny_data, tmp_path):
    with pytest.raises(DatasetError, match="no split 'training'"):
        LCAGDataset(tiny_data, "training")
    copy = tmp_path / "gone"
    shutil.copytree(tiny_data, copy)
    (copy / "val" / "shard-00000.h5").unlink()
    with pytest.raises(
        DatasetError, match=r"shard-00000\.h5: shard listed in the manifest is missing"
    ):
        LCAGDataset(copy, "val")
