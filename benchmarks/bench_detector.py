"""Belle II-like B0 events: what the detector features and the LCAS targets change.

Run: ``python benchmarks/bench_detector.py [--minutes 2] [--out runs/bench_detector]``

1. Data: ``configs/data/belle2_b0.yaml`` (Belle II decay table, the per-species detector
   response, beam background, LCAS targets), scaled down: 40 known and 20 unseen topologies
   of at most 8 leaves (before background), 500 training, 50 validation and 100 test events
   per topology.
2. Four runs of the tiny Transformer (pair features mass and angle, no node evidence, so the
   LCAG and LCAS runs compare like for like), each trained for ``--minutes`` of wall-clock
   time, keeping the best ``val/score``: 4-momenta only or all 11 features, LCAG or LCAS
   targets.
3. Test: perfect-tree rate (argmax and valid-tree decoding) on known and unseen topologies,
   all events (background leaves included; a tree is perfect when every pair, background
   pairs too, is right).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
MOMENTA = ["px", "py", "pz", "E"]


def make_data(out: Path) -> Path:
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset

    data = yaml.safe_load((ROOT / "configs" / "data" / "belle2_b0.yaml").read_text())
    data["decfile"]["max_leaves"] = 8
    data["topologies"] = {"known": 40, "unknown": 20}
    data["events"] = {"train": 500, "val": 50, "test": 100, "test_unknown": 100}
    path = out / "data"
    generate_dataset(load_config(data), path, workers=2, progress=False)
    return path


def run(data: Path, out: Path, minutes: float, features: list[str] | None, target: str) -> dict:
    import lightning.pytorch as pl
    from bench_accuracy import time_budget

    from lcag.data import LCAGDataModule
    from lcag.models.base import LCAGModel
    from lcag.module import LCAGModule

    name = f"{target}_{'momenta' if features else 'all'}"
    config = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_transformer.yaml").read_text())
    dm = LCAGDataModule(
        str(data), batch_size=64, eval_batch_size=256, features=features, target=target
    )
    model_config = config["model"]["model"]
    model_config["init_args"]["n_classes"] = dm.n_classes
    model_config["init_args"]["n_features"] = len(dm.features)
    pl.seed_everything(0)
    module = LCAGModule(
        LCAGModel.from_config(model_config),
        lr=config["model"]["lr"],
        pair_features=config["model"]["pair_features"],
        scheduler="none",
        node_evidence="none",
        target=target,
        decode_background=True,
    )
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=out / name, monitor="val/score", mode="max", filename="best"
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1000,
        callbacks=[checkpoint, time_budget(minutes)],
        logger=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    start = time.time()
    trainer.fit(module, dm)
    best = LCAGModule.from_checkpoint(checkpoint.best_model_path)
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(best, dm)
    result = {"run": name, "epochs": trainer.current_epoch, "seconds": time.time() - start}
    for subset in ("test", "test_unseen"):
        for method in ("perfect_argmax", "perfect_decoded"):
            sizes = best.results[subset]["by_size"][method]
            hits = sum(rate * n for rate, n in sizes.values())
            result[f"{subset}/{method}"] = hits / max(sum(n for _, n in sizes.values()), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training time per run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_detector")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not (data / "manifest.json").is_file():
        data = make_data(args.out)
    results = [
        run(data, args.out, args.minutes, features, target)
        for target in ("lcag", "lcas")
        for features in (MOMENTA, None)
    ]
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"\n{'run':<14} {'epochs':>6} {'known argmax':>12} {'known valid':>11} "
        f"{'unseen argmax':>13} {'unseen valid':>12}"
    )
    for r in results:
        print(
            f"{r['run']:<14} {r['epochs']:>6} {r['test/perfect_argmax']:>12.1%} "
            f"{r['test/perfect_decoded']:>11.1%} {r['test_unseen/perfect_argmax']:>13.1%} "
            f"{r['test_unseen/perfect_decoded']:>12.1%}"
        )


if __name__ == "__main__":
    main()
