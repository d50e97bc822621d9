"""DDP against HierarchicalDDP (DASO-style, k = 4) on 4 gloo processes as 2 "nodes" x 2.

Run: ``python benchmarks/bench_daso.py [--data DIR] [--epochs 12] [--batch-size 16]``

The tiny Transformer of ``configs/fit/tiny_transformer.yaml`` on ``configs/data/tiny.yaml``
(generated into a temporary directory unless ``--data`` is given) is trained twice from the
same seed for the same epochs, with real Lightning Trainers in 4 CPU processes (one thread each):

- ``DDP``: Lightning's DDPStrategy; its gradient all-reduce is torch's reference
  ``allreduce_hook`` wrapped to count calls and bytes (Lightning attaches DDP hooks on CUDA
  only, so a subclass attaches it here);
- ``HierarchicalDDP``: ``max_skip=4``, ``--warmup-epochs`` and ``--cooldown-epochs`` blocking
  epochs (1 each by default; 0 and 0 show ``k = 4`` throughout), ``ranks_per_node=2``.

Both run with ``forward_sync_buffers=False`` (lcag's buffers are equal on every rank; DDP's
default would broadcast them at every forward pass, more bytes than the gradients here, on top
of the counted traffic).

Printed per run: global (cross-node) all-reduces, bytes across nodes, the validation perfect-tree
rate of the last epoch (``full``: valid-tree decoding with node evidence, ``pairs``: valid-tree
decoding of the pair scores alone, ``argmax``: the pair scores' argmax; on tiny data the node
evidence alone finds nearly every tree, so the pair-score rates show the training best),
and the wall time (a 2-core machine shared with other work: indicative only). "Bytes across
nodes" counts each collective that spans both nodes as its payload times the ranks taking part:
all 4 ranks in DDP's all-reduces, the 2 node leaders in HierarchicalDDP's (node-local traffic
is listed apart). Per-rank batch ``--batch-size`` (x 4 ranks per optimizer step).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORLD, PER_NODE = 4, 2


def _strategies(name: str, warmup: int = 1, cooldown: int = 1):
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from lcag.training.hierarchical_ddp import _FORWARD_SYNC_BUFFERS, HierarchicalDDP

    timeout = timedelta(minutes=5)
    if name == "HierarchicalDDP":
        return HierarchicalDDP(
            max_skip=4,
            warmup_epochs=warmup,
            cooldown_epochs=cooldown,
            ranks_per_node=PER_NODE,
            timeout=timeout,
        )

    class CountingDDP(DDPStrategy):
        """DDP whose gradient all-reduce (torch's allreduce_hook) is counted."""

        counts: ClassVar[dict[str, int]] = {"global_allreduces": 0, "cross_node_bytes": 0}

        def _register_ddp_hooks(self) -> None:
            def hook(state, bucket):  # DDP rejects string annotations
                buffer = bucket.buffer()
                self.counts["global_allreduces"] += 1
                self.counts["cross_node_bytes"] += (
                    dist.get_world_size() * buffer.numel() * buffer.element_size()
                )
                return allreduce_hook(None, bucket)

            self.model.register_comm_hook(None, hook)

    return CountingDDP(timeout=timeout, **{_FORWARD_SYNC_BUFFERS: False})


def _train(
    name: str, data: str, epochs: int, batch_size: int, out: Path, blocking: tuple[int, int]
) -> dict:
    import lightning.pytorch as pl
    import torch

    from lcag.data import LCAGDataModule
    from lcag.models.base import LCAGModel
    from lcag.module import LCAGModule

    config = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_transformer.yaml").read_text())
    model_args = dict(config["model"])
    pl.seed_everything(config["seed_everything"], verbose=False)
    module = LCAGModule(LCAGModel.from_config(model_args.pop("model")), **model_args)
    dm = LCAGDataModule(
        data, batch_size=batch_size, eval_batch_size=config["data"]["eval_batch_size"]
    )
    strategy = _strategies(name, *blocking)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=strategy,
        max_epochs=epochs,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    start = time.perf_counter()
    trainer.fit(module, dm)
    seconds = time.perf_counter() - start
    stats = strategy.comm_stats() if name == "HierarchicalDDP" else dict(type(strategy).counts)
    val = module.results["val"]
    grads = sum(p.numel() * p.element_size() for p in module.parameters())
    return {
        "strategy": name,
        "epochs": epochs,
        "optimizer_steps": trainer.global_step,
        "gradient_bytes": grads,
        "seconds": seconds,
        "val_perfect_full": val["perfect_full"],
        "val_perfect_decoded": val["perfect_decoded"],
        "val_perfect_argmax": val["perfect_argmax"],
        "val_events": len(dm.datasets["validation"]),
        **stats,
        "final_params_checksum": float(sum(p.detach().double().sum() for p in module.parameters())),
        "rank": torch.distributed.get_rank(),
    }


def _worker(
    rank: int,
    data: str,
    epochs: int,
    batch_size: int,
    out: str,
    port: int,
    blocking: tuple[int, int],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(WORLD),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    results = [
        _train(name, data, epochs, batch_size, Path(out), blocking)
        for name in ("DDP", "HierarchicalDDP")
    ]
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a dataset made from configs/data/tiny.yaml")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument(
        "--warmup-epochs", type=int, default=1, help="HierarchicalDDP's blocking warm-up"
    )
    parser.add_argument(
        "--cooldown-epochs", type=int, default=1, help="HierarchicalDDP's blocking cool-down"
    )
    args = parser.parse_args(argv)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from lcag.data_gen.config import load_config
            from lcag.data_gen.writer import generate_dataset

            data = Path(tmp) / "data"
            config = load_config(ROOT / "configs" / "data" / "tiny.yaml")
            generate_dataset(config, data, progress=False)
        multiprocessing.get_context("forkserver").set_forkserver_preload(["lightning.pytorch"])
        os.environ["OMP_NUM_THREADS"] = "1"
        started = time.perf_counter()
        mp.start_processes(
            _worker,
            args=(
                str(data),
                args.epochs,
                args.batch_size,
                tmp,
                _free_port(),
                (args.warmup_epochs, args.cooldown_epochs),
            ),
            nprocs=WORLD,
            start_method="forkserver",
        )
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(WORLD)]
    total = time.perf_counter() - started
    ddp, hddp = ranks[0]
    for run in (0, 1):  # after the final synchronisation every rank holds the same weights
        sums = {ranks[r][run]["final_params_checksum"] for r in range(WORLD)}
        assert len(sums) == 1, (ranks[0][run]["strategy"], sums)
    print(
        f"tiny Transformer ({ddp['gradient_bytes'] / 1e6:.2f} MB of float32 gradients), "
        f"configs/data/tiny.yaml, {WORLD} gloo processes as {WORLD // PER_NODE} nodes x "
        f"{PER_NODE}, {args.epochs} epochs, batch {args.batch_size} per rank, "
        f"{ddp['optimizer_steps']} optimizer steps; HierarchicalDDP max_skip 4, "
        f"{args.warmup_epochs} warm-up and {args.cooldown_epochs} cool-down epochs"
    )
    header = (
        f"{'strategy':<17}{'global all-reduces':>19}{'MB across nodes':>17}"
        f"{'val perfect: full':>19}{'pairs':>8}{'argmax':>8}{'seconds':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in (ddp, hddp):
        print(
            f"{row['strategy']:<17}{row['global_allreduces']:>19}"
            f"{row['cross_node_bytes'] / 1e6:>17.1f}{100 * row['val_perfect_full']:>18.1f}%"
            f"{100 * row['val_perfect_decoded']:>7.1f}%{100 * row['val_perfect_argmax']:>7.1f}%"
            f"{row['seconds']:>9.0f}"
        )
    print(
        f"HierarchicalDDP: {hddp['global_syncs']} global synchronisations, node-local "
        f"{hddp['local_allreduces']} all-reduces / {hddp['local_bytes'] / 1e6:.1f} MB per rank; "
        f"{ddp['global_allreduces'] / max(hddp['global_allreduces'], 1):.1f}x fewer global "
        f"all-reduces, {ddp['cross_node_bytes'] / max(hddp['cross_node_bytes'], 1):.1f}x fewer "
        f"bytes across nodes; val perfect minus DDP's: full "
        f"{100 * (hddp['val_perfect_full'] - ddp['val_perfect_full']):+.1f}, pairs "
        f"{100 * (hddp['val_perfect_decoded'] - ddp['val_perfect_decoded']):+.1f}, argmax "
        f"{100 * (hddp['val_perfect_argmax'] - ddp['val_perfect_argmax']):+.1f} points "
        f"({hddp['val_events']} validation events); {total:.0f} s in all"
    )
    print(json.dumps({"ddp": ddp, "hierarchical_ddp": hddp}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
