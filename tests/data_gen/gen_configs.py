"""Small generation configs for the simulator tests."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "data" / "tiny.yaml"


def tiny_dict(**overrides: dict) -> dict:
    """configs/data/tiny.yaml, made smaller, with nested overrides merged in."""
    data = yaml.safe_load(TINY.read_text())
    data["topologies"] = {"known": 4, "unknown": 2}
    data["events"] = {"train": 120, "val": 20, "test": 20, "test_unknown": 30}
    data["output"]["events_per_shard"] = 200
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return copy.deepcopy(data)
