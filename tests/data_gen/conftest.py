"""Fixtures for the simulator: one small generated dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from gen_configs import tiny_dict

from lcag.data_gen.config import load_config


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset generated in this process with 1 worker."""
    from lcag.data_gen.writer import generate_dataset

    out = tmp_path_factory.mktemp("small") / "data"
    generate_dataset(load_config(tiny_dict()), out, workers=1, progress=False)
    return out
