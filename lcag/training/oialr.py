"""OIALR: Orthogonality-Informed Adaptive Low-Rank training, as a Lightning callback.

Coquelin et al., "Harnessing orthogonality to train low-rank neural networks"
(arXiv:2401.08505): the orthogonal bases of a weight's SVD, ``W = U diag(s) V^T``, settle
early in training while the singular values keep changing. From then on a layer can be
trained as ``U S V^T`` with ``U`` and ``V`` fixed and only the small core ``S`` learnt, its
rank shrinking as singular values die. Built from that description:

1. Full-rank warm-up for ``warmup_steps`` optimiser steps.
2. Every ``frequency`` steps after it, a *check*. For each dense layer still eligible (a 2-D
   weight whose smaller side exceeds ``min_ratio`` times the larger), the orthogonal factor
   ``Q = U V^T`` of its reduced SVD is compared with the previous check's: the stability is the
   mean, over columns, of the cosine similarity of ``Q``'s columns then and now (``Q`` is the
   weight's polar factor: unique for a full-rank weight, no sign or order ambiguity of single
   singular vectors). At ``stability`` (0.99) or above the layer becomes a
   :class:`~lcag.training.lowrank.LowRankLinear` at full rank, computing exactly what the
   dense layer did.
3. At each later check every factorised layer's core is re-diagonalised (the SVD of ``S``
   folded into ``U`` and ``V``) and singular values below ``cutoff * sigma_max`` are cut,
   at most half the rank at one check.

The optimiser keeps running: a replaced weight's place in the optimiser's ``param_groups`` is
taken by the new core, and its state moves with it as a gradient would, ``m_S = U^T m_W V``
for first moments and ``(U*U)^T v_W (V*V)`` for second moments (non-negative, the variance of
the projected gradient for independent entries); ``step`` carries over. Learning-rate
schedulers hold the optimiser, not the parameters, so they keep working.

The factorised structure lives in the model's ``state_dict`` (``<layer>.U``, ``.S``, ``.V``);
:func:`lcag.training.lowrank.restore_low_rank` rebuilds it from those shapes before loading
(:class:`lcag.module.LCAGModule` calls it on resume and in ``from_checkpoint``, as does
:class:`lcag.Reconstructor`). The schedule (previous bases, ranks, history) is this
callback's checkpoint state. Under DDP, rank 0's decisions are broadcast, the new factors and
optimiser state are broadcast from rank 0, and the model is wrapped again for DDP's reducer to
see the new parameters.

In a config::

    trainer:
      callbacks:
        - class_path: lcag.training.oialr.OIALR
          init_args: {warmup_steps: 1000, frequency: 500}
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lcag.training.lowrank import (
    LowRankLinear,
    dense_linears,
    get_submodule,
    kept_rank,
    low_rank_layers,
    set_submodule,
)

__all__ = ["OIALR", "basis_stability", "move_state", "orthogonal_factor"]

SQUARED_STATE = ("exp_avg_sq", "max_exp_avg_sq", "square_avg")


def orthogonal_factor(weight: torch.Tensor) -> torch.Tensor:
    """``U V^T`` ``(out, in)`` from the reduced SVD of ``weight (out, in)``, in float64."""
    U, _, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return U @ Vh


def basis_stability(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Mean over columns of the cosine similarity of two ``(out, in)`` bases: 1 when the
    basis has not moved. ``previous`` (kept on the CPU between checks) moves to
    ``current``'s device."""
    previous, current = previous.to(current.device).double(), current.double()
    dot = (previous * current).sum(0)
    norms = previous.norm(dim=0) * current.norm(dim=0)
    return float((dot / norms.clamp(min=1e-12)).mean())


