"""lcag-evaluate: the report, its plots, and the baseline beside the model."""

from __future__ import annotations

import json
import subprocess
import sys

from lcag.evaluate import evaluate


def test_report_and_plots(checkpoint, tiny_data, tmp_path):
    report = evaluate(checkpoint, tiny_data, ["test", "test_unknown"], tmp_path, max_events=150)
    for name in ("report.json", "report.md", "perfect_vs_leaves.png", "perfect_vs_depth.png",
                 "confusion.png", "examples.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    assert set(report["splits"]) == {"test", "test_unknown"}
    known = report["splits"]["test"]
    assert known["events"] == 150
    assert known["overall"]["baseline"]["rate"] >= 0.999  # exact masses: kinematics suffice
    assert 0 <= known["overall"]["argmax"]["rate"] <= known["overall"]["decoded"]["rate"] + 0.2
    assert sum(v["events"] for v in known["leaves"]["decoded"].values()) == 150
    assert json.loads((tmp_path / "report.json").read_text())["splits"]["test"]["events"] == 150
    text = (tmp_path / "report.md").read_text()
    assert "unseen topologies" in text
    assert "| all |" in text


def test_command_line_errors_are_short(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lcag.evaluate", "--ckpt", str(tmp_path / "none.ckpt"),
         "--data", str(tmp_path), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr
    assert "Traceback" not in result.stderr
