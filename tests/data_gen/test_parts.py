"""lcag-generate in parts: separate processes, a killed part, a missing part, a race for the
manifest and mpiexec, each against the bytes of one process.

Every process here starts TensorFlow (~5 s on 2 cores), and each distinct decay multiplicity
costs a phasespace trace and a weight scan (~1.5 s per process): the config has two-body
decays only, so a part costs little more than its start-up. (Weight maxima estimated afresh
in another process are checked by test_writer's resume test.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from gen_configs import tiny_dict

from lcag.data_gen.cli import main
from lcag.data_gen.config import load_config
from lcag.data_gen.parts import (
    Part,
    parse_part,
    part_from_environment,
    publish_exclusive,
    shards_of_part,
)
from lcag.data_gen.writer import generate_dataset, plan_shards
from lcag.errors import ConfigError
from lcag.files import TMP_SUFFIX

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
TIMEOUT = 300  # hang guard; each process takes seconds
# ``python -m lcag.data_gen.cli`` whose shards after train shard 0 are written and checksummed
# but never renamed into place: the process waits there until it is killed, so the kill lands
# half-way however fast the machine is (the trick of gen_configs.write_shard_then_hold, in
# this process rather than in a worker).
HELD_PART = """
import runpy, sys
sys.path.insert(0, {here!r})
import gen_configs
from lcag.data_gen import writer
original = writer.write_shard
def held(cfg, table, ceilings, out, plan):
    if (plan.split, plan.index) != gen_configs.PUBLISHED_FIRST:
        writer.os = gen_configs._RenameNever()
    original(cfg, table, ceilings, out, plan)
