"""lcag-reconstruct: ROOT and Parquet ntuples in, the same trees as Reconstructor out.

The command runs in-process (``main([...])`` returns the exit status). Inputs are written
here with uproot (TTrees through ``mktree``, RNTuples through ``file[name] = ...``) and awkward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lcag
from lcag import lcag_to_tree, tree_to_lcag
from lcag.data import LCAGDataset
from lcag.ntuple import parents_from_lcag
from lcag.ntuple.cli import main
from lcag.tree import random_tree

ak = pytest.importorskip("awkward")
uproot = pytest.importorskip("uproot")
pytest.importorskip("pyarrow")

FEATURES = ("px", "py", "pz", "E")
N_EVENTS = 240


# ------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def events(tiny_data: Path) -> list[np.ndarray]:
    """Test events of the tiny dataset, (L_i, 4) float32 each, mixed sizes."""
    dataset = LCAGDataset(tiny_data, "test", max_events=N_EVENTS)
    return [e["x"].astype(np.float32) for e in dataset.__getitems__(range(len(dataset)))]


@pytest.fixture(scope="module")
def reco(checkpoint: Path) -> lcag.Reconstructor:
    return lcag.Reconstructor.from_checkpoint(checkpoint)


def columns(events: list[np.ndarray], first_event: int = 0) -> dict:
    """Jagged px, py, pz, E; carried event numbers (int64), run (int32), a jagged weight."""
    counts = np.array([len(e) for e in events], dtype=np.int64)
    flat = np.concatenate(events) if events else np.zeros((0, 4), np.float32)
    out = {
        name: ak.unflatten(np.ascontiguousarray(flat[:, k]), counts)
        for k, name in enumerate(FEATURES)
    }
    out["event"] = np.arange(first_event, first_event + len(events), dtype=np.int64) * 7 + 3
    out["run"] = np.full(len(events), 42, dtype=np.int32)
    out["weight"] = ak.unflatten(np.linspace(0, 1, len(flat)), counts)
    return out


def write_root(path: Path, data: dict, tree: str = "events") -> Path:
    """A TTree, as experiments' ntuples are."""
    with uproot.recreate(path) as file:
        types = {k: v.dtype if isinstance(v, np.ndarray) else v.type.content
                 for k, v in data.items()}  # fmt: skip
        file.mktree(tree, types).extend(data)
    return path


def write_parquet(path: Path, data: dict) -> Path:
    ak.to_parquet(ak.zip(data, depth_limit=1), path)
    return path


def read_output(path: Path, tree: str = "lcag") -> ak.Array:
    if path.suffix == ".root":
        with uproot.open(path) as file:
            return file[tree].arrays(library="ak")
    return ak.from_parquet(path)


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def assert_same_as_reconstructor(out: ak.Array, expected: list[lcag.Reconstruction]) -> None:
    """Bit-for-bit the trees, scores and probabilities of Reconstructor on the same arrays."""
    assert len(out) == len(expected)
    for row, want in zip(out, expected, strict=True):
        n = len(want.lcag)
        assert row["n_leaves"] == n
        np.testing.assert_array_equal(np.asarray(row["lcag"]).reshape(n, n), want.lcag)
        np.testing.assert_array_equal(np.asarray(row["parent"]), want.tree.parents)
        assert row["score"] == want.score
        assert row["probability"] == want.probability
        assert row["known_topology"] == int(want.known_topology)  # the fixture's is catalogued
        assert row["reranked"] == int(want.reranked)


# ---------------------------------------------------------------------------- round trips
def test_root_round_trip(tmp_path, checkpoint, reco, events, capsys):
    data = columns(events)
    source = write_root(tmp_path / "in.root", data)
    out = tmp_path / "out" / "reco.root"
    status = run("--ckpt", checkpoint, "--input", f"{source}:events",
                 "--carry", "event", "run", "weight", "--out", out)  # fmt: skip
    assert status == 0
    summary = capsys.readouterr().err.strip().splitlines()
    assert summary[-1].startswith(f"lcag-reconstruct: {len(events)} events from 1 file(s)")
    assert "events/s" in summary[-1]
    result = read_output(out)
    assert_same_as_reconstructor(result, reco.reconstruct(events))  # one chunk, same batches
    np.testing.assert_array_equal(result["event"], data["event"])
    np.testing.assert_array_equal(result["run"], data["run"])
    assert ak.all(result["weight"] == data["weight"])
    with uproot.open(out) as file:
        tree = file["lcag"]
        assert tree.classname == "TTree"
        assert set(tree.keys()) == {
            "n_leaves", "n_lcag", "lcag", "n_parent", "parent", "score", "probability",
            "known_topology", "reranked", "event", "run", "n_weight", "weight",
        }  # fmt: skip
        assert tree.typenames()["event"] == "int64_t"
        assert tree.typenames()["run"] == "int32_t"
    assert sorted(p.name for p in out.parent.iterdir()) == ["reco.root"]


