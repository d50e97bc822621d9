"""Model inputs computed from raw leaf 4-momenta: normalisation and pair features.

These run inside the model's module (training) and in inference alike, so both see exactly
the same inputs; the normalisation statistics travel in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lcag.errors import ConfigError

__all__ = ["PAIR_FEATURES", "model_inputs", "normalise", "pair_features"]

#: Pair features that can be switched on, in the order they are stacked.
PAIR_FEATURES = {
    "mass": "log(1 + m_ij): invariant mass of the two leaves together",
    "angle": "cos of the opening angle between the two momenta",
}


def check_pair_features(names: Sequence[str]) -> list[str]:
    """The names, checked against :data:`PAIR_FEATURES`."""
    unknown = [n for n in names if n not in PAIR_FEATURES]
    if unknown:
        raise ConfigError(
            f"pair_features: unknown {unknown[0]!r}; choose from {', '.join(PAIR_FEATURES)}"
        )
    return list(names)


def normalise(
    x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """``(x - mean) / std`` on real leaves, 0 on padding.

    Args:
        x: ``(B, L, F)`` raw features; mask: ``(B, L)`` bool; mean, std: ``(F,)``.

    Returns:
        ``(B, L, F)``.
    """
    return torch.where(mask[..., None], (x - mean) / std, torch.zeros((), dtype=x.dtype))


def pair_features(p: torch.Tensor, mask: torch.Tensor, names: Sequence[str]) -> torch.Tensor | None:
    """Physics-informed pair features from raw 4-momenta.

    Args:
        p: ``(B, L, 4)`` raw ``(px, py, pz, E)``.
        mask: ``(B, L)`` bool, real leaves.
        names: which features, from :data:`PAIR_FEATURES`.

    Returns:
        ``(B, L, L, P)`` (0 on padded pairs), or ``None`` when ``names`` is empty.
    """
    if not names:
        return None
    pair_mask = (mask[:, :, None] & mask[:, None, :])[..., None]
    out = []
    for name in names:
        if name == "mass":
            total = p[:, :, None, :] + p[:, None, :, :]
            m2 = total[..., 3] ** 2 - (total[..., :3] ** 2).sum(-1)
            out.append(torch.log1p(torch.sqrt(torch.clamp(m2, min=0.0))))
        elif name == "angle":
            direction = p[..., :3] / torch.clamp(p[..., :3].norm(dim=-1, keepdim=True), min=1e-12)
            out.append(direction @ direction.transpose(1, 2))
        else:
            check_pair_features([name])
    stacked = torch.stack(out, dim=-1)
    return torch.where(pair_mask, stacked, torch.zeros((), dtype=stacked.dtype))


def model_inputs(
    x: torch.Tensor,
    mask: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    pair_names: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a backbone takes from raw leaves: normalised features and pair features.

    Training, :class:`lcag.Reconstructor` and the exported graph all call this, so they feed
    their models alike.

    Args:
        x: ``(B, L, F)`` raw features (``px, py, pz, E`` first); mask: ``(B, L)`` bool;
        mean, std: ``(F,)`` training statistics; pair_names: from :data:`PAIR_FEATURES`.

    Returns:
        ``(B, L, F)`` normalised leaves and ``(B, L, L, P)`` pair features (or ``None``).
    """
    return normalise(x, mask, mean, std), pair_features(x, mask, pair_names)