writer.write_shard = held
runpy.run_module("lcag.data_gen.cli", run_name="__main__", alter_sys=True)
"""


def small() -> dict:
    return tiny_dict(random={"max_children": 2})


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Shards, checksum files and manifest: what must not depend on how it was generated."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.suffix in (".h5", ".sha256") or p.name == "manifest.json"
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lcag.data_gen.cli", *args, "--no-progress"]


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(process: subprocess.Popen) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset written by one process (this one, one worker)."""
    out = tmp_path_factory.mktemp("one") / "data"
    generate_dataset(load_config(small()), out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def parts_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3 parts in separate processes; part 0 is killed after its first shard and rerun."""
    tmp = tmp_path_factory.mktemp("parts")
    config = tmp / "small.yaml"
    config.write_text(yaml.safe_dump(small()))
    out = tmp / "data"
    common = ("--config", str(config), "--out", str(out))
    # 6 shards: train 0-2, val 0, test 0, test_unknown 0; part 0 of 3 is train 0 and val 0
    held = start(
        [
            sys.executable,
            "-c",
            HELD_PART.format(here=str(HERE)),
            *common,
            "--part",
            "0/3",
            "--no-progress",
        ]
    )
    others = [start(cli(*common, "--part", f"{i}/3")) for i in (1, 2)]
    processes = [held, *others]
    try:
        first, waiting = out / "train" / "shard-00000.h5", out / "val" / "shard-00000.h5"
        deadline = time.monotonic() + TIMEOUT
        while not (first.exists() and waiting.with_suffix(".sha256").exists()):
            assert held.poll() is None, held.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "part 0 did not reach its second shard"
            time.sleep(0.05)
        kept = first.stat().st_mtime_ns
        os.kill(held.pid, signal.SIGKILL)
        held.communicate(timeout=TIMEOUT)
        outputs = [finish(p)[0] for p in others]
        record = {
            "out": out,
            "killed_rc": held.returncode,
            "after_kill": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
            "manifest_before_rerun": (out / "manifest.json").exists(),
            "others": outputs,
        }
        rerun = start(cli(*common, "--part", "0/3"))
        processes.append(rerun)
        record["rerun"] = finish(rerun)[0]
        record["kept"] = first.stat().st_mtime_ns == kept
        return record
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_three_parts_give_the_bytes_of_one_process(parts_run, reference):
    out = parts_run["out"]
    assert dataset_bytes(out) == dataset_bytes(reference)
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        f"part-{i}-of-3.json" for i in range(3)
    ]
    assert [p.name for p in out.rglob(f"*{TMP_SUFFIX}*")] == []
    assert "every part complete: this part wrote" in parts_run["rerun"]


def test_a_killed_part_resumes_keeping_its_finished_shards(parts_run):
    assert parts_run["killed_rc"] == -signal.SIGKILL
    after = parts_run["after_kill"]
    # the killed part: train 0 published, val 0 written but never renamed, no done-marker
    assert "train/shard-00000.h5" in after
    assert "val/shard-00000.h5" not in after
    assert any(name.startswith(f"val/shard-00000.h5{TMP_SUFFIX}") for name in after)
    assert "parts/part-0-of-3.json" not in after
    assert not parts_run["manifest_before_rerun"]  # parts 1 and 2 finished, part 0 not
    assert all("parts complete: the last part to finish writes" in o for o in parts_run["others"])
    assert parts_run["kept"]  # finished before the kill: kept, not redone
    assert "part 0/3 (from --part): 2 shards, 280 events complete" in parts_run["rerun"]


def test_finalize_writes_the_manifest_of_one_process(parts_run, reference, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(parts_run["out"], copy)
    (copy / "manifest.json").unlink()
    assert main(["--finalize", str(copy)]) == 0
    assert "test_unknown" in capsys.readouterr().out  # the summary table
    assert dataset_bytes(copy) == dataset_bytes(reference)


def test_finalize_names_what_is_missing_and_writes_no_manifest(parts_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(parts_run["out"], copy)
    (copy / "manifest.json").unlink()
    (copy / "train" / "shard-00001.h5").unlink()  # part 1 never finished
    (copy / "parts" / "part-1-of-3.json").unlink()
    damaged = copy / "test_unknown" / "shard-00000.h5"  # part 2's shard, corrupted later
    damaged.write_bytes(damaged.read_bytes()[:-10])
    assert main(["--finalize", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert err.startswith(f"lcag-generate: error: {copy}: 2 of 6 shards not complete")
    assert "train/shard-00001.h5 (missing)" in err
    assert "test_unknown/shard-00000.h5 (checksum differs)" in err
    assert "parts 1/3 (no done-marker), 2/3 are not complete" in err
    assert not (copy / "manifest.json").exists()


def test_parts_racing_for_the_manifest_leave_one(parts_run, reference, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(parts_run["out"], copy)
    (copy / "manifest.json").unlink()
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small()))
    # both parts are complete: each verifies its shards, finds every marker and races to link
    racers = [
        start(cli("--config", str(config), "--out", str(copy), "--part", f"{i}/3")) for i in (1, 2)
    ]
    outputs = [finish(p)[0] for p in racers]
    assert sorted("this part wrote" in o for o in outputs) == [False, True]
    assert sum("another part wrote" in o for o in outputs) == 1
    assert dataset_bytes(copy) == dataset_bytes(reference)
    assert [p.name for p in copy.rglob(f"*{TMP_SUFFIX}*")] == []
    # the link itself, raced by threads released at the same instant
    target, barrier, won = tmp_path / "claimed.json", threading.Barrier(8), []

    def claim(i: int) -> None:
        barrier.wait()
        won.append((i, publish_exclusive(target, f"{i}\n")))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, ok in won if ok]
    assert len(winners) == 1
    assert target.read_text() == f"{winners[0]}\n"
    assert sorted(p.name for p in tmp_path.glob("claimed*")) == ["claimed.json"]


def test_mpiexec_ranks_give_the_bytes_of_one_process(reference, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small()))
    out = tmp_path / "mpi"
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [str(BIN / "mpiexec"), "--oversubscribe", "-n", "2", str(BIN / "lcag-generate")]
    process = start(
        [*command, "--config", str(config), "--out", str(out), "--no-progress"],
        env=env,
    )
    stdout, _ = finish(process)
    assert "part 0/2 (from MPI rank)" in stdout
    assert "part 1/2 (from MPI rank)" in stdout
    assert stdout.count("this part wrote") == 1
    assert dataset_bytes(out) == dataset_bytes(reference)


def test_parts_split_the_shard_list_round_robin():
    plans = plan_shards(load_config(small()))
    parts = [shards_of_part(plans, Part(i, 4)) for i in range(4)]
    assert [plans.index(p) for p in parts[1]] == list(range(1, len(plans), 4))
    assert sorted((p for part in parts for p in part), key=plans.index) == plans
    assert shards_of_part(plans, Part(0, 1)) == plans


def test_part_from_slurm_arrays_and_mpi_launchers():
    before = "mpi4py" in sys.modules
    assert part_from_environment({}) is None
    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert part_from_environment({**array, "SLURM_ARRAY_TASK_MIN": "4"}) == Part(
        1, 3, "SLURM_ARRAY_TASK_ID"
    )
    stepped = {
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "7",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert part_from_environment({**array, "SLURM_ARRAY_TASK_COUNT": "4", **stepped}).index == 2
    assert (
        part_from_environment({**array, "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "5"})
        is None
    )
    listed = {**array, "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9"}  # --array=1,5,9
    with pytest.raises(ConfigError, match=r"one range MIN-MAX\[:STEP\]"):
        part_from_environment(listed)
    assert ("mpi4py" in sys.modules) == before  # no MPI launcher: no mpi4py import
    assert parse_part(" 2/8 ") == Part(2, 8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--part", "3/2"], "--part '3/2': part i must be 0..1 (counted from 0) for N = 2"),
        (["--part", "0/0"], "--part '0/0': the number of parts N must be at least 1"),
        (["--part", "x"], "--part 'x': expected i/N"),
        (["--part", "1/2", "--overwrite"], "--overwrite with part 1/2 (from --part)"),
    ],
)
def test_bad_part_options_are_one_line_errors(tmp_path, capsys, args, message):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small()))
    assert main(["--config", str(config), "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lcag-generate: error: --")
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_conflicting_options_and_foreign_directories_are_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    cases = [
        (["--finalize", str(tmp_path), "--out", "y"], "--finalize DIR takes no --out"),
        (["--finalize", str(tmp_path), "--part", "0/2"], "--finalize DIR takes no --part"),
        (["--finalize", str(tmp_path)], "not an lcag dataset (no generation.json)"),
        (["--finalize", str(tmp_path / "absent")], "no such directory to finalize"),
        (["--from-paper-npy", str(tmp_path), "--out", "y", "--part", "0/2"], "--part splits"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1, err
    assert (tmp_path / "notes.txt").read_text() == "mine"
