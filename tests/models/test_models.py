"""The model contract, for every model with and without pair features: shape, symmetry,
padding invariance, permutation equivariance, config round trip, and a tiny overfit."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from strategies import LOGIT_ATOL

from lcag.errors import InvalidInputError
from lcag.models import LCAGNRI, LCAGModel, LCAGTransformer, PairHead

C, F, P = 5, 4, 2

MODELS: dict[str, Callable[[], LCAGModel]] = {
    "transformer": lambda: LCAGTransformer(n_features=F, n_classes=C, dim=32, depth=2, heads=4),
    "transformer+pair": lambda: LCAGTransformer(
        n_features=F, n_classes=C, dim=32, depth=2, heads=4, n_pair_features=P
    ),
    "nri": lambda: LCAGNRI(n_features=F, n_classes=C, dim=32, depth=2),
    "nri+pair": lambda: LCAGNRI(n_features=F, n_classes=C, dim=32, depth=2, n_pair_features=P),
}


@pytest.fixture(params=list(MODELS))
def model(request: pytest.FixtureRequest) -> LCAGModel:
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def uses_pairs(model: LCAGModel) -> bool:
    return model.init_args["n_pair_features"] > 0


def random_batch(
    B: int, L: int, sizes: list[int] | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (B, L, F)``, ``mask (B, L)`` (first ``sizes[b]`` leaves real), symmetric
    ``pair (B, L, L, P)``; padding holds NaN, which must never reach the output."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [L] * B
    mask = torch.arange(L)[None, :] < torch.tensor(sizes)[:, None]
    x = torch.randn(B, L, F, generator=g)
    pair = torch.randn(B, L, L, P, generator=g)
    pair = pair + pair.transpose(1, 2)
    x = x.masked_fill(~mask[..., None], float("nan"))
    pair_mask = mask[:, :, None] & mask[:, None, :]
    pair = pair.masked_fill(~pair_mask[..., None], float("nan"))
    return x, mask, pair


def run(model: LCAGModel, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    return model(x, mask, pair if uses_pairs(model) else None)


def test_shape_finite_symmetric(model: LCAGModel) -> None:
    x, mask, pair = random_batch(3, 6, sizes=[6, 4, 1])
    with torch.no_grad():
        logits = run(model, x, mask, pair)
    assert logits.shape == (3, C, 6, 6)
    assert torch.isfinite(logits).all()
    # (i, j) and (j, i) get bit-identical inputs, only in other rows of the same matmuls:
    # equal, up to the rounding of a kernel that treats some rows differently (LOGIT_ATOL)
    torch.testing.assert_close(logits, logits.transpose(2, 3), atol=LOGIT_ATOL, rtol=0)


def test_padding_does_not_change_real_leaves(model: LCAGModel) -> None:
    L = 4
    x, mask, pair = random_batch(2, L + 3, sizes=[L, L + 3])
    with torch.no_grad():
        batched = run(model, x, mask, pair)
        alone = run(model, x[:1, :L], mask[:1, :L], pair[:1, :L, :L])
    # other batch shapes, other float32 kernels: equal up to LOGIT_ATOL, not bit for bit
    torch.testing.assert_close(batched[:1, :, :L, :L], alone, atol=LOGIT_ATOL, rtol=0)


def test_permutation_equivariance(model: LCAGModel) -> None:
    x, mask, pair = random_batch(2, 6, sizes=[6, 4], seed=1)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        logits = run(model, x, mask, pair)
        permuted = run(model, x[:, perm], mask[:, perm], pair[:, perm][:, :, perm])
    expected = logits[:, :, perm][:, :, :, perm]
    real = (mask[:, perm, None] & mask[:, None, perm])[:, None].expand_as(expected)
    # permuted rows reach the kernels in another order: equal up to LOGIT_ATOL
    torch.testing.assert_close(permuted[real], expected[real], atol=LOGIT_ATOL, rtol=0)


def test_config_round_trip(model: LCAGModel) -> None:
    config = json.loads(json.dumps(model.config()))
    assert config["class_path"] == f"{type(model).__module__}.{type(model).__name__}"
    rebuilt = LCAGModel.from_config(config).eval()
    assert type(rebuilt) is type(model)
    assert rebuilt.init_args == model.init_args
    rebuilt.load_state_dict(model.state_dict())
    x, mask, pair = random_batch(2, 5, sizes=[5, 3])
    with torch.no_grad():  # the same weights on the same batch: torch's float32 defaults
        torch.testing.assert_close(run(rebuilt, x, mask, pair), run(model, x, mask, pair))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"class_path": "lcag.models.LCAGPerceiver"}, r"lcag\.models\.LCAGPerceiver"),
        ({"class_path": "lcag.no_such_module.Model"}, r"lcag\.no_such_module\.Model"),
        ({"class_path": "torch.nn.Linear"}, r"torch\.nn\.Linear.*not an lcag"),
        ({"class_path": "LCAGNRI"}, r"'LCAGNRI'"),
        ({"class_path": "lcag.models.LCAGNRI", "init_args": {"width": 3}}, r"width"),
        ({"init_args": {}}, r"class_path"),
    ],
)
def test_from_config_rejects(config: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        LCAGModel.from_config(config)


@pytest.mark.parametrize("name", ["transformer+pair", "nri+pair"])
def test_pair_features_required(name: str) -> None:
    x, mask, _ = random_batch(1, 3)
    with pytest.raises(InvalidInputError, match=r"n_pair_features=2"):
        MODELS[name]()(x, mask)


def test_pair_head_symmetric_from_directed_pairs() -> None:
    torch.manual_seed(0)
    e = torch.randn(2, 5, 5, 8)  # not symmetric
    logits = PairHead(8, 3).from_pairs(e)
    assert logits.shape == (2, 3, 5, 5)
    torch.testing.assert_close(logits, logits.transpose(2, 3), atol=LOGIT_ATOL, rtol=0)


def random_lcag(L: int, g: torch.Generator) -> torch.Tensor:
    """A random valid LCAG ``(L, L)``: merge two random subtrees until one is left."""
    target = torch.zeros(L, L, dtype=torch.long)
    groups = [([i], 0) for i in range(L)]
    while len(groups) > 1:
        a, b = torch.randperm(len(groups), generator=g)[:2].tolist()
        (la, ha), (lb, hb) = groups[a], groups[b]
        height = max(ha, hb) + 1
        target[torch.tensor(la)[:, None], torch.tensor(lb)[None, :]] = height
        target[torch.tensor(lb)[:, None], torch.tensor(la)[None, :]] = height
        groups = [grp for k, grp in enumerate(groups) if k not in (a, b)] + [(la + lb, height)]
    return target.fill_diagonal_(-1)


def test_tiny_overfit(model: LCAGModel) -> None:
    g = torch.Generator().manual_seed(0)
    x, mask, pair = random_batch(32, 5)
    target = torch.stack([random_lcag(5, g) for _ in range(32)])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(run(model, x, mask, pair), target, ignore_index=-1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::25]
