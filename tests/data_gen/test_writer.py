"""lcag-generate: stored content, determinism, resume after a kill, and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import yaml
from gen_configs import held_generation_command, tiny_dict

from lcag.data_gen.config import load_config
from lcag.data_gen.shards import TopologyTable, read_manifest
from lcag.data_gen.writer import generate_dataset
from lcag.errors import ConfigError, DatasetError
from lcag.files import TMP_SUFFIX
from lcag.matrix import permute, tree_to_lcag

SPLITS = ("train", "val", "test", "test_unknown")


def checksums(root: Path) -> dict[str, str]:
    manifest = read_manifest(root)
    return {s["file"]: s["sha256"] for v in manifest["splits"].values() for s in v["shards"]}


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lcag.data_gen.cli", *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_stored_lcag_is_the_topology_under_the_leaf_order(small_dataset):
    manifest = read_manifest(small_dataset)
    assert manifest["splits"]["train"]["events"] == 4 * 120
    assert manifest["splits"]["test_unknown"]["events"] == 2 * 30
    assert manifest["features"] == ["px", "py", "pz", "E"]
    seen = 0
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            with h5py.File(small_dataset / shard["file"]) as handle:
                table = TopologyTable.read(handle["topologies"])
                for group in (handle[k] for k in handle if k.startswith("L")):
                    ids = group["topology"][()]
                    assert (~table.known[ids]).all() == (split == "test_unknown")
                    assert table.known[ids].all() == (split != "test_unknown")
                    features = group["features"][()]
                    assert features.dtype == np.float64
                    for e in range(len(ids)):
                        tree = table.topology(ids[e]).tree
                        order = group["order"][e]
                        np.testing.assert_array_equal(
                            group["lcag"][e], permute(tree_to_lcag(tree), order)
                        )
                        mass = np.sqrt(
                            np.maximum(
                                features[e, :, 3] ** 2 - np.square(features[e, :, :3]).sum(-1), 0
                            )
                        )
                        # float64: E^2 - p^2 at E <= 100, m >= 1 is good to ~1e-12
                        np.testing.assert_allclose(mass, tree.masses[order], rtol=1e-6, atol=1e-9)
                        np.testing.assert_allclose(features[e].sum(0), [0, 0, 0, 100], atol=1e-9)
                        seen += 1
    assert seen == sum(v["events"] for v in manifest["splits"].values())


def test_leaves_are_shuffled_per_event(small_dataset):
    with h5py.File(small_dataset / "train" / "shard-00000.h5") as handle:
        group = max(
            (handle[k] for k in handle if k.startswith("L")), key=lambda g: g["order"].shape[1]
        )
        orders = group["order"][()]
    assert len({tuple(o) for o in orders}) > len(orders) // 2


def test_normalisation_is_the_train_statistics(small_dataset):
    manifest = read_manifest(small_dataset)
    leaves = []
    for shard in manifest["splits"]["train"]["shards"]:
        with h5py.File(small_dataset / shard["file"]) as handle:
            leaves += [handle[k]["features"][()].reshape(-1, 4) for k in handle if k[0] == "L"]
    stacked = np.concatenate(leaves)
    # the same ~4,000 float64 values summed per shard and in another order here: the means are
    # ~1e-11 apart (n eps |x|); the std, sqrt(E[x^2] - mean^2), loses at most E[x^2] / var ~ 3
    np.testing.assert_allclose(manifest["normalisation"]["mean"], stacked.mean(0), atol=1e-9)
    np.testing.assert_allclose(manifest["normalisation"]["std"], stacked.std(0), rtol=1e-9)


def test_one_and_two_workers_give_identical_bytes(small_dataset, tmp_path):
    config = write_config(tmp_path / "small.yaml", tiny_dict())
    result = run_cli("--config", str(config), "--out", str(tmp_path / "two"), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert checksums(tmp_path / "two") == checksums(small_dataset)
    a = json.loads((small_dataset / "manifest.json").read_text())
    b = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert a == b


def _engine_then_exit(code: int) -> None:
    from lcag.data_gen import writer

    writer._engine()  # TensorFlow loaded: outside the shard pool its teardown stays
    sys.exit(code)


def test_only_shard_pool_workers_skip_the_teardown():
    """Pool workers end with os._exit(0) once their shards are out; any other process that
    generates (a script, a test's child) keeps its exit code and exit handlers."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_engine_then_exit, args=(3,))
    child.start()
    child.join(timeout=600)  # a TensorFlow import: seconds, on any machine
    assert child.exitcode == 3


def test_one_process_writes_two_configs_of_one_seed(small_dataset, tmp_path):
    # same seed, same topology ids, other topologies: the process's caches must tell them apart
    generate_dataset(load_config(tiny_dict(random={"max_children": 2})), tmp_path / "a", workers=1,
                     progress=False)  # fmt: skip
    generate_dataset(load_config(tiny_dict()), tmp_path / "b", workers=1, progress=False)
    assert checksums(tmp_path / "b") == checksums(small_dataset)


def test_killed_generation_resumes_to_the_same_bytes(small_dataset, tmp_path):
    config = write_config(tmp_path / "small.yaml", tiny_dict())
    out = tmp_path / "killed"
    # The generation's workers publish train shard 0 only and then stop at the rename of their
    # next shard (written, checksummed, not yet published): a kill then always lands half-way,
    # not only when this test happens to look before a fast machine has finished.
    process = subprocess.Popen(
        [
            *held_generation_command(sys.executable),
            "--config",
            str(config),
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = out / "train" / "shard-00000.h5"

    def held() -> list[Path]:  # checksummed shards waiting to be renamed into place
        return [c for c in out.glob("*/*.sha256") if not c.with_suffix(".h5").exists()]

    # Waits for a state, not for a time; the deadline only keeps a broken run from hanging.
    deadline = time.monotonic() + 600
    while not (first.exists() and len(held()) == 2) and process.poll() is None:
        assert time.monotonic() < deadline, "no worker reached its second shard in 600 s"
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    partial = sorted(p.name for p in out.rglob(f"*{TMP_SUFFIX}*"))
    assert len(partial) == 2, partial  # the held shards' temporary files
    kept = first.stat().st_mtime_ns
    workers = psutil.Process(process.pid).children(recursive=True)
    for worker in workers:
        if "resource_tracker" not in " ".join(worker.cmdline()):
            os.kill(worker.pid, signal.SIGKILL)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, "the generation finished although a worker was killed"
    assert "rerun the same command to resume" in stderr
    assert not (out / "manifest.json").exists()
    rerun = run_cli("--config", str(config), "--out", str(out), "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert first.stat().st_mtime_ns == kept  # finished before the kill: kept, not redone
    assert checksums(out) == checksums(small_dataset)
    leftovers = [p.name for p in out.rglob("*") if TMP_SUFFIX in p.name]
    assert leftovers == []


def test_rerun_keeps_finished_shards(small_dataset, tmp_path):
    config = load_config(tiny_dict())
    out = tmp_path / "again"
    generate_dataset(config, out, progress=False)
    shard = out / "train" / "shard-00000.h5"
    before = shard.stat().st_mtime_ns
    (out / "val" / "shard-00000.h5").write_bytes(b"corrupt")  # fails its checksum
    written = []
    generate_dataset(config, out, progress=False, on_shard=written.append)
    assert shard.stat().st_mtime_ns == before
    assert [(p.split, p.index) for p in written] == [("val", 0)]
    assert checksums(out) == checksums(small_dataset)


def test_refuses_to_mix_configs(small_dataset, tmp_path):
    out = tmp_path / "mixed"
    generate_dataset(load_config(tiny_dict()), out, progress=False)
    other = load_config(tiny_dict(seed=8))
    with pytest.raises(DatasetError, match=r"another config \(config\.seed: 7 there, 8 here\)"):
        generate_dataset(other, out, progress=False)
    assert checksums(out) == checksums(small_dataset)  # nothing damaged
    generate_dataset(other, out, overwrite=True, progress=False)
    assert checksums(out) != checksums(small_dataset)


def test_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and not an lcag dataset"):
        generate_dataset(load_config(tiny_dict()), tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_float32_features_and_background_leaves(tmp_path):
    cfg = load_config(
        tiny_dict(
            output={"dtype": "float32", "events_per_shard": 500},
            kinematics={"background_mean": 1.5, "momentum_resolution": 0.01},
            topologies={"known": 2, "unknown": 1},
            events={"train": 100, "val": 10, "test": 10, "test_unknown": 10},
        )
    )
    generate_dataset(cfg, tmp_path / "bg", progress=False)
    with h5py.File(tmp_path / "bg" / "train" / "shard-00000.h5") as handle:
        table = TopologyTable.read(handle["topologies"])
        background = 0
        for group in (handle[k] for k in handle if k.startswith("L")):
            assert group["features"].dtype == np.float32
            order, lcag = group["order"][()], group["lcag"][()]
            extra = order < 0
            background += int(extra.sum())
            # a background leaf has LCAG 0 with every leaf
            assert (lcag[np.broadcast_to(extra[:, :, None], lcag.shape)] == 0).all()
            for e in range(len(order)):
                real = ~extra[e]
                tree = table.topology(group["topology"][e]).tree
                expected = permute(tree_to_lcag(tree), order[e][real])
                np.testing.assert_array_equal(lcag[e][np.ix_(real, real)], expected)
        assert background > 100


def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {**tiny_dict(), "colour": "red"})
    result = run_cli("--config", str(bad), "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "unknown key config.colour" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()
    unknown = tiny_dict()
    unknown.pop("random")
    unknown["decfile"] = {"mother": "B0", "stable": ["pi+", "Foo"]}
    result = run_cli(
        "--config", str(write_config(tmp_path / "u.yaml", unknown)), "--out", str(tmp_path / "y")
    )
    assert result.returncode == 2
    assert "Foo" in result.stderr
    assert "Traceback" not in result.stderr


def test_impossible_masses_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="below threshold"):
        load_config(tiny_dict(random={"root_mass": 2.0}))


def test_val_unknown_holds_topologies_of_no_other_split_and_leaves_the_rest_alone(
    tmp_path, small_dataset
):
    """A val_unknown split draws its own topologies after the others: the events of every other
    split are those of the config without it, and without it nothing says it could exist."""
    data = tiny_dict(
        topologies={"known": 4, "unknown": 2, "val_unknown": 2},
        events={"train": 120, "val": 20, "test": 20, "test_unknown": 30, "val_unknown": 15},
    )
    out = tmp_path / "with"
    generate_dataset(load_config(data), out, workers=1, progress=False)
    manifest, plain = read_manifest(out), read_manifest(small_dataset)
    assert manifest["splits"]["val_unknown"]["events"] == 2 * 15
    assert manifest["topologies"] == {**plain["topologies"], "val_unknown": 2}
    assert "val_unknown" not in plain["splits"]
    assert "val_unknown" not in plain["config"]["topologies"]
    assert not (small_dataset / "val_unknown").exists()

    def topologies_of(root: Path, split: str) -> dict[int, bytes]:
        """Topology id -> the events' leaves of that topology, in stored order."""
        found: dict[int, list] = {}
        for shard in read_manifest(root)["splits"][split]["shards"]:
            with h5py.File(root / shard["file"]) as handle:
                for group in (handle[k] for k in handle if k.startswith("L")):
                    for t, x in zip(group["topology"][()], group["features"][()], strict=True):
                        found.setdefault(int(t), []).append(x.tobytes())
        return {t: b"".join(xs) for t, xs in found.items()}

    val_unknown = topologies_of(out, "val_unknown")
    assert sorted(val_unknown) == [6, 7]  # after 4 known and 2 unknown
    with h5py.File(out / manifest["splits"]["val_unknown"]["shards"][0]["file"]) as handle:
        table = TopologyTable.read(handle["topologies"])
    keys = [table.topology(t).key() for t in range(len(table))]
    assert len(set(keys)) == len(keys)  # all distinct: val_unknown shares no topology
    assert not table.known[[6, 7]].any()
    for split in SPLITS:  # the other splits' events are those of the config without it
        assert topologies_of(out, split) == topologies_of(small_dataset, split)
