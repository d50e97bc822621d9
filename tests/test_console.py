"""Every console command reports bad input as one line on stderr with exit status 2.

Each case runs the installed command in a subprocess, as a user would: a missing dataset, a
truncated or damaged shard, a truncated checkpoint, a bad config. ``LCAG_TRACEBACK=1`` brings
the traceback back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lcag
from lcag.checkpoints import load_checkpoint
from lcag.errors import CheckpointError, DatasetError, InvalidInputError
from lcag.module import LCAGModule

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIT_CONFIG = ROOT / "configs" / "fit" / "tiny_transformer.yaml"

pytestmark = pytest.mark.filterwarnings("ignore:You are using a custom batch sampler:UserWarning")


def run(command: str, *args: str | Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LCAG_TRACEBACK": "", **env}
    return subprocess.run(
        [str(BIN / command), *map(str, args)],
        capture_output=True, text=True, timeout=600, env=environment,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, prog: str, *named: str) -> None:
    """Exit status 2, no traceback, and stderr is the single line ``<prog>: error: ...``."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"{prog}: error: ")
    for text in named:
        assert text in lines[0]


@pytest.fixture(scope="module")
def truncated_checkpoint(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = checkpoint.read_bytes()
    path = tmp_path_factory.mktemp("bad") / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    return path


def copy_of_data(tiny_data: Path, factory: pytest.TempPathFactory, name: str) -> Path:
    out = factory.mktemp(name) / "data"
    shutil.copytree(tiny_data, out)
    return out


@pytest.fixture(scope="module")
def damaged_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny data with one byte of the validation shard changed."""
    out = copy_of_data(tiny_data, tmp_path_factory, "damaged")
    shard = out / "val" / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def truncated_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny data with the first training shard cut to 1,000 bytes."""
    out = copy_of_data(tiny_data, tmp_path_factory, "truncated")
    shard = out / "train" / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:1000])
    return out


# ------------------------------------------------------------------------------- lcag
@pytest.mark.slow
def test_fit_on_a_missing_dataset(tmp_path):
    result = run("lcag", "fit", "--config", FIT_CONFIG, "--data.data_dir", tmp_path / "nowhere")
    assert_one_line_error(result, "lcag", str(tmp_path / "nowhere"), "no manifest")


@pytest.mark.slow
def test_fit_on_a_truncated_shard(truncated_data):
    result = run("lcag", "fit", "--config", FIT_CONFIG, "--data.data_dir", truncated_data)
    assert_one_line_error(result, "lcag", str(truncated_data / "train" / "shard-00000.h5"))


@pytest.mark.slow
def test_fit_on_a_damaged_shard(damaged_data):
    result = run("lcag", "fit", "--config", FIT_CONFIG, "--data.data_dir", damaged_data)
    assert_one_line_error(
        result, "lcag", str(damaged_data / "val" / "shard-00000.h5"), "checksum differs"
    )


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_a_truncated_checkpoint(subcommand, truncated_checkpoint, tiny_data):
    result = run(
        "lcag", subcommand, "--config", FIT_CONFIG, "--data.data_dir", tiny_data,
        "--ckpt_path", truncated_checkpoint,
    )  # fmt: skip
    assert_one_line_error(result, "lcag", str(truncated_checkpoint), "truncated or corrupt")


