"""Belle II-like B0 events: what detector features, LCAS targets and background change,
beside the decay-table physics baseline on the same events.

Run: ``python benchmarks/bench_accuracy.py --data-config belle2_b0 [--minutes 10 --budget cpu]``
(the table of the README) or ``python benchmarks/bench_detector.py [--minutes 2]``.

1. Data: ``configs/data/belle2_b0.yaml`` (Belle II decay table, the per-species detector
   response, LCAS targets), scaled down: 40 known and 20 unseen topologies of at most 8
   leaves before background, 500 training, 50 validation and 100 test events per topology;
   twice, with the config's beam background (about 1.2 leaves per event) and without (the
   same seed, the same topologies).
2. Eight runs of the tiny Transformer (pair features mass and angle, no node evidence, so
   LCAG and LCAS compare like for like; a particle-type head at weight 0.3), each trained for
   ``--minutes`` of wall-clock or CPU time, keeping the best ``val/score``: LCAG or LCAS
   targets, 4-momenta only or all 11 features, with or without background (decoding with
   ``decode_background`` where there is background).
3. Test (``lcag-evaluate``'s report): perfect-tree rate with argmax and with valid-tree
   decoding, known and unseen topologies, every event (a tree is perfect when every pair,
   background pairs too, is right); the physics baseline (``lcag.evaluate.baseline_for``:
   invariant-mass likelihood with the decay table's PDG masses and widths, the detector's
   per-species resolutions, the tree's leaves chosen by the B0's 4-momentum when there is
   background; tuned on the validation split) on the same events, scored on their LCAG
   trees; the type head's accuracy per species.
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
BASELINE_MAX_LEAVES = 14  # 8 leaves of the tree and up to 6 of background


def make_data(out: Path, background: bool, config: str = "belle2_b0") -> Path:
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset

    data = yaml.safe_load((ROOT / "configs" / "data" / f"{config}.yaml").read_text())
    data["decfile"]["max_leaves"] = 8
    data["topologies"] = {"known": 40, "unknown": 20}
    data["events"] = {"train": 500, "val": 50, "test": 100, "test_unknown": 100}
    if not background:
        data["detector"]["background"] = {"photons": 0.0, "tracks": 0.0}
    path = out / ("data" if background else "data_no_background")
    if not (path / "manifest.json").is_file():
        generate_dataset(load_config(data), path, workers=2, progress=False)
    return path


def run(
    data: Path,
    out: Path,
    minutes: float,
    features: list[str] | None,
    target: str,
    background: bool,
    budget: str = "wall",
) -> dict:
    import lightning.pytorch as pl
    from bench_accuracy import time_budget

    from lcag.data import LCAGDataModule
    from lcag.evaluate import evaluate
    from lcag.models.base import LCAGModel
    from lcag.module import LCAGModule

    name = f"{target}_{'momenta' if features else 'all'}_{'bg' if background else 'nobg'}"
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
        decode_background=background,
        type_loss_weight=0.3,
    )
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=out / name, monitor="val/score", mode="max", filename="best"
    )
    clock = time_budget(minutes, budget)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1000,
        callbacks=[checkpoint, clock],
        logger=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    start = time.time()
    trainer.fit(module, dm)
    trained = time.time() - start
    report = evaluate(
        checkpoint.best_model_path, data, ["test", "test_unknown"], out / name,
        baseline_max_leaves=BASELINE_MAX_LEAVES,
    )  # fmt: skip
    result = {"run": name, "epochs": trainer.current_epoch, "seconds": trained, "budget": budget}
    for subset, split in (("test", "test"), ("test_unseen", "test_unknown")):
        info = report["splits"][split]
        for method in ("argmax", "decoded", "baseline"):
            result[f"{subset}/{method}"] = info["overall"][method]["rate"]
        result[f"{subset}/baseline_events"] = info["overall"]["baseline"]["events"]
        result[f"{subset}/events"] = info["events"]
        if "species" in info:
            result[f"{subset}/species"] = info["species"]
    return result


def grid(out: Path, minutes: float, budget: str = "wall", config: str = "belle2_b0") -> list[dict]:
    """Every run of the module docstring; writes ``results.json`` and prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    data = {bg: make_data(out, bg, config) for bg in (True, False)}
    results = []
    for background in (False, True):
        for target in ("lcag", "lcas"):
            for features in (MOMENTA, None):
                results.append(
                    run(data[background], out, minutes, features, target, background, budget)
                )
                (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print_table(results, minutes, budget)
    return results


def print_table(results: list[dict], minutes: float, budget: str) -> None:
    print(f"\n# scaled belle2_b0, {minutes:g} min of {budget} time training each")
    print(
        f"{'run':<20} {'epochs':>6} {'known argmax':>12} {'known valid':>11} {'known base':>10} "
        f"{'unseen argmax':>13} {'unseen valid':>12} {'unseen base':>11} {'types':>6}"
    )
    for r in results:
        types = r.get("test/species", {}).get("overall", float("nan"))
        print(
            f"{r['run']:<20} {r['epochs']:>6} {r['test/argmax']:>12.1%} "
            f"{r['test/decoded']:>11.1%} {r['test/baseline']:>10.1%} "
            f"{r['test_unseen/argmax']:>13.1%} {r['test_unseen/decoded']:>12.1%} "
            f"{r['test_unseen/baseline']:>11.1%} {types:>6.1%}"
        )
    for r in results:
        per = r.get("test/species", {}).get("per_species", {})
        cells = ", ".join(f"{name} {v['accuracy']:.1%}" for name, v in per.items())
        print(f"{r['run']:<20} type accuracy per species (known): {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training time per run")
    parser.add_argument("--budget", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_detector")
    args = parser.parse_args()
    grid(args.out, args.minutes, args.budget)


if __name__ == "__main__":
    main()
