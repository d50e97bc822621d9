"""Converting the published .npy layout of Kahn et al. 2022 (fixture built here, no phasespace)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from lcag.data_gen.paper_npy import convert_paper_npy
from lcag.data_gen.shards import TopologyTable, read_manifest
from lcag.errors import ConfigError, DatasetError
from lcag.matrix import permute, tree_to_lcag
from lcag.tree import DecayTree, random_tree

SPLITS = ("train", "val", "test", "test_unknown")
FINAL_STATE = (1.0, 2.0, 3.0, 5.0)
RNG = np.random.default_rng(11)


def _topologies() -> dict[tuple[str, int], tuple[DecayTree, np.ndarray]]:
    """(folder, i) -> (tree, leaf masses). Sibling leaves and subtrees the matrix cannot tell
    apart carry different masses, so the leaf order has to follow the masses."""
    rng = np.random.default_rng(7)
    return {
        ("known", 0): (DecayTree.from_nested(((0, 1), (2, 3))), np.array([1.0, 2.0, 1.0, 3.0])),
        ("known", 1): (
            DecayTree.from_nested((0, (1, 2), (3, (4, 5)))),
            np.array([5.0, 1.0, 1.0, 2.0, 3.0, 1.0]),
        ),
        ("known", 2): (random_tree(rng, 7, max_depth=4), rng.choice(FINAL_STATE, 7)),
        ("unknown", 0): (random_tree(rng, 5, max_depth=4), rng.choice(FINAL_STATE, 5)),
        ("unknown", 1): (DecayTree.from_nested((0, 1, 2)), np.array([1.0, 2.0, 3.0])),
    }


def _events(
    tree: DecayTree, masses: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``leaves (n, L, 4)`` with the right leaf masses and ``lcas (n, L, L)`` float64, the
    leaves shuffled per event."""
    L = tree.n_leaves
    p = rng.normal(0.0, 10.0, (n, L, 3))
    energy = np.sqrt(masses**2 + np.square(p).sum(-1))
    leaves = np.concatenate([p, energy[..., None]], axis=-1)
    shuffle = np.argsort(rng.random((n, L)), axis=1)
    leaves = np.take_along_axis(leaves, shuffle[:, :, None], axis=1)
    lcas = permute(np.broadcast_to(tree_to_lcag(tree), (n, L, L)), shuffle).astype(np.float64)
    return leaves, lcas


def _write(
    src: Path, folder: str, split: str, i: int, leaves: np.ndarray, lcas: np.ndarray
) -> None:
    (src / folder).mkdir(parents=True, exist_ok=True)
    np.save(src / folder / f"leaves_{split}.{i}.npy", leaves)
    np.save(src / folder / f"lcas_{split}.{i}.npy", lcas)


def make_layout(src: Path, seed: int = 0) -> dict[tuple[str, str, int], int]:
    """The published layout with 3 known + 2 unknown topologies; returns the event counts."""
    rng = np.random.default_rng(seed)
    counts = {}
    for (folder, i), (tree, masses) in _topologies().items():
        splits = ("train", "val", "test") if folder == "known" else ("val", "test")
        for split in splits:
            n = int(rng.integers(20, 51))
            leaves, lcas = _events(tree, masses, n, rng)
            if split == "train":  # the paper's files may hold -1 on the diagonal
                lcas[:, np.arange(tree.n_leaves), np.arange(tree.n_leaves)] = -1
            _write(src, folder, split, i, leaves, lcas)
            counts[folder, split, i] = n
    return counts


def stored_events(out: Path) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """split -> topology id -> field -> events in stored order, read with h5py."""
    manifest = read_manifest(out)
    found: dict[str, dict[int, dict[str, list]]] = {s: {} for s in SPLITS}
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            with h5py.File(out / shard["file"]) as handle:
                for group in (handle[k] for k in handle if k.startswith("L")):
                    ids = group["topology"][()]
                    for tid in np.unique(ids):
                        fields = found[split].setdefault(int(tid), {})
                        for name in ("features", "lcag", "order"):
                            fields.setdefault(name, []).append(group[name][()][ids == tid])
    return {
        s: {t: {k: np.concatenate(v) for k, v in f.items()} for t, f in by_id.items()}
        for s, by_id in found.items()
    }


def read_table(out: Path) -> TopologyTable:
    manifest = read_manifest(out)
    first = manifest["splits"]["train"]["shards"][0]["file"]
    with h5py.File(out / first) as handle:
        return TopologyTable.read(handle["topologies"])