def test_parquet_round_trip_in_small_chunks(tmp_path, checkpoint, reco, events):
    data = columns(events)
    source = write_parquet(tmp_path / "in.parquet", data)
    out = tmp_path / "reco.parquet"
    step = 50  # chunks end inside the file: each must be reconstructed as given
    status = run("--ckpt", checkpoint, "-i", source, "--carry", "event", "weight",
                 "--out", out, "--step-size", step, "--quiet")  # fmt: skip
    assert status == 0
    result = read_output(out)
    expected = []
    for start in range(0, len(events), step):
        expected += reco.reconstruct(events[start : start + step])
    assert_same_as_reconstructor(result, expected)
    assert result.fields == ["n_leaves", "lcag", "parent", "score", "probability",
                             "known_topology", "reranked", "event", "weight"]  # fmt: skip
    assert str(result.type.content) == (
        "{n_leaves: int32, lcag: var * int32, parent: var * int32, score: float64, "
        "probability: float64, known_topology: int8, reranked: int8, event: int64, "
        "weight: var * float64}"
    )
    np.testing.assert_array_equal(result["event"], data["event"])
    assert ak.all(result["weight"] == data["weight"])


def test_several_inputs_of_both_kinds_in_order(tmp_path, checkpoint, reco, events):
    """A ROOT TTree, an RNTuple found as the file's only tree, and Parquet, into one file."""
    a, b, c = events[:80], events[80:170], events[170:]
    first = write_root(tmp_path / "a.root", columns(a, 0), tree="mytree")
    second = tmp_path / "b.root"
    with uproot.recreate(second) as file:
        file["ntuple"] = columns(b, len(a))  # uproot 5.7 writes an RNTuple
    third = write_parquet(tmp_path / "c.parquet", columns(c, len(a) + len(b)))
    out = tmp_path / "all.root"
    status = run("--ckpt", checkpoint, "-i", f"{first}:mytree", second, "-i", third,
                 "--carry", "event", "--out", f"{out}:reco", "-q")  # fmt: skip
    assert status == 0
    result = read_output(out, tree="reco")
    expected = reco.reconstruct(a) + reco.reconstruct(b) + reco.reconstruct(c)
    assert_same_as_reconstructor(result, expected)
    np.testing.assert_array_equal(result["event"], np.arange(len(events)) * 7 + 3)


def test_an_empty_input_gives_an_empty_output(tmp_path, checkpoint):
    source = write_root(tmp_path / "empty.root", columns([]))
    for out in (tmp_path / "out.root", tmp_path / "out.parquet"):
        assert run("--ckpt", checkpoint, "-i", source, "--carry", "event", "--out", out, "-q") == 0
        result = read_output(out)
        assert len(result) == 0
        assert {"lcag", "parent", "score", "event"} <= set(result.fields)


def test_parents_match_lcag_to_tree():
    rng = np.random.default_rng(5)
    for n in range(1, 11):
        trees = [random_tree(rng, n) for _ in range(40)] if n > 1 else []
        matrices = [tree_to_lcag(t) for t in trees] or [np.zeros((1, 1), dtype=np.int64)]
        parents, n_nodes = parents_from_lcag(np.stack(matrices))
        for M, p, k in zip(matrices, parents, n_nodes, strict=True):
            np.testing.assert_array_equal(p[:k], lcag_to_tree(M).parents)
            assert (p[k:] == -1).all()


# ------------------------------------------------------------------------------ bad input
def _bad_events(events: list[np.ndarray], kind: str) -> dict:
    data = columns(events[:20])
    if kind == "unequal":  # entry 5: py one value short
        py = ak.to_list(data["py"])
        py[5] = py[5][:-1]
        data["py"] = ak.values_astype(ak.Array(py), np.float32)
    elif kind == "nan":  # entry 7, leaf 1: pz is NaN
        pz = ak.to_list(data["pz"])
        pz[7][1] = float("nan")
        data["pz"] = ak.values_astype(ak.Array(pz), np.float32)
    elif kind == "swapped":  # entry 0: (E, px, py, pz)
        big = [np.roll(e, 1, axis=1) if k == 0 else e for k, e in enumerate(events[:20])]
        data.update({k: v for k, v in columns(big).items() if k in FEATURES})
    return data


