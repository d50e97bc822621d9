"""Training and inference speed on CPU, and peak memory, for the tiny and paper-size models.

Run: ``python benchmarks/bench_train.py [--data DIR] [--steps 60]``

Uses the ``configs/fit/*.yaml`` model settings and real batches of ``configs/data/tiny.yaml``
(generated into a temporary directory unless ``--data`` is given). Each model runs in its own
process, so each peak RSS is that model's alone. Training: AdamW steps on batches of the
config's batch size (forward, masked loss, backward, step). Inference: forward pass and argmax
under ``torch.inference_mode`` on batches of 1,024 events.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["tiny_transformer", "tiny_nri", "paper_transformer", "paper_nri"]


def measure(config_name: str, data: Path, steps: int) -> dict:
    import torch

    from lcag.data import LCAGDataModule
    from lcag.models.base import LCAGModel
    from lcag.module import LCAGModule

    config = yaml.safe_load((ROOT / "configs" / "fit" / f"{config_name}.yaml").read_text())
    model_config = config["model"]["model"]
    model_config["init_args"]["n_classes"] = max(5, model_config["init_args"]["n_classes"])
    module = LCAGModule(
        LCAGModel.from_config(model_config), pair_features=config["model"].get("pair_features")
    )
    batch_size = config["data"]["batch_size"]
    dm = LCAGDataModule(
        str(data), batch_size=batch_size, eval_batch_size=1024, validate_unknown=False
    )
    dm.setup("fit")
    mean, std = dm.normalisation
    module.feature_mean.copy_(torch.tensor(mean))
    module.feature_std.copy_(torch.tensor(std))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == steps:
            break
    module.train()
    for batch in batches[:3]:  # warm-up
        module.loss(module(batch["x"], batch["mask"]), batch["target"]).backward()
    samples = 0
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad()
        loss = module.loss(module(batch["x"], batch["mask"]), batch["target"])
        loss.backward()
        optimizer.step()
        samples += len(batch["x"])
    train_rate = samples / (time.perf_counter() - start)

    module.eval()
    eval_batches = list(dm.val_dataloader())
    events = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in eval_batches:
            module(batch["x"], batch["mask"]).argmax(dim=1)
            events += len(batch["x"])
    infer_rate = events / (time.perf_counter() - start)
    return {
        "model": config_name,
        "parameters": sum(p.numel() for p in module.parameters()),
        "batch": batch_size,
        "train_samples_per_s": train_rate,
        "inference_events_per_s": infer_rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a dataset made from configs/data/tiny.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from lcag.data_gen.config import load_config
            from lcag.data_gen.writer import generate_dataset

            data = Path(tmp) / "tiny"
            generate_dataset(load_config(ROOT / "configs/data/tiny.yaml"), data, progress=False)
        import torch

        print(f"# CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, tiny data")
        print(
            f"{'model':<18} {'params':>9} {'batch':>5} {'train samples/s':>16} "
            f"{'inference events/s':>19} {'peak RSS':>9}"
        )
        for name in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, "--data", str(data),
                 "--steps", str(args.steps)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{r['model']:<18} {r['parameters']:>9,} {r['batch']:>5} "
                f"{r['train_samples_per_s']:>16,.0f} {r['inference_events_per_s']:>19,.0f} "
                f"{r['peak_rss_mb']:>8.0f}M"
            )


if __name__ == "__main__":
    main()