def leaf_mass(features: np.ndarray) -> np.ndarray:
    square = features[..., 3] ** 2 - np.square(features[..., :3]).sum(-1)
    return np.sqrt(np.maximum(square, 0.0))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    root = tmp_path_factory.mktemp("paper")
    src, out = root / "published", root / "lcag"
    counts = make_layout(src)
    manifest = convert_paper_npy(src, out, events_per_shard=64)
    return src, out, counts, manifest


# ------------------------------------------------------------------------------ conversion
def test_split_event_counts_and_shards(converted):
    _, out, counts, manifest = converted
    assert manifest == read_manifest(out)
    expected = {
        "train": sum(n for (f, s, _), n in counts.items() if (f, s) == ("known", "train")),
        "val": sum(n for (f, s, _), n in counts.items() if (f, s) == ("known", "val")),
        "test": sum(n for (f, s, _), n in counts.items() if (f, s) == ("known", "test")),
        "test_unknown": sum(n for (f, s, _), n in counts.items() if (f, s) == ("unknown", "test")),
    }
    for split in SPLITS:
        info = manifest["splits"][split]
        assert info["events"] == expected[split]
        assert all(0 < shard["events"] <= 64 for shard in info["shards"])
    assert len(manifest["splits"]["train"]["shards"]) > 1  # topologies span shards
    assert manifest["topologies"] == {
        "known": 3,
        "unknown": 2,
        "max_depth": max(t.depth for t, _ in _topologies().values()),
        "stored_in": "/topologies of every shard",
    }
    assert manifest["n_classes"] == manifest["topologies"]["max_depth"]
    assert manifest["units"] == "a.u. (the paper's mass units)"
    config = manifest["config"]
    assert config["source"] == "paper_npy"
    assert config["skipped"] == [
        "unknown/lcas_val.0.npy",
        "unknown/lcas_val.1.npy",
        "unknown/leaves_val.0.npy",
        "unknown/leaves_val.1.npy",
    ]
    assert "unknown/val" in config["skipped_reason"]
    assert config["topology_sources"] == ["known/0", "known/1", "known/2", "unknown/0", "unknown/1"]
    assert config["leaf_mass_mismatches"] == 0


def test_stored_events_are_the_source_events_under_their_topology(converted):
    src, out, _, manifest = converted
    table = read_table(out)
    events = stored_events(out)
    sources = manifest["config"]["topology_sources"]
    checked = 0
    for split in ("train", "val", "test"):
        assert sorted(events[split]) == [0, 1, 2]
    assert sorted(events["test_unknown"]) == [3, 4]
    for split, by_id in events.items():
        published = "test" if split == "test_unknown" else split
        for tid, fields in by_id.items():
            folder, i = sources[tid].split("/")
            source = np.load(src / folder / f"leaves_{published}.{i}.npy")
            assert fields["features"].dtype == np.float64
            np.testing.assert_array_equal(fields["features"], source)  # same events, same order
            tree = table.topology(tid).tree
            order = fields["order"].astype(np.int64)
            base = np.broadcast_to(tree_to_lcag(tree), (len(order), *fields["lcag"].shape[1:]))
            np.testing.assert_array_equal(fields["lcag"], permute(base, order))
            assert np.all(np.diagonal(fields["lcag"], axis1=1, axis2=2) == 0)
            # the order follows the masses too: each event leaf is a topology leaf of its mass
            # (float64 E^2 - p^2 at |p| < ~70, m >= 1: ~1e-12 relative)
            np.testing.assert_allclose(
                leaf_mass(fields["features"]), tree.masses[fields["order"]], rtol=1e-9
            )
            checked += len(source)
    assert checked == sum(v["events"] for v in manifest["splits"].values())


def test_topology_table_ids_and_masses(converted):
    _, out, _, _ = converted
    table = read_table(out)
    assert len(table) == 5
    assert table.known.tolist() == [True, True, True, False, False]
    for tid, (tree, masses) in enumerate(_topologies().values()):
        topology = table.topology(tid)
        assert topology.tree.isomorphic(tree)
        np.testing.assert_allclose(
            np.sort(topology.tree.masses[: tree.n_leaves]), np.sort(masses), rtol=1e-9
        )
        assert not topology.widths.any()
        for node in topology.tree.inner_nodes:  # an inner mass is at least its leaves' masses
            under = topology.tree.leaves_under(node)
            assert topology.tree.masses[node] >= topology.tree.masses[list(under)].sum() - 1e-9
    np.testing.assert_allclose(table.final_state_masses(), FINAL_STATE, rtol=1e-9)


