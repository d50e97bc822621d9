"""A checkpoint says what it is (``lcag info``), and exported files carry the same facts;
``lcag export`` and ``lcag info`` report bad input as one line with exit status 2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import lcag
from lcag.checkpoints import load_checkpoint
from lcag.cli import main
from lcag.data_gen.shards import read_manifest
from lcag.export.info import checkpoint_facts, config_checksum, read_facts

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Transformer checkpoint exported through the command, both formats."""
    out = tmp_path_factory.mktemp("info")
    files = {"onnx": out / "model.onnx", "torchscript": out / "model.pt"}
    for fmt, path in files.items():
        assert main(["export", "--ckpt", str(checkpoint), "--format", fmt, "--out", str(path)]) == 0
    return files


def one_line_error(capsys: pytest.CaptureFixture, *named: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lcag: error: ")
    for text in named:
        assert text in err[0]
    return err[0]


def test_checkpoint_records_data_validation_and_version(checkpoint, tiny_data):
    info = torch.load(checkpoint, weights_only=True)["lcag_info"]
    manifest = read_manifest(tiny_data)
    assert info["lcag_version"] == lcag.__version__
    data = info["data"]
    assert data["data_dir"] == str(tiny_data)
    assert data["config_sha256"] == config_checksum(manifest["config"])
    assert data["features"] == ["px", "py", "pz", "E"] == manifest["features"]
    assert data["units"] == manifest["units"]
    assert data["events"] == {s: v["events"] for s, v in manifest["splits"].items()}
    assert data["events_used"]["train"] == 1000  # max_train_events of the fixture
    validation = info["validation"]
    assert validation["epoch"] == 3
    assert 0 <= validation["metrics"]["val/perfect_full"] <= 1
    assert "val/perfect_L2" in validation["metrics"]
    assert validation["events"] == 100  # max_eval_events


def test_info_prints_what_the_checkpoint_is(checkpoint, tiny_data, capsys):
    assert main(["info", str(checkpoint)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # labels are padded to one width
    checksum = config_checksum(read_manifest(tiny_data)["config"])
    for text in (
        "lcag.models.transformer.LCAGTransformer", "parameters", "px, py, pz, E",
        "pair features: mass, angle", checksum, "train 4,800 (used 1,000)", "val/perfect_full",
        "perfect by leaves", "not part of exported graphs", f"lcag version {lcag.__version__}",
        "tree temperature 1 for every leaf count", "training topologies catalogued",
    ):  # fmt: skip
        assert text in out, text
    assert main(["info", "--json", str(checkpoint)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts == checkpoint_facts(load_checkpoint(checkpoint))


def test_info_of_a_checkpoint_without_lcag_info(checkpoint, tiny_data, tmp_path, capsys):
    old = torch.load(checkpoint, weights_only=True)
    del old["lcag_info"]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    assert main(["info", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "LCAGTransformer" in out
    assert str(tiny_data) in out  # the data module's hyper-parameters still name the data
    assert "not recorded in this checkpoint" in out
    assert "lcag version not recorded" in out


def test_exported_files_carry_the_checkpoints_facts(checkpoint, exported, capsys):
    facts = checkpoint_facts(load_checkpoint(checkpoint))
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    in_onnx = json.loads(meta["lcag_info"])
    assert meta["lcag_version"] == lcag.__version__
    assert "not included" in meta["node_evidence"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        extra = {"lcag_info.json": ""}
        torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    in_torchscript = json.loads(extra["lcag_info.json"])
    for stored, fmt in ((in_onnx, "onnx"), (in_torchscript, "torchscript")):
        export = stored.pop("export")
        assert stored == facts
        assert export["format"] == fmt
        assert export["checkpoint"] == checkpoint.name
    assert [i.name for i in session.get_inputs()] == ["x", "mask"]
    assert session.get_inputs()[0].shape == ["batch", "leaves", 4]
    assert session.get_outputs()[0].shape == ["batch", "leaves", "leaves", 5]
    for path in exported.values():  # lcag info reads exported files too
        assert read_facts(path)["model"] == facts["model"]
        assert main(["info", str(path)]) == 0
        assert "export" in capsys.readouterr().out


def test_export_and_info_errors_are_one_line(checkpoint, tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert main(["info", str(missing)]) == 2
    one_line_error(capsys, str(missing), "not found")
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(missing), "--format", "onnx", "--out", str(out)]) == 2
    one_line_error(capsys, str(missing), "not found")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    assert main(["export", "--ckpt", str(truncated), "--format", "onnx", "--out", str(out)]) == 2
    one_line_error(capsys, str(truncated), "truncated or corrupt")
    assert not out.exists()
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a protobuf at all")
    assert main(["info", str(foreign)]) == 2
    one_line_error(capsys, str(foreign), "ONNX")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(checkpoint), "--format", "tflite", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tflite'" in err
    assert "torchscript" in err
