"""Low-rank linear layers ``W = U S V^T`` for OIALR training (:mod:`lcag.training.oialr`).

A :class:`LowRankLinear` replaces a dense ``nn.Linear`` (or torch-geometric's ``Linear``) once
the orthogonal bases of its weight have stopped moving: the bases ``U (out, k)`` and
``V (in, k)`` are fixed buffers, the small ``S (k, k)`` and the bias keep training. Its forward
pass is ``x V S^T U^T + b``, three thin products, ``k (in + k + out)`` multiply-adds per row
instead of ``in * out`` (near full rank, where that is more, the layer multiplies by the
dense ``U S V^T`` instead, formed once per call).

Everything here is plain torch (no Lightning), so a model with factorised layers loads for
inference (:class:`lcag.Reconstructor`, ``lcag export``) from its ``state_dict`` alone:
:func:`restore_low_rank` rebuilds the factorised structure from the shapes of the ``U``, ``S``
and ``V`` tensors the state holds, before ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LowRankLinear",
    "dense_linears",
    "factorised_ranks",
    "get_submodule",
    "is_dense_linear",
    "kept_rank",
    "low_rank_layers",
    "restore_low_rank",
    "set_submodule",
]


class LowRankLinear(nn.Module):
    """A linear layer held as ``W = U S V^T``: fixed orthonormal bases, a trained core.

    Args:
        in_features: input width ``in``.
        out_features: output width ``out``.
        rank: ``k``, the width of the core.
        bias: whether the layer has a bias (trained).

    Attributes:
        U: ``(out, k)`` buffer, orthonormal columns (not trained).
        S: ``(k, k)`` parameter, the trained core (diagonal after each
            :meth:`rediagonalise`, full in between).
        V: ``(in, k)`` buffer, orthonormal columns (not trained).
        bias: ``(out,)`` parameter or ``None``.

    Shapes:
        ``x (..., in)`` -> ``(..., out)``
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("U", torch.zeros(out_features, rank))
        self.S = nn.Parameter(torch.zeros(rank, rank))
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features)) if bias else None)
        self.register_buffer("V", torch.zeros(in_features, rank))

    @property
    def rank(self) -> int:
        """The current rank ``k``."""
        return int(self.S.shape[0])

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: nn.Parameter | None) -> LowRankLinear:
        """The exact factorisation of a dense weight ``(out, in)`` at full rank
        ``k = min(out, in)`` (a reduced SVD, ``S`` diagonal); ``bias`` (the dense layer's
        parameter itself, so optimiser state attached to it carries over) is shared."""
        out_features, in_features = weight.shape
        U, s, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        layer = cls(in_features, out_features, s.numel(), bias=False)
        dtype, device = weight.dtype, weight.device
        layer.U = U.to(dtype=dtype, device=device)
        layer.V = Vh.T.contiguous().to(dtype=dtype, device=device)
        layer.S = nn.Parameter(torch.diag(s).to(dtype=dtype, device=device))
        layer.bias = bias
        return layer

    def weight(self) -> torch.Tensor:
        """The dense weight ``U S V^T`` ``(out, in)`` (for checks; the forward pass never
        forms it)."""
        return self.U @ self.S @ self.V.T

    @property
    def factored_is_cheaper(self) -> bool:
        """Whether the three thin products cost fewer multiply-adds per row,
        ``k (in + k + out) < in * out``, than one product with the dense weight."""
        k = self.rank
        return k * (self.in_features + k + self.out_features) < self.in_features * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in)`` -> ``x V S^T U^T + b`` ``(..., out)``: as three thin products when
        that is cheaper (low rank), else through the dense ``U S V^T``, formed once per call
        (near full rank). The same function either way, with the same gradient for ``S``."""
        if self.factored_is_cheaper:
            return F.linear(F.linear(F.linear(x, self.V.T), self.S), self.U, self.bias)
        return F.linear(x, self.weight(), self.bias)

    @torch.no_grad()
    def rediagonalise(
        self, cutoff: float = 0.1, max_drop: float = 0.5, keep: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Fold the SVD of the core, ``S = P diag(sigma) Q^T``, into the bases (``U <- U P``,
        ``V <- V Q``, ``S <- diag(sigma)``) and drop the singular values below
        ``cutoff * sigma_max``, never more than ``floor(max_drop * k)`` of them in one call
        (the smallest go first) and never the largest (:func:`kept_rank`); ``keep`` imposes
        the new rank instead (a decision taken elsewhere, e.g. on DDP rank 0).

        The function is unchanged up to the dropped directions. ``S`` is resized in place
        (``S.data``), so the same ``Parameter`` stays in the optimiser.

        Returns:
            ``P (k, k')``, ``Q (k, k')`` (the kept columns: the new core is ``P^T S Q``,
            which is how optimiser moments move, see :func:`lcag.training.oialr.move_state`)
            and the new rank ``k'``.
        """
        k = self.rank
        P, sigma, Qh = torch.linalg.svd(self.S.detach().double())
        keep = kept_rank(sigma, cutoff, max_drop) if keep is None else int(keep)
        if not 1 <= keep <= k:
            raise ValueError(f"keep = {keep}: the rank must be in 1..{k}")
        P, Q = P[:, :keep], Qh.T[:, :keep]
        dtype = self.S.dtype
        self.U = (self.U.double() @ P).to(dtype)
        self.V = (self.V.double() @ Q).to(dtype)
        self.S.data = torch.diag(sigma[:keep]).to(dtype)
        return P.to(dtype), Q.to(dtype), keep

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