def test_rerun_is_identical_and_another_source_is_refused(converted, tmp_path):
    src, out, _, manifest = converted

    def checksums(m: dict) -> dict[str, str]:
        return {s["file"]: s["sha256"] for v in m["splits"].values() for s in v["shards"]}

    again = convert_paper_npy(src, out, events_per_shard=64)
    assert checksums(again) == checksums(manifest)
    other = tmp_path / "other"
    make_layout(other, seed=1)
    with pytest.raises(DatasetError, match="another config"):
        convert_paper_npy(other, out, events_per_shard=64)
    assert checksums(read_manifest(out)) == checksums(manifest)


def test_overwrite_replaces_and_float32(tmp_path):
    src = tmp_path / "src"
    make_layout(src, seed=2)
    out = tmp_path / "out"
    convert_paper_npy(src, out, events_per_shard=1000)
    manifest = convert_paper_npy(src, out, dtype="float32", overwrite=True)
    assert manifest["dtype"] == "float32"
    assert [len(manifest["splits"][s]["shards"]) for s in SPLITS] == [1, 1, 1, 1]
    first = manifest["splits"]["train"]["shards"][0]["file"]
    with h5py.File(out / first) as handle:
        assert handle["L4"]["features"].dtype == np.float32


@pytest.mark.parametrize(
    ("dtype", "per_shard"), [("float16", 10), ("float64", 0), ("float64", 2.5)]
)
def test_bad_options(tmp_path, dtype, per_shard):
    with pytest.raises(ConfigError):
        convert_paper_npy(tmp_path, tmp_path / "out", dtype=dtype, events_per_shard=per_shard)


