"""HierarchicalDDP (DASO-style): 4 gloo processes on this machine as 2 "nodes" of 2 ranks.

One module-scoped session of 4 spawned processes trains a small MLP with real Lightning
Trainers, one after another: DDPStrategy, HierarchicalDDP with k = 1, with k = 4, and with the
full schedule (warm-up, skipping, cool-down, a mid-epoch checkpoint). Each rank records its
parameters before and after every step; the tests compare the records. The skip schedule's
logic is tested on its own in pure Python.
"""

from __future__ import annotations

import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from lcag.errors import ConfigError
from lcag.training.hierarchical_ddp import (
    SCHEDULE_KEY,
    HierarchicalDDP,
    SkipSchedule,
    ranks_per_node_from_environment,
)

WORLD, PER_NODE = 4, 2
BATCH, STEPS = 4, 8  # per rank: 8 optimizer steps per epoch
NODE_OF = [rank // PER_NODE for rank in range(WORLD)]
TIGHT = dict(rtol=1e-5, atol=1e-6)  # float rounding of a mean taken in two stages


# ------------------------------------------------------------------ the spawned ranks
def _net():
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from torch import nn

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
            self.register_buffer("mark", torch.zeros(()))  # set to the rank by the recorder

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val/loss", F.mse_loss(self.net(x), y), sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.02)

    return Net()


def _loader(seed: int, events: int):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(events, 6, generator=g)
    y = torch.tanh(x[:, :1] * x[:, 1:2] + x[:, 2:3]) + 0.1 * torch.randn(events, 1, generator=g)
    # Lightning's DistributedSampler gives each rank every 4th event: different data per rank
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _run(name: str, out: Path) -> dict:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from lcag.training.hierarchical_ddp import HierarchicalDDP

    record: dict = {"before": [], "after": [], "skip": [], "mark": []}

    class Recorder(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            record["before"].append(_flat(module))
            if trainer.current_epoch == 1 and batch_idx == 0:
                module.mark.fill_(trainer.global_rank)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            record["after"].append(_flat(module))
            record["skip"].append(getattr(trainer.strategy, "skip", 1))
            record["mark"].append(float(module.mark))

    timeout = timedelta(seconds=60)
    callbacks: list = [Recorder()]
    epochs, val = 2, None
    if name == "ddp":
        strategy = DDPStrategy(timeout=timeout)
    elif name == "k1":
        strategy = HierarchicalDDP(max_skip=1, ranks_per_node=PER_NODE, timeout=timeout)
    elif name == "k4":
        strategy = HierarchicalDDP(
            max_skip=4, warmup_epochs=0, cooldown_epochs=0, ranks_per_node=PER_NODE, timeout=timeout
        )
    else:  # "schedule": warm-up, skipping and cool-down epochs, validation, a checkpoint
        strategy = HierarchicalDDP(
            max_skip=4,
            warmup_epochs=1,
            cooldown_epochs=1,
            ranks_per_node=PER_NODE,
            sync_buffers=True,
            timeout=timeout,
        )
        epochs, val = 3, _loader(1, WORLD * BATCH)
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=out / "ckpt", filename="{step}", every_n_train_steps=10, save_top_k=-1
            )
        )
    pl.seed_everything(0, verbose=False)
    module = _net()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=strategy,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=val is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    trainer.fit(module, _loader(0, WORLD * BATCH * STEPS), val)
    record["final"] = _flat(module)
    if isinstance(strategy, HierarchicalDDP):
        record["stats"] = strategy.comm_stats()
    return record