def kept_rank(sigma: torch.Tensor, cutoff: float, max_drop: float = 0.5) -> int:
    """How many of the descending singular values ``sigma (k,)`` survive pruning: those at
    least ``cutoff * sigma[0]``, but at least ``k - floor(max_drop * k)`` and at least 1."""
    k = int(sigma.numel())
    above = int((sigma >= cutoff * sigma[0]).sum()) if k else 0
    return max(above, k - int(max_drop * k), 1)


def is_dense_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a dense linear layer this package can factorise: ``nn.Linear``
    (not the ``out_proj`` of ``nn.MultiheadAttention``, which reads its weight directly) or
    torch-geometric's ``Linear``, with a materialised 2-D weight."""
    cls = type(module)
    pyg = cls.__name__ == "Linear" and cls.__module__.startswith("torch_geometric")
    if not (isinstance(module, nn.Linear) or pyg):
        return False
    if cls.__name__ == "NonDynamicallyQuantizableLinear":  # nn.MultiheadAttention.out_proj
        return False
    weight = getattr(module, "weight", None)
    return (
        isinstance(weight, nn.Parameter)
        and not isinstance(weight, nn.parameter.UninitializedParameter)
        and weight.dim() == 2
    )


def dense_linears(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` of every dense linear layer under ``root``
    (:func:`is_dense_linear`), names prefixed with ``prefix``; ``nn.MultiheadAttention``'s
    projections are left out (its forward pass uses ``in_proj_weight`` and
    ``out_proj.weight`` as raw tensors, so a factorised module there would be bypassed)."""
    for name, module in root.named_modules(prefix=prefix):
        if isinstance(module, nn.MultiheadAttention):
            continue
        if is_dense_linear(module) and not _under_mha(root, name[len(prefix) :].lstrip(".")):
            yield name, module


def _under_mha(root: nn.Module, name: str) -> bool:
    parts = name.split(".")
    module = root
    for part in parts[:-1]:
        module = getattr(module, part)
        if isinstance(module, nn.MultiheadAttention):
            return True
    return False


def low_rank_layers(root: nn.Module) -> Iterator[tuple[str, LowRankLinear]]:
    """``(qualified name, layer)`` of every :class:`LowRankLinear` under ``root``."""
    for name, module in root.named_modules():
        if isinstance(module, LowRankLinear):
            yield name, module


def get_submodule(root: nn.Module, name: str) -> nn.Module:
    """``root``'s submodule at dotted ``name`` (``""`` is ``root``)."""
    return root.get_submodule(name) if name else root


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``name`` under ``root``, in the old one's slot (so parameter
    order, hence optimiser state order, is kept)."""
    parent_name, _, child = name.rpartition(".")
    setattr(get_submodule(root, parent_name), child, module)


def factorised_ranks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``{layer: rank}`` of the factorised layers a ``state_dict`` holds (``<layer>.U``,
    ``.S``, ``.V``), names as in the state."""
    ranks = {}
    for key, S in state_dict.items():
        name = key[: -len(".S")] if key.endswith(".S") else None
        if name and f"{name}.U" in state_dict and f"{name}.V" in state_dict and S.dim() == 2:
            ranks[name] = int(S.shape[0])
    return ranks


def restore_low_rank(root: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Make ``root``'s structure fit a ``state_dict`` with factorised layers: every layer
    whose state has ``<name>.U (out, k)``, ``<name>.S (k, k)``, ``<name>.V (in, k)`` becomes
    a :class:`LowRankLinear` of rank ``k`` (a :class:`LowRankLinear` of another rank is
    rebuilt), keeping its bias ``Parameter`` when the shapes agree. Call it before
    ``root.load_state_dict(state_dict)``; names are relative to ``root``.

    Returns:
        The names of the layers that were (re)built.
    """
    rebuilt = []
    for key, S in state_dict.items():
        if not key.endswith(".S") and key != "S":
            continue
        name = key[: -len(".S")] if key != "S" else ""
        U, V = state_dict.get(_join(name, "U")), state_dict.get(_join(name, "V"))
        if U is None or V is None or S.dim() != 2:
            continue
        try:
            old = get_submodule(root, name)
        except AttributeError:
            continue  # not this root's layer: load_state_dict reports it
        (out_features, k), in_features = U.shape, V.shape[0]
        if isinstance(old, LowRankLinear) and old.rank == k:
            continue
        if not (isinstance(old, LowRankLinear) or is_dense_linear(old)):
            continue
        has_bias = _join(name, "bias") in state_dict
        layer = LowRankLinear(in_features, out_features, k, bias=has_bias)
        layer.to(device=S.device, dtype=S.dtype)
        bias = getattr(old, "bias", None)
        if has_bias and isinstance(bias, nn.Parameter) and bias.shape == (out_features,):
            layer.bias = bias
        set_submodule(root, name, layer)
        rebuilt.append(name)
    return rebuilt


def _join(name: str, attribute: str) -> str:
    return f"{name}.{attribute}" if name else attribute