def _boost(p: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """4-momentum ``p`` given in the rest frame of ``parent``, in the lab."""
    b = parent[:3] / parent[3]
    b2 = float(b @ b)
    if b2 == 0.0:
        return p.copy()
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = float(b @ p[:3])
    xyz = p[:3] + ((gamma - 1.0) * bp / b2 + gamma * p[3]) * b
    return np.append(xyz, gamma * (p[3] + bp))


def _decay(node: tuple | float, momentum: np.ndarray, rng: np.random.Generator) -> list:
    """Leaf 4-momenta (reading order) of ``node`` = (mass, child, child) or a leaf mass."""
    if not isinstance(node, tuple):
        return [momentum]
    mass, first, second = node
    m1, m2 = (c[0] if isinstance(c, tuple) else c for c in (first, second))
    q = np.sqrt((mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)) / (2 * mass)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    out = []
    for child, m, sign in ((first, m1, 1.0), (second, m2, -1.0)):
        rest = np.append(sign * q * direction, np.sqrt(m**2 + q**2))
        out += _decay(child, _boost(rest, momentum), rng)
    return out


def test_fixed_inner_masses_tell_isomorphic_subtrees_apart(tmp_path):
    """root(100) -> A(25) -> (1, 2) and B(20) -> (1, 2): only the masses say which is A."""
    rng = np.random.default_rng(5)
    chain = (100.0, (25.0, 1.0, 2.0), (20.0, 1.0, 2.0))
    tree = DecayTree.from_nested(((0, 1), (2, 3)))
    n = 30
    leaves = np.stack([np.array(_decay(chain, np.array([0, 0, 0, 100.0]), rng)) for _ in range(n)])
    shuffle = np.argsort(rng.random((n, 4)), axis=1)
    leaves = np.take_along_axis(leaves, shuffle[:, :, None], axis=1)
    lcas = permute(np.broadcast_to(tree_to_lcag(tree), (n, 4, 4)), shuffle).astype(np.float64)
    _write(tmp_path / "src", "known", "train", 0, leaves, lcas)
    manifest = convert_paper_npy(tmp_path / "src", tmp_path / "out")
    assert manifest["config"]["leaf_mass_mismatches"] == 0
    topology = read_table(tmp_path / "out").topology(0).tree
    np.testing.assert_allclose(sorted(topology.masses), [1, 1, 2, 2, 20, 25, 100], rtol=1e-9)
    stored = stored_events(tmp_path / "out")["train"][0]
    np.testing.assert_array_equal(stored["features"], leaves)
    for features, order in zip(stored["features"], stored["order"], strict=True):
        # event leaves mapped under a node make its mass: float64 sums after two boosts, E^2 - p^2
        # at (E / m)^2 <= 2500: ~1e-12 relative
        for node in range(topology.n_nodes):
            mine = np.isin(order, topology.leaves_under(node))
            mass = leaf_mass(features[mine].sum(axis=0))
            np.testing.assert_allclose(mass, topology.masses[node], rtol=1e-9)


# ----------------------------------------------------------------------------------- errors
def _small(src: Path) -> None:
    """One known topology with train and val files, 20 events each."""
    rng = np.random.default_rng(3)
    tree = DecayTree.from_nested(((0, 1), (2, (3, 4))))
    masses = np.array([1.0, 2.0, 1.0, 3.0, 5.0])
    for split in ("train", "val"):
        _write(src, "known", split, 0, *_events(tree, masses, 20, rng))


def _edit(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        path = src / "known" / name
        np.save(path, change(np.load(path)))

    return apply


def _set(array: np.ndarray, where: tuple, value: float) -> np.ndarray:
    array[where] = value
    return array


def _other_tree(array: np.ndarray, event: int) -> np.ndarray:
    array[event] = tree_to_lcag(DecayTree.from_nested((0, 1, 2, (3, 4))))
    return array


ERRORS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing src": (lambda src: None, "source folder not found"),
    "no known folder": (lambda src: (src / "unknown").mkdir(parents=True), "no known/ folder"),
    "no leaves files": (
        lambda src: (src / "known").mkdir(parents=True),
        r"known: no leaves_<split>",
    ),
    "leaves without lcas": (
        lambda src: (src / "known" / "lcas_val.0.npy").unlink(),
        r"leaves_val\.0\.npy: its partner lcas_val\.0\.npy is missing",
    ),
    "bad split name": (
        lambda src: _write(src, "known", "valid", 1, np.zeros((1, 2, 4)), np.zeros((1, 2, 2))),
        r"_valid\.1\.npy: unexpected file name",
    ),
    "mismatched N": (
        _edit("lcas_train.0.npy", lambda a: a[:15]),
        r"lcas_train\.0\.npy: 15 events but leaves_train\.0\.npy has 20",
    ),
    "mismatched L": (
        _edit("lcas_val.0.npy", lambda a: a[:, :4, :4]),
        r"lcas_val\.0\.npy: 4 leaves per event but leaves_val\.0\.npy has 5",
    ),
    "L differs between splits": (
        lambda src: _write(
            src, "known", "test", 0, *_events(DecayTree.from_nested((0, 1, 2)), np.ones(3), 5, RNG)
        ),
        r"leaves_test\.0\.npy: 3 leaves per event, but topology known/0 has 5",
    ),
    "leaves not 3-d": (
        _edit("leaves_train.0.npy", lambda a: a.reshape(20, -1)),
        r"leaves_train\.0\.npy: expected shape \(N, L, 4\)",
    ),
    "last dim not 4": (
        _edit("leaves_val.0.npy", lambda a: a[..., :3]),
        r"leaves_val\.0\.npy: expected shape \(N, L, 4\)",
    ),
    "NaN momentum": (
        _edit("leaves_val.0.npy", lambda a: _set(a, (6, 2, 1), np.nan)),
        r"leaves_val\.0\.npy: event 6 leaf 2: py = nan is not finite",
    ),
    "inf momentum": (
        _edit("leaves_train.0.npy", lambda a: _set(a, (0, 0, 3), np.inf)),
        r"leaves_train\.0\.npy: event 0 leaf 0: E = inf is not finite",
    ),
    "asymmetric matrix": (
        _edit("lcas_val.0.npy", lambda a: _set(a, (7, 0, 1), 3.0)),
        r"lcas_val\.0\.npy: event 7: invalid LCAG",
    ),
    "non-integer matrix": (
        _edit("lcas_train.0.npy", lambda a: _set(a, (9, 1, 1), 0.5)),
        r"lcas_train\.0\.npy: event 9: invalid LCAG",
    ),
    "another tree in the file": (
        _edit("lcas_val.0.npy", lambda a: _other_tree(a, 5)),
        r"lcas_val\.0\.npy: event 5 is not the same tree shape as event 0",
    ),
    "another tree than the topology": (
        _edit("lcas_val.0.npy", lambda a: _other_tree(a, 0)),
        r"lcas_val\.0\.npy: event 0 is not the tree of topology known/0",
    ),
    "pickled array": (
        lambda src: np.save(src / "known" / "lcas_val.0.npy", np.array([{}], dtype=object)),
        r"lcas_val\.0\.npy: not a readable \.npy array",
    ),
    "not an array": (
        lambda src: (src / "known" / "leaves_train.0.npy").write_text("hello"),
        r"leaves_train\.0\.npy: not a readable \.npy array",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_file(tmp_path, case):
    prepare, message = ERRORS[case]
    src = tmp_path / "src"
    if case not in ("missing src", "no known folder", "no leaves files"):
        _small(src)
    prepare(src)
    with pytest.raises(DatasetError, match=message):
        convert_paper_npy(src, tmp_path / "out")
