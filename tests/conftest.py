"""Shared test settings: hypothesis profiles (``HYPOTHESIS_PROFILE=thorough`` for more), and
one small generated dataset for the data and training tests."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,  # the first call of a compiled kernel includes its compilation
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/data/tiny.yaml, generated once per test session (one worker)."""
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset

    out = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(load_config(ROOT / "configs" / "data" / "tiny.yaml"), out, progress=False)
    return out
