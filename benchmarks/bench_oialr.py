"""OIALR beside full-rank training: the tiny Transformer on bench_accuracy's data, same budget.

Run: ``python benchmarks/bench_oialr.py [--minutes 4] [--budget cpu] [--out runs/bench_oialr]``

1. Data: :func:`bench_accuracy.make_data` (``--data-config paper`` or ``realistic``, scaled to
   50,000 training events); a finished ``runs/bench_<config>/data`` (or ``--data``) is copied
   instead of generated.
2. The tiny Transformer (``configs/fit/tiny_transformer.yaml``, 8 classes) trains twice with
   :func:`bench_accuracy.train_and_test`, for the same ``--minutes`` of CPU (``--budget cpu``)
   or wall-clock time: at full rank, and with :class:`lcag.training.oialr.OIALR`
   (``--warmup-steps``, ``--frequency``, stability 0.99, cutoff 0.1). Each keeps its
   checkpoint with the best validation rate, which is what is tested.
3. Printed: trained parameters of the network and each eligible layer's rank in the tested
   checkpoint (and at the end of training), training samples/s (training batches only, per
   second of wall and of CPU time), inference events/s (the network's forward pass on the
   test events, batches of 512, one thread), and the perfect-tree rates (known and unseen
   topologies, <= 6 and <= 10 leaves) of both runs side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import METHODS, PAPER, ROOT, make_data, train_and_test

NAME = "tiny_transformer"


class Throughput(pl.Callback):
    """Training samples per second of the training batches alone (no validation)."""

    def __init__(self) -> None:
        self.samples = 0
        self.wall = self.cpu = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, *a: Any):
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           *a: Any) -> None:  # fmt: skip
        wall, cpu = self._start
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.samples += len(batch["target"])
        self.steps += 1


def inference_rate(module: Any, data: Path, repeats: int = 3) -> float:
    """Test events per second through the network (pair features and normalisation
    included), the best of ``repeats`` passes over both test splits."""
    from lcag.data import LCAGDataModule

    dm = LCAGDataModule(str(data), batch_size=64, eval_batch_size=512)
    dm.setup("test")
    batches = [b for loader in dm.test_dataloader() for b in loader]
    events = sum(len(b["target"]) for b in batches)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                module(b["x"], b["mask"])
            best = min(best, time.perf_counter() - start)
    return events / best


def layer_table(module: Any, oialr: Any) -> list[tuple[str, str, int, int]]:
    """``(layer, out x in, rank, full rank)`` of every eligible layer of ``module``."""
    return oialr.summary(module)


def run(args: argparse.Namespace, data: Path) -> dict[str, dict[str, Any]]:
    from lcag.module import LCAGModule
    from lcag.training.oialr import OIALR, trained_parameters

    torch.set_num_threads(1)
    runs: dict[str, dict[str, Any]] = {}
    for variant in ("full rank", "OIALR"):
        out = args.out / ("full" if variant == "full rank" else "oialr")
        throughput = Throughput()
        oialr = OIALR(warmup_steps=args.warmup_steps, frequency=args.frequency, verbose=True)
        # OIALR's checks run inside the timed batches (the throughput callback's end is last)
        callbacks: list[pl.Callback] = [oialr] if variant == "OIALR" else []
        callbacks.append(throughput)
        result = train_and_test(NAME, data, out, args.minutes, "subset_head", 0.0, args.budget,
                                extra_callbacks=callbacks)  # fmt: skip
        path = out / NAME / "best.ckpt"
        best = LCAGModule.from_checkpoint(path)
        step = torch.load(path, map_location="cpu", weights_only=True)["global_step"]
        runs[variant] = {
            "result": result,
            "best_step": int(step),
            "steps": throughput.steps,
            "samples_per_s": throughput.samples / max(throughput.wall, 1e-9),
            "samples_per_cpu_s": throughput.samples / max(throughput.cpu, 1e-9),
            "trained": trained_parameters(best.model),
            "layers": layer_table(best, oialr),
            "final_ranks": dict(oialr.ranks),
            "history": list(oialr.history),
            "events_per_s": inference_rate(best, data),
        }
    return runs


def report(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    full, low = runs["full rank"], runs["OIALR"]
    print(
        f"# tiny_transformer on {args.data_config}.yaml (bench_accuracy's data), "
        f"{args.minutes:g} min of {args.budget} time each; OIALR warmup {args.warmup_steps} "
        f"steps, checks every {args.frequency}, stability 0.99, cutoff 0.1"
    )
    converted = sorted({h["step"] for h in low["history"] if h["event"] == "converted"})
    pruned = sorted({h["step"] for h in low["history"] if h["event"] == "pruned"})
    print(f"OIALR conversions at steps {converted or '-'}; pruning at steps {pruned or '-'}")
    print(f"{'':<26} {'full rank':>12} {'OIALR':>12}")
    print(f"{'optimiser steps':<26} {full['steps']:>12,} {low['steps']:>12,}")
    print(f"{'tested checkpoint: step':<26} {full['best_step']:>12,} {low['best_step']:>12,}")
    print(f"{'trained parameters (net)':<26} {full['trained']:>12,} {low['trained']:>12,}")
    for key, label in (("samples_per_s", "train samples/s (wall)"),
                       ("samples_per_cpu_s", "train samples/s (CPU)"),
                       ("events_per_s", "inference events/s")):  # fmt: skip
        print(f"{label:<26} {full[key]:>12,.0f} {low[key]:>12,.0f}")
    for subset, label in (("test", "known"), ("test_unseen", "unseen")):
        for method, short in METHODS.items():
            for limit in PAPER:
                key = f"{subset}/{method}/<={limit}"
                if key in full["result"] and key in low["result"]:
                    name = f"{label} {short} <={limit}"
                    print(f"{name:<26} {full['result'][key]:>12.1%} {low['result'][key]:>12.1%}")
    print("\nOIALR ranks per layer (tested checkpoint / end of training / full)")
    for name, shape, rank, full_rank in low["layers"]:
        final = low["final_ranks"].get(name, full_rank)
        print(f"  {name:<34} {shape:>8} {rank:>5} {final:>5} {full_rank:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training time per run")
    parser.add_argument("--budget", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_oialr")
    parser.add_argument(
        "--data-config", default="paper", help="paper (exact) or realistic (resolution, widths)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a finished make_data directory to copy (default runs/bench_<data-config>/data; "
        "else it is generated)",
    )
    parser.add_argument("--warmup-steps", type=int, default=500)
    parser.add_argument("--frequency", type=int, default=200)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.data or ROOT / "runs" / f"bench_{args.data_config}" / "data"
    cached = source / "manifest.json"
    if cached.is_file() and not (args.out / "data" / "manifest.json").is_file():
        shutil.copytree(source, args.out / "data", dirs_exist_ok=True)
    data = make_data(args.out, args.data_config)  # skips the shards that are there
    runs = run(args, data)
    (args.out / "results.json").write_text(json.dumps(runs, indent=1, default=str))
    report(runs, args)


if __name__ == "__main__":
    main()
