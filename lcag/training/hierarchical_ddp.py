"""``HierarchicalDDP``: DASO-style data parallelism, a Lightning strategy.

DASO (Coquelin et al., "Accelerating neural network training with distributed asynchronous
and selective optimization (DASO)", arXiv:2104.05588) observes that on multi-GPU nodes the links
inside a node are much faster than those between nodes. So gradients are averaged inside each
node at every step, and across nodes only every ``k`` steps, ``k`` adapted during training:

- **warm-up** (``warmup_epochs``): ``k = 1``, every step fully synchronised (blocking);
- then a global synchronisation every ``max_skip`` batches; each time the monitored validation
  loss plateaus (``patience`` validations in a row without a relative improvement of
  ``threshold``), ``k`` is halved; a plateau at ``k = 1`` resets it to ``max_skip``;
- **cool-down** (the last ``cooldown_epochs`` of ``max_epochs``): ``k = 1`` again;
- the last batch of every epoch is a global synchronisation, and so are validation and every
  checkpoint (each starts from the same weights on every rank).

How the ranks talk (``N`` nodes of ``R`` ranks, node ``i`` = global ranks ``iR .. iR+R-1``):

- every step, each gradient bucket of :class:`~torch.nn.parallel.DistributedDataParallel` is
  averaged over the node (a DDP communication hook, all-reduce in the node's process group);
- on a step with ``k = 1`` the node's *leader* (local rank 0) averages the node-averaged bucket
  with the other nodes' leaders (one rank per node crosses the node boundary) and broadcasts it
  inside its node: every rank then holds the global mean gradient, exactly as in DDP;
- with ``k > 1`` the nodes step on their own node-averaged gradients; on every ``k``-th batch
  (and the epoch's last) the *parameters* are averaged over the leaders after the optimizer step
  and broadcast inside each node (one flattened all-reduce per dtype);
- when a blocking phase follows skipping steps (cool-down, or ``k`` halved to 1) the optimizer
  states (Adam's moments, momentum buffers), which each node accumulated from its own gradients,
  are averaged once in the same way, so blocking steps keep every rank identical again.

Parameters are therefore identical within a node at all times, and identical everywhere after
each global synchronisation. With ``max_skip = 1`` (or during warm-up / cool-down) it is plain
DDP: the same weights as :class:`~lightning.pytorch.strategies.DDPStrategy` up to float rounding
(the global mean is taken in two stages). Buffers are not broadcast at every forward pass
(DDP's ``forward_sync_buffers``, formerly ``broadcast_buffers``, is off by default: it would be a
cross-node collective per step); DDP broadcasts them at the start, and with ``sync_buffers`` the
strategy broadcasts global rank 0's at every parameter synchronisation.

Counters (:meth:`HierarchicalDDP.comm_stats`, also logged as ``daso/*`` to the trainer's
loggers after each validation and at the end of training): global synchronisations,
cross-node all-reduces, bytes put into cross-node collectives (summed over the node leaders;
the model's gradients or parameters), and the node-local all-reduces and bytes of this rank.

Usage from a config (``lcag fit``)::

    trainer:
      devices: 4
      num_nodes: 2
      strategy:
        class_path: lcag.training.hierarchical_ddp.HierarchicalDDP
        init_args: {max_skip: 4, warmup_epochs: 1, cooldown_epochs: 1}

``ranks_per_node`` defaults to Lightning's devices per node when ``num_nodes > 1``, else to
``LOCAL_WORLD_SIZE`` (torchrun) or ``SLURM_NTASKS_PER_NODE``, else all ranks form one node (no
cross-node traffic; plain node-local DDP). Set it to test on one machine, e.g. 4 processes on
the CPU (gloo) as 2 "nodes" of 2: ``devices: 4, ranks_per_node: 2``.

The skip schedule's plateau state (``k``, the best validation loss, validations since it) is
saved in every checkpoint (key ``hierarchical_ddp_schedule``) and restored when a fit resumes
from one, so a resumed run continues at the ``k`` it had.

Limits: automatic optimisation with a finite number of training batches per epoch;
checkpoints hold global rank 0's optimizer state; a checkpoint
written while the nodes have diverged synchronises them first, so every rank must save it
(as :class:`~lightning.pytorch.callbacks.ModelCheckpoint` and ``Trainer.save_checkpoint`` do).
"""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel

from lcag.errors import ConfigError

__all__ = ["CommStats", "HierarchicalDDP", "SkipSchedule"]