def _worker(rank: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),  # launched externally: Lightning starts no processes of its own
        NODE_RANK="0",
        WORLD_SIZE=str(WORLD),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    results = {}
    try:
        for name in ("ddp", "k1", "k4", "schedule"):
            results[name] = _run(name, Path(out))
    except Exception:
        results["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Per rank: {run name: {"before", "after": [flat parameters per step], "final", ...}}."""
    import multiprocessing

    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("hddp")
    # forkserver: one fresh process imports torch and Lightning once, the 4 ranks fork from it
    # (spawning 4 interpreters would import them 4 times; forking pytest would copy its threads)
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["lightning.pytorch", __name__]
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        mp.start_processes(
            _worker, args=(str(out), _free_port()), nprocs=WORLD, start_method="forkserver"
        )
    results = [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    for result in results:
        result["dir"] = out
    return results


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, **TIGHT)


def _apart(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > 1e-4


# ----------------------------------------------------------------------------- tests
def test_k1_gives_the_weights_of_ddp(runs):
    for rank in range(WORLD):
        ddp, k1 = runs[rank]["ddp"], runs[rank]["k1"]
        assert len(k1["after"]) == len(ddp["after"]) == 2 * STEPS
        for step, (a, b) in enumerate(zip(ddp["after"], k1["after"], strict=True)):
            assert _close(a, b), (rank, step, float((a - b).abs().max()))
        # and k = 4 is measurably different, so the comparison above can tell them apart
        assert _apart(runs[rank]["k4"]["final"], ddp["final"])
    # DDP moved the weights: the comparison is not between two untouched models
    assert _apart(runs[0]["ddp"]["final"], runs[0]["ddp"]["before"][0])


def test_k4_drops_global_allreduces_fourfold(runs):
    k1, k4 = runs[0]["k1"]["stats"], runs[0]["k4"]["stats"]
    assert k1["nodes"] == 2
    assert k1["ranks_per_node"] == PER_NODE
    assert k1["global_syncs"] == 2 * STEPS  # every step
    assert k4["global_syncs"] == 2 * STEPS // 4  # batches 4 and 8 of each epoch
    assert k4["global_allreduces"] > 0
    assert k1["global_allreduces"] >= 4 * k4["global_allreduces"]
    assert k1["cross_node_bytes"] >= 4 * k4["cross_node_bytes"] > 0
    # node-local averaging still runs every step: each bucket on k = 1, each bucket on k = 4
    assert k4["local_allreduces"] == k1["local_allreduces"] > 0
    # every rank counts the same cross-node traffic
    for rank in range(1, WORLD):
        for key in ("global_syncs", "global_allreduces", "cross_node_bytes"):
            assert runs[rank]["k4"]["stats"][key] == k4[key]


def test_k4_keeps_nodes_consistent_and_syncs_every_fourth_step(runs):
    k4 = [runs[rank]["k4"] for rank in range(WORLD)]
    for step in range(2 * STEPS):
        after = [k4[rank]["after"][step] for rank in range(WORLD)]
        assert _close(after[0], after[1]), step  # within node 0
        assert _close(after[2], after[3]), step  # within node 1
        if (step % STEPS + 1) % 4 == 0:
            assert all(_close(after[0], a) for a in after), step  # synchronised everywhere
        else:
            assert _apart(after[0], after[2]), step  # nodes stepped on their own gradients
    assert all(_close(k4[0]["final"], k4[rank]["final"]) for rank in range(WORLD))


def test_schedule_warmup_skipping_cooldown_and_checkpoint(runs):
    sched = [runs[rank]["schedule"] for rank in range(WORLD)]
    assert sched[0]["skip"] == [1] * STEPS + [4] * STEPS + [1] * STEPS
    for step in range(3 * STEPS):
        after = [sched[rank]["after"][step] for rank in range(WORLD)]
        assert _close(after[0], after[1]), step
        assert _close(after[2], after[3]), step
        epoch, batch = divmod(step, STEPS)
        if epoch == 1 and (batch + 1) % 4:
            assert _apart(after[0], after[2]), step
        else:
            # warm-up and cool-down: every step global; in cool-down only because the
            # optimizer states (Adam's moments) were averaged when it began
            assert all(_close(after[0], a) for a in after), step
    # the checkpoint after the 10th step (epoch 1's second batch, a node-local step) holds
    # the mean of the two nodes' weights, and every rank continued from it
    ckpt = torch.load(runs[0]["dir"] / "ckpt" / "step=10.ckpt", weights_only=True)
    saved = torch.cat([t.flatten() for k, t in ckpt["state_dict"].items() if k != "mark"])
    mean = (sched[0]["after"][9] + sched[2]["after"][9]) / 2
    assert _apart(sched[0]["after"][9], sched[2]["after"][9])
    assert _close(saved, mean)
    for rank in range(WORLD):
        assert _close(sched[rank]["before"][10], saved)
    assert runs[0]["schedule"]["stats"]["control_bytes"] > 0  # the plateau test heard val/loss
    # the skip schedule's state travels in the checkpoint, and a strategy loading it resumes it
    assert ckpt[SCHEDULE_KEY]["skip"] == 4
    resumed = HierarchicalDDP(max_skip=4, warmup_epochs=1, cooldown_epochs=1, ranks_per_node=2)
    resumed.schedule.skip = 1
    resumed.load_checkpoint(runs[0]["dir"] / "ckpt" / "step=10.ckpt")
    assert resumed.schedule.state_dict() == ckpt[SCHEDULE_KEY]
    # sync_buffers: a buffer set to each rank's number at epoch 1's start is rank 0's
    # everywhere after the first synchronisation (the checkpoint's, after step 10)
    for rank in range(WORLD):
        assert sched[rank]["mark"][STEPS : STEPS + 2] == [rank, rank]
        assert sched[rank]["mark"][STEPS + 2 :] == [0.0] * (2 * STEPS - 2)


# ------------------------------------------------------------- the schedule, pure Python
def test_skip_schedule_warmup_plateaus_reset_and_cooldown():
    s = SkipSchedule(max_skip=4, warmup_epochs=2, cooldown_epochs=1, patience=2)
    assert [s.skip_for_epoch(epoch, 12) for epoch in range(12)] == [1, 1] + [4] * 9 + [1]
    assert not s.record(1.0, 0, 12)  # warm-up validations do not count
    assert s.best == float("inf")
    assert not s.record(1.0, 2, 12)  # first skipping validation: the best so far
    assert not s.record(0.9, 3, 12)  # improved
    assert not s.record(0.95, 4, 12)  # one without improvement
    assert s.skip == 4
    assert s.record(0.9, 5, 12)  # two in a row (equal is no improvement): halved
    assert s.skip_for_epoch(6, 12) == 2
    assert not s.record(0.5, 6, 12)  # improvement resets the count
    assert not s.record(0.6, 7, 12)
    assert s.record(float("nan"), 8, 12)  # NaN is no improvement: 2 -> 1
    assert s.skip_for_epoch(9, 12) == 1
    assert not s.record(0.7, 9, 12)
    assert s.record(0.7, 10, 12)  # a plateau at 1 resets to the maximum
    assert s.skip_for_epoch(10, 12) == 4
    assert s.skip_for_epoch(11, 12) == 1  # cool-down, whatever the skip
    assert not s.record(9.0, 11, 12)  # cool-down validations do not count
    assert not s.record(9.0, 11, 12)
    assert s.skip == 4
    assert s.skip_for_epoch(500, None) == 4  # no max_epochs: no cool-down


def test_skip_schedule_state_round_trips():
    s = SkipSchedule(max_skip=8, warmup_epochs=0, cooldown_epochs=0, patience=1)
    s.record(1.0, 0, None)
    s.record(2.0, 1, None)  # a plateau: 8 -> 4
    copy = SkipSchedule(max_skip=8, warmup_epochs=0, cooldown_epochs=0, patience=1)
    copy.load_state_dict(s.state_dict())
    assert copy.state_dict() == s.state_dict() == {"skip": 4, "best": 1.0, "bad": 0}
    smaller = SkipSchedule(max_skip=2)
    smaller.load_state_dict(s.state_dict())
    assert smaller.skip == 2  # capped at this run's max_skip


def test_skip_schedule_halves_down_from_an_odd_maximum_and_validates_its_arguments():
    s = SkipSchedule(max_skip=6, warmup_epochs=0, cooldown_epochs=0, patience=1)
    skips = []
    for epoch in range(5):
        s.record(1.0, epoch, None)  # the first sets the best, then each is a plateau
        skips.append(s.skip)
    assert skips == [6, 3, 1, 6, 3]
    for bad in (dict(max_skip=0), dict(patience=0), dict(warmup_epochs=-1), dict(threshold=1.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SkipSchedule(**bad)


def test_skip_schedule_threshold_is_relative_to_the_best_loss_of_either_sign():
    for best, small_gain, real_gain in ((1.0, 0.95, 0.85), (-1.0, -1.05, -1.15)):
        s = SkipSchedule(max_skip=4, warmup_epochs=0, cooldown_epochs=0, patience=2, threshold=0.1)
        assert not s.record(best, 0, None)
        assert not s.record(small_gain, 1, None)  # within 10 % of the best: no improvement
        assert not s.record(real_gain, 2, None)  # an improvement resets the count
        assert not s.record(real_gain, 3, None)
        assert s.record(real_gain, 4, None)
        assert s.skip == 2


def test_ranks_per_node_from_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    assert ranks_per_node_from_environment() is None
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    assert ranks_per_node_from_environment() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ranks_per_node_from_environment() == 2
