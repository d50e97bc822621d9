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


@pytest.fixture(scope="session")
def checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Transformer trained for 3 epochs on tiny data, saved as a checkpoint."""
    import lightning.pytorch as pl

    from lcag.data import LCAGDataModule
    from lcag.models import LCAGTransformer
    from lcag.module import LCAGModule

    pl.seed_everything(0)
    dm = LCAGDataModule(str(tiny_data), batch_size=64, max_train_events=1000, max_eval_events=100)
    module = LCAGModule(
        LCAGTransformer(n_classes=5, dim=32, depth=2, heads=4, n_pair_features=2),
        pair_features=["mass", "angle"],
        lr=3e-3,
    )
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path_factory.mktemp("ckpt"),
    )  # fmt: skip
    trainer.fit(module, dm)
    path = tmp_path_factory.mktemp("model") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path