# torch 2.13 renamed DDP's broadcast_buffers (forward passes; both sync at initialisation)
SCHEDULE_KEY = "hierarchical_ddp_schedule"  # the skip schedule's state in a checkpoint
_FORWARD_SYNC_BUFFERS = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else "broadcast_buffers"
)

# what a step does with the gradients it reduces (decided before its backward pass)
_GLOBAL_GRADIENTS = "global_gradients"  # node mean, then mean over the leaders: DDP
_LOCAL = "local"  # node mean only; the nodes diverge
_PARAMETER_SYNC = "parameter_sync"  # node mean, step, then parameters averaged over the nodes


class SkipSchedule:
    """DASO's schedule of ``k``, the number of batches between global synchronisations.

    Pure Python (no torch): :meth:`skip_for_epoch` gives an epoch's ``k``, :meth:`record` takes
    each validation loss and halves ``k`` on a plateau.

    Args:
        max_skip: ``k`` after the warm-up, and after a reset.
        warmup_epochs: the first epochs run with ``k = 1``.
        cooldown_epochs: the last epochs (of ``max_epochs``) run with ``k = 1``.
        patience: validations in a row without improvement that make a plateau.
        threshold: an improvement is a loss below ``best - threshold * |best|``.
    """

    def __init__(
        self,
        max_skip: int = 4,
        warmup_epochs: int = 1,
        cooldown_epochs: int = 1,
        patience: int = 2,
        threshold: float = 1e-4,
    ) -> None:
        for name, value, low in (
            ("max_skip", max_skip, 1),
            ("warmup_epochs", warmup_epochs, 0),
            ("cooldown_epochs", cooldown_epochs, 0),
            ("patience", patience, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"HierarchicalDDP: {name} must be an integer >= {low}, got {value!r}"
                )
        if not 0 <= threshold < 1:
            raise ConfigError(f"HierarchicalDDP: threshold must be in [0, 1), got {threshold!r}")
        self.max_skip = max_skip
        self.warmup_epochs = warmup_epochs
        self.cooldown_epochs = cooldown_epochs
        self.patience = patience
        self.threshold = threshold
        self.skip = max_skip  # k of the skipping phase
        self.best = math.inf
        self.bad = 0  # validations since the last improvement (or plateau)

    def phase(self, epoch: int, max_epochs: int | None) -> str:
        """``warmup``, ``cooldown`` or ``skipping`` (cool-down needs a finite ``max_epochs``)."""
        if epoch < self.warmup_epochs:
            return "warmup"
        if max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - self.cooldown_epochs:
            return "cooldown"
        return "skipping"

    def skip_for_epoch(self, epoch: int, max_epochs: int | None) -> int:
        """``k`` for the batches of ``epoch`` (0-based)."""
        return self.skip if self.phase(epoch, max_epochs) == "skipping" else 1

    def record(self, loss: float, epoch: int, max_epochs: int | None) -> bool:
        """Take the validation loss after (part of) ``epoch``; ``True`` on a plateau, which
        changes ``k`` (halved, or back to ``max_skip`` from 1). Only validations in the skipping
        phase count; a NaN loss counts as no improvement."""
        if self.phase(epoch, max_epochs) != "skipping":
            return False
        margin = self.threshold * abs(self.best) if math.isfinite(self.best) else 0.0
        if loss < self.best - margin:  # False for NaN
            self.best, self.bad = loss, 0
            return False
        self.bad += 1
        if self.bad < self.patience:
            return False
        self.bad = 0
        self.skip = self.skip // 2 if self.skip > 1 else self.max_skip
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"skip": self.skip, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s state (a ``k`` above ``max_skip`` is capped)."""
        self.skip = max(1, min(int(state["skip"]), self.max_skip))
        self.best = float(state["best"])
        self.bad = int(state["bad"])


@dataclass
class CommStats:
    """What the strategy sent. Cross-node figures are the same on every rank (each leader puts
    the same payload into each cross-node collective); ``cross_node_bytes`` sums the payload
    over the ``nodes`` leaders. Node-local figures are this rank's."""

    nodes: int = 1
    ranks_per_node: int = 1
    global_syncs: int = 0  # steps (or events) that synchronised the model across nodes
    global_allreduces: int = 0  # cross-node all-reduce calls (gradient buckets, flat tensors)
    global_broadcasts: int = 0  # cross-node broadcasts of rank 0's buffers (flat, per dtype)
    cross_node_bytes: int = 0  # payload of those collectives times the leaders taking part
    control_bytes: int = 0  # the plateau test's loss scalar broadcast, summed over the leaders
    local_allreduces: int = 0  # node-local all-reduce calls of this rank
    local_bytes: int = 0  # their payload on this rank
    skip: int = 1  # k now

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def ranks_per_node_from_environment() -> int | None:
    """Ranks per node from ``LOCAL_WORLD_SIZE`` (torchrun) or ``SLURM_NTASKS_PER_NODE``
    (``4`` or ``4(x2)``), or ``None``."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        match = re.match(r"\s*(\d+)", os.environ.get(name, ""))
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
    return None


class HierarchicalDDP(DDPStrategy):
    """DDP with node-local gradient averaging every step and cross-node synchronisation every
    ``k`` steps on DASO's schedule (see the module's docstring).

    Args:
        max_skip: ``k`` after warm-up and after a reset (1: plain DDP throughout).
        warmup_epochs: epochs of full synchronisation at the start.
        cooldown_epochs: epochs of full synchronisation at the end (of ``max_epochs``).
        patience: validations without improvement of ``monitor`` that halve ``k``.
        threshold: relative improvement of ``monitor`` that counts.
        monitor: the logged validation metric watched for plateaus (synced over ranks).
        ranks_per_node: processes per node; default from Lightning's ``num_nodes`` and devices,
            ``LOCAL_WORLD_SIZE`` or ``SLURM_NTASKS_PER_NODE``.
        sync_buffers: broadcast global rank 0's buffers with every parameter synchronisation
            (for running statistics such as BatchNorm's). lcag's modules set their buffers
            identically on every rank (normalisation, mass prior, node weight from synced
            validation metrics), so the default leaves them to DDP's initial broadcast.
        **kwargs: passed to :class:`~lightning.pytorch.strategies.DDPStrategy` (``timeout``,
            ``process_group_backend``, ``find_unused_parameters``, ...) and on to
            :class:`~torch.nn.parallel.DistributedDataParallel`.
    """

    strategy_name = "hierarchical_ddp"

    def __init__(
        self,
        max_skip: int = 4,
        warmup_epochs: int = 1,
        cooldown_epochs: int = 1,
        patience: int = 2,
        threshold: float = 1e-4,
        monitor: str = "val/loss",
        ranks_per_node: int | None = None,
        sync_buffers: bool = False,
        **kwargs: Any,
    ) -> None:
        # (LightningCLI passes every argument of DDPStrategy and DistributedDataParallel, most
        # as None: None means "not given")
        if any(
            kwargs.get(key) is not None
            for key in ("ddp_comm_hook", "ddp_comm_wrapper", "ddp_comm_state")
        ) or kwargs.get("model_averaging_period"):
            raise ConfigError(
                "HierarchicalDDP sets its own DDP communication hook: ddp_comm_hook, "
                "ddp_comm_wrapper, ddp_comm_state and model_averaging_period cannot be given"
            )
        if kwargs.get("start_method", "popen") != "popen":
            raise ConfigError("HierarchicalDDP: start_method must be 'popen'")
        if ranks_per_node is not None and (
            not isinstance(ranks_per_node, int) or ranks_per_node < 1
        ):
            raise ConfigError(
                f"HierarchicalDDP: ranks_per_node must be >= 1, got {ranks_per_node!r}"
            )
        for key in ("broadcast_buffers", "forward_sync_buffers"):
            if kwargs.get(key, 0) is None:
                del kwargs[key]
        if not {"broadcast_buffers", "forward_sync_buffers"} & kwargs.keys():
            # no cross-node buffer broadcast at every forward pass (buffers are synced at
            # initialisation, and rank 0's at every parameter synchronisation)
            kwargs[_FORWARD_SYNC_BUFFERS] = False
        super().__init__(**kwargs)
        self.schedule = SkipSchedule(max_skip, warmup_epochs, cooldown_epochs, patience, threshold)
        self.monitor = monitor
        self._ranks_per_node_arg = ranks_per_node
        self.sync_buffers = sync_buffers
        self.stats = CommStats()
        self._node_group: Any = None
        self._cross_group: Any = None
        self._groups: list[Any] = []
        self._leader = 0  # global rank of this node's leader
        self._mode = _GLOBAL_GRADIENTS
        self._epoch = -1
        self._skip = 1
        self._params_diverged = False  # nodes stepped apart since the last synchronisation
        self._optimizer_diverged = False  # optimizer states accumulated node-local gradients

    # ------------------------------------------------------------------------ layout
    @property
    def nodes(self) -> int:
        return self.stats.nodes

    @property
    def ranks_per_node(self) -> int:
        return self.stats.ranks_per_node

    @property
    def is_leader(self) -> bool:
        return self.global_rank == self._leader

    def _resolve_ranks_per_node(self, world: int) -> int:
        if self._ranks_per_node_arg is not None:
            per_node = self._ranks_per_node_arg
        elif self.num_nodes > 1:
            per_node = self.num_processes
        else:
            per_node = ranks_per_node_from_environment() or world
        if world % per_node:
            raise ConfigError(
                f"HierarchicalDDP: ranks_per_node = {per_node} does not divide the world size "
                f"{world} (nodes must have equal numbers of ranks)"
            )
        return per_node

    def setup_distributed(self) -> None:
        super().setup_distributed()
        world = dist.get_world_size()
        per_node = self._resolve_ranks_per_node(world)
        nodes = world // per_node
        self.stats = CommStats(nodes=nodes, ranks_per_node=per_node)
        rank = dist.get_rank()
        # every process takes part in creating every group, in the same order
        self._groups = []
        for node in range(nodes):
            members = list(range(node * per_node, (node + 1) * per_node))
            group = dist.new_group(members)
            self._groups.append(group)
            if rank in members:
                self._node_group, self._leader = group, members[0]
        self._cross_group = dist.new_group([node * per_node for node in range(nodes)])
        self._groups.append(self._cross_group)

    def _register_ddp_hooks(self) -> None:
        # Lightning registers DDP communication hooks on CUDA only; this one runs on any device
        assert isinstance(self.model, DistributedDataParallel)
        self.model.register_comm_hook(None, self._comm_hook)

    def teardown(self) -> None:
        super().teardown()
        for group in self._groups:
            dist.destroy_process_group(group)
        self._groups, self._node_group, self._cross_group = [], None, None

    # ------------------------------------------------------------------ collectives
    def _node_mean(self, tensor: torch.Tensor) -> None:
        if self.ranks_per_node > 1:
            dist.all_reduce(tensor, group=self._node_group)
            tensor.div_(self.ranks_per_node)
            self.stats.local_allreduces += 1
            self.stats.local_bytes += tensor.numel() * tensor.element_size()

    def _cross_node_mean(self, tensor: torch.Tensor) -> None:
        """Average a tensor that is equal within each node over the nodes: the leaders
        all-reduce it, then broadcast the result inside their node."""
        if self.nodes == 1:
            return
        if self.is_leader:
            dist.all_reduce(tensor, group=self._cross_group)
            tensor.div_(self.nodes)
        self.stats.global_allreduces += 1
        self.stats.cross_node_bytes += self.nodes * tensor.numel() * tensor.element_size()
        if self.ranks_per_node > 1:
            dist.broadcast(tensor, src=self._leader, group=self._node_group)

    def _comm_hook(self, state, bucket):
        """DDP communication hook: a gradient bucket's (:class:`torch.distributed.GradBucket`)
        node mean, and on a blocking step its global mean (node means averaged over the leaders,
        broadcast in the node); returns a completed ``torch.futures.Future`` of the bucket."""
        buffer = bucket.buffer()
        self._node_mean(buffer)
        if self._mode == _GLOBAL_GRADIENTS:
            self._cross_node_mean(buffer)
        future: torch.futures.Future = torch.futures.Future()
        future.set_result(buffer)
        return future

    def _average(self, tensors: list[torch.Tensor]) -> None:
        """Average floating-point tensors (equal within each node) over the nodes in place, one
        flattened all-reduce per dtype and device (on the strategy's device: NCCL needs CUDA
        tensors, and Adam keeps its step counts on the CPU)."""
        by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for tensor in tensors:
            if tensor.is_floating_point():
                by_kind.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        for group in by_kind.values():
            flat = _flatten_dense_tensors([t.detach() for t in group]).to(self.root_device)
            self._cross_node_mean(flat)
            for tensor, value in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
                tensor.detach().copy_(value)

    def _broadcast_buffers(self) -> None:
        """Global rank 0's buffers to every rank: over the leaders, then inside each node (one
        flattened broadcast per dtype)."""
        by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for buffer in self.lightning_module.buffers():
            by_kind.setdefault((buffer.dtype, buffer.device), []).append(buffer)
        for group in by_kind.values():
            flat = _flatten_dense_tensors([b.detach() for b in group]).to(self.root_device)
            if self.is_leader:
                dist.broadcast(flat, src=0, group=self._cross_group)
            self.stats.global_broadcasts += 1
            self.stats.cross_node_bytes += self.nodes * flat.numel() * flat.element_size()
            if self.ranks_per_node > 1:
                dist.broadcast(flat, src=self._leader, group=self._node_group)
            for buffer, value in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
                buffer.detach().copy_(value)

    def synchronize_parameters(self) -> None:
        """Average the parameters over the nodes (and broadcast rank 0's buffers with
        ``sync_buffers``); every rank must call it."""
        if self.nodes > 1:
            self._average([p.data for p in self.lightning_module.parameters()])
            if self.sync_buffers:
                self._broadcast_buffers()
            self.stats.global_syncs += 1
        self._params_diverged = False

    def synchronize_optimizers(self) -> None:
        """Average the optimizers' floating-point states (moments, momentum) over the nodes."""
        if self.nodes > 1:
            for optimizer in self.optimizers:
                states = [
                    value
                    for state in optimizer.state.values()
                    for value in state.values()
                    if isinstance(value, torch.Tensor)
                ]
                self._average(states)
        self._optimizer_diverged = False

    # --------------------------------------------------------------------- schedule
    def _max_epochs(self) -> int | None:
        trainer = self.lightning_module.trainer
        return trainer.max_epochs if trainer.max_epochs not in (None, -1) else None

    @property
    def skip(self) -> int:
        """``k`` of the current epoch."""
        return self._skip

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        trainer = self.lightning_module.trainer
        if trainer.current_epoch != self._epoch:
            self._epoch = trainer.current_epoch
            self._skip = self.schedule.skip_for_epoch(self._epoch, self._max_epochs())
            self.stats.skip = self._skip
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ConfigError("HierarchicalDDP needs training data loaders with a length")
        last = batch_idx + 1 >= batches
        step = batch_idx // trainer.accumulate_grad_batches  # optimizer step within the epoch
        if self._skip == 1:  # blocking: every rank must start the step from the same state
            if self._params_diverged:
                self.synchronize_parameters()
            if self._optimizer_diverged:
                self.synchronize_optimizers()
            self._mode = _GLOBAL_GRADIENTS
        elif last or (step + 1) % self._skip == 0:
            self._mode = _PARAMETER_SYNC
        else:
            self._mode = _LOCAL

    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        if self._mode == _GLOBAL_GRADIENTS:
            self.stats.global_syncs += self.nodes > 1
        else:
            self._optimizer_diverged = True
            self._params_diverged = True
        if self._mode == _PARAMETER_SYNC:
            self.synchronize_parameters()
        return output

    def on_validation_start(self) -> None:
        super().on_validation_start()
        if self._params_diverged:  # e.g. validation in the middle of an epoch
            self.synchronize_parameters()

    def on_validation_end(self) -> None:
        super().on_validation_end()
        trainer = self.lightning_module.trainer
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        loss = torch.tensor([float(value)], dtype=torch.float64, device=self.root_device)
        dist.broadcast(loss, src=0)  # one decision for all ranks, whatever the metric's sync
        self.stats.control_bytes += self.nodes * loss.numel() * loss.element_size()
        # a new k takes effect from the next epoch (an epoch's k is fixed at its first batch)
        self.schedule.record(float(loss), trainer.current_epoch, self._max_epochs())
        self._log_stats()

    def on_train_end(self) -> None:
        if self._params_diverged:
            self.synchronize_parameters()
        self._log_stats()
        super().on_train_end()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        """Save with the skip schedule's state (:data:`SCHEDULE_KEY`)."""
        checkpoint = {**checkpoint, SCHEDULE_KEY: self.schedule.state_dict()}
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Load, and continue the skip schedule where the checkpoint left it."""
        checkpoint = super().load_checkpoint(checkpoint_path, *args, **kwargs)
        state = checkpoint.get(SCHEDULE_KEY)
        if state is not None:
            self.schedule.load_state_dict(state)
        return checkpoint

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self._params_diverged:  # a checkpoint holds the weights every rank agrees on
            self.synchronize_parameters()
        return super().lightning_module_state_dict()

    # --------------------------------------------------------------------- counters
    def comm_stats(self) -> dict[str, int]:
        """The counters so far (see :class:`CommStats`)."""
        return self.stats.as_dict()

    def _log_stats(self) -> None:
        trainer = self.lightning_module.trainer
        metrics = {f"daso/{key}": float(value) for key, value in self.comm_stats().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