def _too_many_leaves(events: list[np.ndarray], n: int) -> dict:
    rng = np.random.default_rng(0)
    p = rng.normal(size=(n, 3))
    big = np.c_[p, np.sqrt((p**2).sum(1) + 0.14**2)].astype(np.float32)
    return columns([*events[:3], big, *events[3:10]])


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing file", ["nowhere.root", "not found"]),
        ("missing tree", ["bad.root:nope", "no tree 'nope'", "events"]),
        ("missing branch", ["bad.root:events", "no branch 'pt'"]),
        ("unequal", ["bad.root:events", "entry 5", "branch 'py'", "'px'"]),
        ("nan", ["bad.root:events", "entry 7", "branch 'pz'", "leaf 1", "nan"]),
        ("too many leaves", ["bad.root:events", "entry 3", "branch 'px'", "at most"]),
        ("swapped", ["bad.root:events", "entry 0", "(px, py, pz, E)"]),
        ("parquet nan", ["bad.parquet", "entry 7", "branch 'pz'"]),
        ("second file bad", ["bad.root:events", "entry 7", "branch 'pz'"]),
    ],
)
@pytest.mark.parametrize("fmt", ["root", "parquet"])
def test_bad_input_names_file_branch_entry_and_writes_nothing(
    tmp_path, checkpoint, reco, events, capsys, case, needles, fmt
):
    good = write_root(tmp_path / "good.root", columns(events[:48]))
    bad = tmp_path / "bad.root"
    spec: list[str | Path] = [f"{bad}:events"]
    extra: list[str | Path] = []
    if case == "missing file":
        spec = [tmp_path / "nowhere.root"]
    elif case == "missing tree":
        write_root(bad, columns(events[:5]))
        spec = [f"{bad}:nope"]
    elif case == "missing branch":
        write_root(bad, columns(events[:5]))
        extra = ["--carry", "event", "pt"]
    elif case == "too many leaves":
        write_root(bad, _too_many_leaves(events, reco.max_leaves + 1))
    elif case == "parquet nan":
        spec = [write_parquet(tmp_path / "bad.parquet", _bad_events(events, "nan"))]
    elif case == "second file bad":  # the first file's chunks are already written
        write_root(bad, _bad_events(events, "nan"))
        spec = [good, f"{bad}:events"]
        extra = ["--step-size", "16"]
    else:
        write_root(bad, _bad_events(events, case))
    out = tmp_path / "out" / f"reco.{fmt}"
    status = run("--ckpt", checkpoint, "-i", *spec, *extra, "--out", out, "-q")
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("lcag-reconstruct: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_failed_run_leaves_an_earlier_output_as_it_was(tmp_path, checkpoint, events):
    out = tmp_path / "reco.root"
    assert run("--ckpt", checkpoint, "-i", write_root(tmp_path / "a.root", columns(events[:30])),
               "--out", out, "-q") == 0  # fmt: skip
    before = out.read_bytes()
    bad = write_root(tmp_path / "bad.root", _bad_events(events, "nan"))
    good = write_root(tmp_path / "good.root", columns(events[:48]))  # written, then dropped
    assert run("--ckpt", checkpoint, "-i", good, bad, "--out", out, "-q", "--step-size", "16") == 2
    assert out.read_bytes() == before
    assert not (tmp_path / "reco.root.partial").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--features", "px", "py", "pz"], "--features px py pz: 3 branches"),
        (["--carry", "score"], "--carry score: the output has a branch of that name"),
        (["--carry", "n_lcag"], "--carry n_lcag"),
        (["--step-size", "0"], "--step-size: 0"),
    ],
)
def test_bad_arguments(tmp_path, checkpoint, events, capsys, args, needle):
    source = write_root(tmp_path / "in.root", columns(events[:5]))
    data = columns(events[:5])
    data["score"] = np.zeros(5)
    data["n_lcag"] = np.zeros(5)
    write_root(source, data)
    out = tmp_path / "out.root"
    assert run("--ckpt", checkpoint, "-i", source, *args, "--out", out) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1, err
    assert not out.exists()


def test_bad_output_name_and_checkpoint(tmp_path, checkpoint, events, capsys):
    source = write_root(tmp_path / "in.root", columns(events[:5]))
    assert run("--ckpt", checkpoint, "-i", source, "--out", tmp_path / "out.csv") == 2
    assert "--out" in capsys.readouterr().err
    assert run("--ckpt", tmp_path / "none.ckpt", "-i", source, "--out", tmp_path / "o.root") == 2
    assert "none.ckpt" in capsys.readouterr().err
    assert run("--ckpt", checkpoint, "-i", source, "--out", source) == 2
    assert "is also an input" in capsys.readouterr().err


def test_progress_bar_and_summary(tmp_path, checkpoint, events):
    from lcag.ntuple.cli import reconstruct_files

    source = write_root(tmp_path / "in.root", columns(events[:40]))
    summary = reconstruct_files(
        checkpoint, [source], tmp_path / "o.parquet", step_size=16, progress=True
    )
    assert summary.entries == 40
    assert summary.files == 1
    assert summary.rate > 0
    assert len(read_output(tmp_path / "o.parquet")) == 40