@pytest.mark.slow
def test_the_traceback_on_request(tmp_path):
    result = run(
        "lcag", "fit", "--config", FIT_CONFIG, "--data.data_dir", tmp_path, LCAG_TRACEBACK="1"
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "DatasetError" in result.stderr


# ------------------------------------------------------------------------ lcag-evaluate
def test_evaluate_a_truncated_checkpoint(truncated_checkpoint, tiny_data, tmp_path):
    result = run(
        "lcag-evaluate", "--ckpt", truncated_checkpoint, "--data", tiny_data, "--out", tmp_path
    )
    assert_one_line_error(result, "lcag-evaluate", str(truncated_checkpoint))


def test_evaluate_a_damaged_shard(checkpoint, damaged_data, tmp_path):
    result = run(
        "lcag-evaluate", "--ckpt", checkpoint, "--data", damaged_data, "--out", tmp_path,
        "--split", "val",
    )  # fmt: skip
    assert_one_line_error(result, "lcag-evaluate", "val/shard-00000.h5", "checksum differs")


# ------------------------------------------------------------------------ lcag-generate
def test_generate_from_a_missing_config(tmp_path):
    result = run("lcag-generate", "--config", tmp_path / "none.yaml", "--out", tmp_path / "d")
    assert_one_line_error(result, "lcag-generate", str(tmp_path / "none.yaml"))


def test_generate_with_a_bad_worker_count(tmp_path):
    result = run(
        "lcag-generate", "--config", ROOT / "configs/data/tiny.yaml", "--out", tmp_path,
        "--workers", "0",
    )  # fmt: skip
    assert_one_line_error(result, "lcag-generate", "--workers", "0")


# ----------------------------------------------------------------------------- lcag-hpo
@pytest.mark.slow
def test_hpo_on_a_damaged_shard(damaged_data, tmp_path):
    result = run(
        "lcag-hpo", "--config", ROOT / "configs/hpo/tiny.yaml", "--data_dir", damaged_data,
        "--out_dir", tmp_path / "hpo",
    )  # fmt: skip
    assert_one_line_error(result, "lcag-hpo", "val/shard-00000.h5", "checksum differs")


# ----------------------------------------------------------------------------- the API
def test_a_corrupt_checkpoint_is_an_lcag_error(truncated_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        lcag.Reconstructor.from_checkpoint(truncated_checkpoint)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        LCAGModule.from_checkpoint(truncated_checkpoint)
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=str(junk)):
        load_checkpoint(junk)


def test_a_damaged_shard_is_an_lcag_error(damaged_data):
    from lcag.data import LCAGDataModule, LCAGDataset

    LCAGDataset(damaged_data, "train").verify()  # untouched shards pass
    with pytest.raises(DatasetError, match="checksum differs"):
        LCAGDataset(damaged_data, "val").verify()
    with pytest.raises(DatasetError, match="checksum differs"):
        LCAGDataModule(str(damaged_data))


def physical_event(n: int, seed: int) -> np.ndarray:
    """``(n, 4)`` leaves ``(px, py, pz, E)`` of pions with random momenta."""
    p = np.random.default_rng(seed).normal(scale=2.0, size=(n, 3))
    return np.column_stack([p, np.sqrt((p**2).sum(1) + 0.1396**2)])


def test_energies_below_momentum_are_refused(checkpoint):
    from lcag.baselines import CombinatorialBaseline

    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    events = [physical_event(4, seed) for seed in range(3)]
    assert len(reco.reconstruct(events)) == 3
    swapped = [e.copy() for e in events]
    swapped[2] = swapped[2][:, [3, 0, 1, 2]]  # (E, px, py, pz): the last column is pz < |p|
    with pytest.raises(InvalidInputError, match=r"event 2, leaf 0 .*\(px, py, pz, E\)"):
        reco.reconstruct(swapped)
    with pytest.raises(InvalidInputError, match=r"event 2, leaf 0"):
        CombinatorialBaseline(masses=[1.0]).reconstruct(swapped)


def test_massless_leaves_within_rounding_pass(checkpoint):
    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    event = physical_event(5, 7).astype(np.float32)
    event[:, 3] = np.sqrt((event[:, :3].astype(np.float64) ** 2).sum(1))  # photons
    event[:, 3] = np.nextafter(event[:, 3], np.float32(0))  # one float32 ulp below |p|
    assert len(reco.reconstruct([event])) == 1


def test_help_names_every_subcommand():
    result = run("lcag", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("fit", "validate", "test", "predict", "lcag export", "lcag info"):
        assert name in result.stdout
