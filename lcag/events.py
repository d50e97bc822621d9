"""Events as analyses hold them (arrays, lists, awkward arrays) -> padded numpy arrays.

Shared by the model's :class:`lcag.inference.Reconstructor` and the physics baselines, so both
accept the same inputs and reject the same mistakes. No torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lcag.errors import InvalidInputError

__all__ = ["ENERGY_ATOL", "ENERGY_RTOL", "as_padded", "check_energies"]

# A massless leaf stored in float32 has E and |p| each rounded by up to 6e-8 relative; E
# recomputed from a smeared momentum and a mass adds a few more ulps. 1e-5 is far above that
# and far below any real mix-up of columns (which gives E < |p| by tens of per cent).
ENERGY_RTOL = 1e-5
ENERGY_ATOL = 1e-9


def as_padded(
    leaves: Any, mask: np.ndarray | None, n_features: int, max_leaves: int
) -> tuple[np.ndarray, np.ndarray]:
    """Any accepted input as ``x (N, L, F)`` float64 and ``mask (N, L)`` bool, checked.

    Args:
        leaves: ``(N, L, F)`` array (or tensor), a list of ``(L_i, F)`` arrays, or an awkward
            array of events of ``F``-vectors.
        mask: ``(N, L)`` bool for an array input, ``True`` for real leaves.
        n_features: the ``F`` expected.
        max_leaves: the largest event accepted.

    Raises:
        InvalidInputError: a wrong shape or feature count, NaN or infinite values, an
            event with more than ``max_leaves`` leaves, or, for 4-momenta, a leaf with
            ``E < |p|`` beyond rounding (the message names the event and leaf).
    """
    if type(leaves).__module__.split(".")[0] == "awkward":
        import awkward as ak

        leaves = [np.asarray(event, dtype=np.float64) for event in ak.to_list(leaves)]
    if isinstance(leaves, np.ndarray) or type(leaves).__module__.split(".")[0] == "torch":
        x = np.asarray(leaves, dtype=np.float64)
        if x.ndim != 3:
            raise InvalidInputError(f"leaves: expected shape (N, L, F), got {x.shape}")
        mask = np.ones(x.shape[:2], dtype=bool) if mask is None else np.asarray(mask)
        if mask.shape != x.shape[:2] or mask.dtype != bool:
            raise InvalidInputError(
                f"mask: expected bool shape {x.shape[:2]}, got {mask.dtype} {mask.shape}"
            )
    else:
        if mask is not None:
            raise InvalidInputError("mask: only for an (N, L, F) array")
        events = [np.asarray(e, dtype=np.float64) for e in leaves]
        if not events:
            return np.zeros((0, 1, n_features)), np.zeros((0, 1), dtype=bool)
        for n, event in enumerate(events):
            if event.ndim != 2 or event.shape[1] != events[0].shape[1]:
                raise InvalidInputError(
                    f"leaves[{n}]: expected (L, F) like event 0 ({events[0].shape}), "
                    f"got {event.shape}"
                )
        size = max(len(e) for e in events)
        x = np.zeros((len(events), size, events[0].shape[1]))
        mask = np.zeros((len(events), size), dtype=bool)
        for n, event in enumerate(events):
            x[n, : len(event)] = event
            mask[n, : len(event)] = True
    if x.shape[-1] != n_features:
        raise InvalidInputError(
            f"leaves: {x.shape[-1]} features per leaf, expected {n_features} (px, py, pz, E)"
        )
    bad = mask[..., None] & ~np.isfinite(x)
    if bad.any():
        n, leaf, feature = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"leaves: event {n}, leaf {leaf}, feature {feature} is {x[n, leaf, feature]}"
        )
    counts = mask.sum(1)
    if counts.size and counts.max() > max_leaves:
        n = int(np.argmax(counts))
        raise InvalidInputError(
            f"leaves: event {n} has {int(counts[n])} leaves, at most {max_leaves} are supported"
        )
    if n_features >= 4:  # (px, py, pz, E) first
        check_energies(x[..., :4], mask)
    return x, mask


def check_energies(x: np.ndarray, mask: np.ndarray, rtol: float = ENERGY_RTOL) -> None:
    """Refuse leaves whose energy is below their momentum beyond rounding (``E < |p|``).

    Such leaves are unphysical; nearly always the columns came as ``(E, px, py, pz)``.

    Args:
        x: ``(N, L, 4)`` leaves ``(px, py, pz, E)``.
        mask: ``(N, L)`` bool, real leaves.
        rtol: the relative shortfall of ``E`` below ``|p|`` that rounding can explain.

    Raises:
        InvalidInputError: naming the first such event and leaf, and the expected columns.
    """
    momentum = np.sqrt(np.sum(x[..., :3] ** 2, axis=-1))
    energy = x[..., 3]
    bad = mask & (energy < momentum * (1 - rtol) - ENERGY_ATOL)
    if bad.any():
        n, leaf = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"leaves: event {n}, leaf {leaf} has E = {energy[n, leaf]:.6g} below "
            f"|p| = {momentum[n, leaf]:.6g}; the columns must be (px, py, pz, E)"
        )
