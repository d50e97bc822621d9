"""Tree probabilities: the report's full method, its calibration figure and the ECE math."""

from __future__ import annotations

import numpy as np
import pytest

from lcag.evaluate import calibration, evaluate


def test_ece_of_known_bins():
    # bin [0.1, 0.2): probability 0.15, 1 of 4 right; bin [0.9, 1.0]: 0.95, 4 of 4 right
    probability = np.array([0.15] * 4 + [0.95] * 4)
    perfect = np.array([1, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    result = calibration(probability, perfect)
    assert [b["events"] for b in result["bins"]] == [4, 4]
    assert result["ece"] == pytest.approx(0.5 * abs(0.25 - 0.15) + 0.5 * abs(1.0 - 0.95))


def test_unknown_probabilities_are_left_out():
    result = calibration(np.array([np.nan, 1.0]), np.array([False, True]))
    assert result["events"] == 1
    assert result["ece"] == pytest.approx(0.0)


def test_report_holds_the_full_method_and_its_reliability(checkpoint, tiny_data, tmp_path):
    report = evaluate(checkpoint, tiny_data, ["test"], tmp_path, max_events=120)
    known = report["splits"]["test"]
    assert set(known["overall"]) == {"argmax", "decoded", "full", "baseline"}
    assert known["calibration"]["events"] == 120
    assert 0.0 <= known["calibration"]["ece"] <= 1.0
    assert (tmp_path / "reliability.png").stat().st_size > 0
    assert "expected calibration error" in (tmp_path / "report.md").read_text()