def move_state(
    optimizer: torch.optim.Optimizer,
    old: nn.Parameter,
    new: nn.Parameter,
    left: torch.Tensor,
    right: torch.Tensor,
    old_shape: torch.Size | None = None,
) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer`` (``new`` may be ``old`` itself,
    resized) and move ``old``'s state along the projection ``X -> left^T X right``:
    ``(a, b)`` state tensors (``exp_avg``, momentum) are projected, squared ones
    (``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``) go through ``(left*left)^T X
    (right*right)``, the rest (``step``) is kept.

    Args:
        optimizer: the optimiser holding ``old``.
        old, new: the parameter replaced and its replacement ``(k, k')``.
        left: ``(a, k)``; right: ``(b, k')``; ``(a, b)`` is the old parameter's shape.
        old_shape: the old shape, when ``new is old`` and has already been resized.
    """
    shape = old.shape if old_shape is None else old_shape
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if not state:
        return
    moved = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == shape and value.dim() == 2:
            a, b = left.to(value), right.to(value)
            if key in SQUARED_STATE:
                a, b = a * a, b * b
            value = (a.T @ value @ b).contiguous()
        moved[key] = value
    optimizer.state[new] = moved


class OIALR(pl.Callback):
    """Orthogonality-informed adaptive low-rank training (see the module's docstring).

    Args:
        warmup_steps: optimiser steps at full rank before the first check.
        frequency: optimiser steps between checks (100-2,000 is the useful range).
        stability: a layer is factorised once the stability of its orthogonal basis
            between two checks reaches this (-1 or less: at the second check, whatever it is).
        cutoff: singular values below ``cutoff`` times the layer's largest are cut.
        max_drop: at most this share of a layer's rank is cut at one check.
        min_ratio: only weights whose smaller side exceeds ``min_ratio`` times the larger
            are factorised.
        module: the LightningModule's submodule whose layers are factorised (``model``, the
            network; ``""``: every layer of the LightningModule).
        verbose: print a line per check that changed something (rank 0).
    """

    def __init__(
        self,
        warmup_steps: int = 1000,
        frequency: int = 500,
        stability: float = 0.99,
        cutoff: float = 0.1,
        max_drop: float = 0.5,
        min_ratio: float = 0.1,
        module: str = "model",
        verbose: bool = True,
    ) -> None:
        if frequency < 1 or warmup_steps < 0:
            raise ValueError(f"frequency = {frequency}, warmup_steps = {warmup_steps}")
        if not 0 <= cutoff < 1 or not 0 <= max_drop < 1:
            raise ValueError(f"cutoff = {cutoff}, max_drop = {max_drop}: both in [0, 1)")
        self.warmup_steps, self.frequency = int(warmup_steps), int(frequency)
        self.stability, self.cutoff, self.max_drop = float(stability), float(cutoff), max_drop
        self.min_ratio, self.module, self.verbose = float(min_ratio), module, verbose
        self.previous: dict[str, torch.Tensor] = {}  # layer -> basis at the last check
        self.ranks: dict[str, int] = {}  # factorised layer -> its rank
        self.full_ranks: dict[str, int] = {}  # factorised layer -> min(out, in)
        self.history: list[dict[str, Any]] = []
        self.stabilities: dict[str, float] = {}  # dense layer -> stability at the last check
        self.logged: dict[str, float] = {}  # logged every step once the first check is done
        self.last_check = -1

    # ------------------------------------------------------------------ selection
    def eligible(self, weight: torch.Tensor) -> bool:
        """Whether a 2-D weight is factorised: ``min(shape) > min_ratio * max(shape)``."""
        return weight.dim() == 2 and min(weight.shape) > self.min_ratio * max(weight.shape)

    def root(self, pl_module: pl.LightningModule) -> nn.Module:
        """The submodule whose layers are converted."""
        return get_submodule(pl_module, self.module)

    def _name(self, name: str) -> str:
        return f"{self.module}.{name}" if self.module and name else name or self.module

    # --------------------------------------------------------------------- hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        due = step >= self.warmup_steps and not (step - self.warmup_steps) % self.frequency
        if due and step != self.last_check:
            self.last_check = step
            before = len(self.history)
            if self.check(pl_module, trainer.optimizers, step, trainer):
                _rewrap_ddp(trainer)
            changed = len(self.history) - before
            self.logged = {
                "oialr/trained_parameters": float(trained_parameters(pl_module)),
                "oialr/low_rank_layers": float(len(self.ranks)),
            }
            if self.stabilities:  # of the layers dense at this check
                self.logged["oialr/min_stability"] = min(self.stabilities.values())
            if changed and self.verbose and trainer.is_global_zero:
                print(
                    f"OIALR step {step}: {len(self.ranks)} low-rank layers ({changed} changed), "
                    f"{self.logged['oialr/trained_parameters']:,.0f} trained parameters"
                )
        if self.logged:  # every step, so that the logger's interval always finds them
            pl_module.log_dict(self.logged, on_step=True, on_epoch=False, batch_size=1)

    @torch.no_grad()
    def check(
        self,
        pl_module: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        step: int,
        trainer: pl.Trainer | None = None,
    ) -> bool:
        """One check: factorise the dense layers whose basis is stable, re-diagonalise and
        prune the factorised ones. Returns whether any parameter was replaced or rewritten
        (then a DDP wrapper must be rebuilt).

        Decisions (which layers convert, which ranks remain) are taken on DDP rank 0 and
        broadcast; the resulting factors and optimiser state are broadcast from rank 0."""
        root = self.root(pl_module)
        dense = [
            (name, layer)
            for name, layer in dense_linears(root)
            if self.eligible(layer.weight) and self._name(name) not in self.ranks
        ]
        bases = {name: orthogonal_factor(layer.weight) for name, layer in dense}
        stabilities = {
            name: basis_stability(self.previous[self._name(name)], basis)
            for name, basis in bases.items()
            if self._name(name) in self.previous
            and self.previous[self._name(name)].shape == basis.shape
        }
        keeps = {}
        for name, layer in low_rank_layers(root):
            sigma = torch.linalg.svdvals(layer.S.detach().double())
            keeps[name] = kept_rank(sigma, self.cutoff, self.max_drop)
        decision = {
            "convert": sorted(n for n, s in stabilities.items() if s >= self.stability),
            "keep": keeps,
            "stability": stabilities,
        }
        if trainer is not None and trainer.world_size > 1:
            decision = trainer.strategy.broadcast(decision, src=0)
        self.stabilities = {self._name(n): s for n, s in decision["stability"].items()}
        touched: list[tuple[nn.Module, list[nn.Parameter]]] = []
        for name, layer in low_rank_layers(root):
            keep = int(decision["keep"].get(name, layer.rank))
            shape, k = layer.S.shape, layer.rank
            P, Q, _ = layer.rediagonalise(keep=keep)
            layer.S.grad = None  # the last step's, of the old shape
            for optimizer in optimizers:
                move_state(optimizer, layer.S, layer.S, P, Q, old_shape=shape)
            self.ranks[self._name(name)] = keep
            if keep != k:
                self.history.append(
                    {"step": step, "layer": self._name(name), "event": "pruned", "rank": keep}
                )
            touched.append((layer, [layer.S]))
        for name in decision["convert"]:
            dense_layer = get_submodule(root, name)
            weight = dense_layer.weight
            layer = LowRankLinear.from_dense(weight, dense_layer.bias)
            for optimizer in optimizers:
                move_state(optimizer, weight, layer.S, layer.U, layer.V)
            set_submodule(root, name, layer)
            full = layer.rank
            self.ranks[self._name(name)] = full
            self.full_ranks[self._name(name)] = full
            self.previous.pop(self._name(name), None)
            self.history.append(
                {"step": step, "layer": self._name(name), "event": "converted", "rank": full}
            )
            touched.append((layer, [layer.S]))
        for name, basis in bases.items():
            if name not in decision["convert"]:
                self.previous[self._name(name)] = basis.to(torch.float32).cpu()
        if trainer is not None and trainer.world_size > 1:
            _broadcast_factors(touched, optimizers)
        return bool(touched)

    # --------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup_steps,
            "frequency": self.frequency,
            "last_check": self.last_check,
            "ranks": dict(self.ranks),
            "full_ranks": dict(self.full_ranks),
            "previous": {k: v.clone() for k, v in self.previous.items()},
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_check = int(state_dict.get("last_check", -1))
        self.ranks = {k: int(v) for k, v in state_dict.get("ranks", {}).items()}
        self.full_ranks = {k: int(v) for k, v in state_dict.get("full_ranks", {}).items()}
        self.previous = dict(state_dict.get("previous", {}))
        self.history = [dict(h) for h in state_dict.get("history", [])]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """On a resumed fit, check that the module holds the recorded factorised layers."""
        found = {self._name(n): layer.rank for n, layer in low_rank_layers(self.root(pl_module))}
        if self.ranks and found != self.ranks:
            raise RuntimeError(
                f"OIALR: the module's low-rank layers {found} differ from the checkpoint's "
                f"schedule {self.ranks}; load the checkpoint through LCAGModule (its "
                "on_load_checkpoint rebuilds them) or lcag.training.lowrank.restore_low_rank"
            )
        self.ranks = found or self.ranks

    def summary(self, pl_module: nn.Module) -> list[tuple[str, str, int, int]]:
        """``(layer, out x in, rank, full rank)`` of every factorised layer and every
        eligible dense one (at its full rank), in module order."""
        root = self.root(pl_module)
        dense = dict(dense_linears(root))
        rows = []
        for name, module in root.named_modules():
            if isinstance(module, LowRankLinear):
                out, inp, rank = module.out_features, module.in_features, module.rank
            elif name in dense and self.eligible(module.weight):
                (out, inp), rank = module.weight.shape, min(module.weight.shape)
            else:
                continue
            rows.append((self._name(name), f"{out}x{inp}", rank, min(out, inp)))
        return rows


def trained_parameters(module: nn.Module) -> int:
    """The number of trained (``requires_grad``) parameter entries of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _rewrap_ddp(trainer: pl.Trainer) -> None:
    """Wrap the LightningModule in a new ``DistributedDataParallel``: its reducer was built
    for the old parameters."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and trainer.world_size > 1:
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


def _broadcast_factors(
    touched: list[tuple[nn.Module, list[nn.Parameter]]],
    optimizers: list[torch.optim.Optimizer],
) -> None:
    """Rank 0's factors and their optimiser state on every rank (bitwise the same)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for layer, params in touched:
        for tensor in (layer.U, layer.V, *params):
            dist.broadcast(tensor.data, src=0)
        for optimizer in optimizers:
            for p in params:
                for value in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.dim() > 0:
                        dist.broadcast(value, src=0)
