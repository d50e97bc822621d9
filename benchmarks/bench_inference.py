"""Reconstruction speed for an analysis: ``Reconstructor.reconstruct`` events/s on CPU.

Run: ``python benchmarks/bench_inference.py [--ckpt PATH] [--data DIR]``

Model forward pass, valid-tree decoding, tree building and scores, at batch 1 and batch 1,024,
on the test events of a ``configs/data/tiny.yaml`` dataset. Without ``--ckpt`` a tiny
Transformer (the ``tiny_transformer.yaml`` architecture) is trained for one epoch first: speed
does not depend on how well it is trained.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_one_epoch(data: Path, out: Path) -> Path:
    import lightning.pytorch as pl
    import yaml

    from lcag.data import LCAGDataModule
    from lcag.models.base import LCAGModel
    from lcag.module import LCAGModule

    config = yaml.safe_load((ROOT / "configs/fit/tiny_transformer.yaml").read_text())
    module = LCAGModule(
        LCAGModel.from_config(config["model"]["model"]),
        pair_features=config["model"]["pair_features"],
    )
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         use_distributed_sampler=False, default_root_dir=out)  # fmt: skip
    trainer.fit(module, LCAGDataModule(str(data), batch_size=64))
    path = out / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--data", type=Path, help="a dataset from configs/data/tiny.yaml")
    args = parser.parse_args()
    import torch

    from lcag import Reconstructor
    from lcag.data import LCAGDataset

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from lcag.data_gen.config import load_config
            from lcag.data_gen.writer import generate_dataset

            data = Path(tmp) / "tiny"
            generate_dataset(load_config(ROOT / "configs/data/tiny.yaml"), data, progress=False)
        ckpt = args.ckpt or train_one_epoch(data, Path(tmp))
        reco = Reconstructor.from_checkpoint(ckpt)
        dataset = LCAGDataset(data, "test")
        events = [e["x"] for e in dataset.__getitems__(range(len(dataset)))]
        events = (events * (4096 // len(events) + 1))[:4096]
        reco.reconstruct(events[:64])  # warm-up (decoding kernel)
        print(f"# CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"tiny test events (2..8 leaves), model + decoding + trees")  # fmt: skip
        chosen = reco.topology_log_odds
        for odds, label in ((chosen, "full method"), (-math.inf, "without the topology prior")):
            reco.topology_log_odds = odds
            for batch in (1, 1024):
                sample = events[:200] if batch == 1 else events
                start = time.perf_counter()
                reco.reconstruct(sample, batch_size=batch)
                rate = len(sample) / (time.perf_counter() - start)
                print(f"batch {batch:>5}: {rate:>9,.0f} events/s  ({label})")
            if chosen == -math.inf:
                break  # the checkpoint has no topology prior


if __name__ == "__main__":
    main()
