"""The LightningModule's pieces: masked loss, focal loss, class weights, pair features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lcag.errors import ConfigError
from lcag.features import pair_features
from lcag.models import LCAGTransformer
from lcag.module import LCAGModule, _WarmupCosine


def random_batch(seed: int = 0, B: int = 3, L: int = 5, C: int = 4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, L, L, generator=generator)
    target = torch.randint(1, C, (B, L, L), generator=generator)
    target = torch.minimum(target, target.transpose(1, 2))
    target[:, torch.arange(L), torch.arange(L)] = -1
    target[0, 3:] = -1
    target[0, :, 3:] = -1
    return logits, target


# The losses below are float32 means of ~50 terms computed two ways (the module's masked
# reduction, F.cross_entropy on the selected pairs): a few eps32 (1.2e-7) apart on a loss of
# O(1), inside torch.testing's float32 defaults (rtol 1.3e-6, atol 1e-5).


def test_loss_ignores_diagonal_and_padding():
    module = LCAGModule(LCAGTransformer(n_classes=4))
    logits, target = random_batch()
    valid = target >= 0
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    torch.testing.assert_close(module.loss(logits, target), expected)
    changed = logits.clone()
    changed[0, :, 4, 4] = 100.0  # padding and diagonal entries do not matter
    changed[1, :, 2, 2] = -50.0
    torch.testing.assert_close(module.loss(changed, target), expected)


def test_focal_loss_down_weights_easy_pairs():
    logits, target = random_batch(1)
    plain = LCAGModule(LCAGTransformer(n_classes=4)).loss(logits, target)
    focal = LCAGModule(LCAGTransformer(n_classes=4), focal_gamma=2.0).loss(logits, target)
    assert focal < plain
    valid = target >= 0
    flat = logits.permute(0, 2, 3, 1)[valid]
    p_true = flat.softmax(-1).gather(1, target[valid][:, None])[:, 0]
    expected = ((1 - p_true) ** 2 * -p_true.log()).mean()
    torch.testing.assert_close(focal, expected)


def test_class_weights_give_a_weighted_mean():
    logits, target = random_batch(2)
    weights = [1.0, 0.5, 2.0, 3.0]
    module = LCAGModule(LCAGTransformer(n_classes=4), class_weights=weights)
    valid = target >= 0
    expected = F.cross_entropy(
        logits.permute(0, 2, 3, 1)[valid], target[valid], weight=torch.tensor(weights)
    )
    torch.testing.assert_close(module.loss(logits, target), expected)


def test_pair_features_are_physical():
    # two massless back-to-back particles of energy 5: pair mass 10, cos angle -1
    p = torch.tensor([[[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, -5.0, 5.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    out = pair_features(p, mask, ["mass", "angle"])
    assert out.shape == (1, 3, 3, 2)
    # float32 features from exact inputs: a few eps32 (1.2e-7) relative at most
    assert out[0, 0, 1, 0] == pytest.approx(math.log1p(10.0), rel=1e-6)
    assert out[0, 0, 1, 1] == pytest.approx(-1.0, rel=1e-6)
    assert (out[0, 2] == 0).all()
    assert pair_features(p, mask, []) is None


def test_warmup_then_cosine():
    schedule = _WarmupCosine(warmup=10, total=110)  # float64 arithmetic: approx's rel=1e-6
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5)
    assert schedule(110) == pytest.approx(0.0, abs=1e-12)


def tree_batch(L: int = 5, B: int = 4) -> dict[str, torch.Tensor]:
    """Events of one tree, ``((0, 1), (2, (3, 4)))``, with random physical 4-momenta."""
    from lcag.matrix import tree_to_lcag
    from lcag.tree import DecayTree

    generator = torch.Generator().manual_seed(0)
    p = torch.randn(B, L, 3, generator=generator) * 3
    x = torch.cat([p, (p.pow(2).sum(-1, keepdim=True) + 1).sqrt()], dim=-1)
    lcag = torch.tensor(tree_to_lcag(DecayTree.from_nested(((0, 1), (2, (3, 4))))))
    target = lcag.expand(B, L, L).clone()
    target[:, torch.arange(L), torch.arange(L)] = -1
    return {
        "x": x,
        "mask": torch.ones(B, L, dtype=torch.bool),
        "target": target,
        "n_leaves": torch.full((B,), L),
    }


@pytest.mark.parametrize("tree_loss_weight", [0.0, 1.0])
def test_training_step_adds_the_subset_and_tree_losses(tree_loss_weight):
    torch.manual_seed(0)
    model = LCAGTransformer(n_classes=4, dim=16, depth=1, heads=2)
    batch = tree_batch()
    module = LCAGModule(model, subset_loss_weight=0.0, tree_loss_weight=0.0)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value.detach()))
    with torch.no_grad():
        pair_only = float(module._common_step(batch, "train"))
        logits = module(batch["x"], batch["mask"])
        assert pair_only == pytest.approx(float(module.loss(logits, batch["target"])))
    module.hparams.subset_loss_weight = 1.0
    module.hparams.tree_loss_weight = tree_loss_weight
    total = module._common_step(batch, "train")
    expected = (
        pair_only
        + logged["train/subset_loss"]
        + tree_loss_weight * logged.get("train/tree_nll", 0.0)
    )
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert ("train/tree_nll" in logged) == (tree_loss_weight > 0)
    total.backward()
    head_grad = module.evidence.head.mlp[-1].weight.grad
    assert head_grad is not None
    assert bool(torch.isfinite(head_grad).all())
    assert float(head_grad.abs().sum()) > 0


def _fill_grid(module: LCAGModule, subset: str, correct: dict[tuple[float, ...], int]) -> None:
    """Count ``correct[(weight, share, log_odds)]`` perfect events of 400 (others: 0) in
    ``subset``; a key ``(weight, share)`` is that pair without the topology prior."""
    target = torch.zeros(400, 2, 2, dtype=torch.long)
    for entry, metric in zip(module.weight_grid, module.weight_metrics[subset], strict=True):
        pred = target.clone()
        count = correct.get(entry, correct.get(entry[:2], 0) if entry[2] == -math.inf else 0)
        pred[count:] = 1  # the events past the count wrong
        metric.update(pred, target, torch.full((400,), 2))


@pytest.mark.parametrize(
    ("correct", "chosen"),
    [
        # out of 400 events per weight (0, 0.5, 1, 2, 4, 8, 16, 32, 64), at head share 1
        ([300, 320, 340, 360, 362, 361, 355, 340, 300], 8.0),  # within 1 s.e. (6 events) of 362
        ([300, 320, 340, 360, 390, 360, 355, 340, 300], 4.0),  # 4 alone is best by far
        ([400, 400, 400, 400, 400, 400, 400, 400, 400], 64.0),  # validation can't tell: lean
        ([400, 399, 398, 397, 396, 395, 394, 393, 392], 0.0),  # on the evidence; s.e. 0 at 100%
    ],
)
def test_node_weight_is_the_largest_within_a_standard_error_of_the_best(correct, chosen):
    module = LCAGModule(LCAGTransformer(n_classes=3, dim=8, depth=1, heads=2))
    counts = dict(zip([(w, 1.0) for w in module.node_weights], correct, strict=True))
    _fill_grid(module, "val", counts)
    picked = module._choose_node_weights(["val"])
    assert float(module.node_weight) == chosen
    assert float(module.evidence.head_share) == 1.0  # the other shares got nothing right
    best = module.weight_metrics["val"][picked["perfect_full"]]
    assert float(best.compute()) == pytest.approx(counts[chosen, 1.0] / 400)


def test_unseen_validation_moves_the_choice_to_what_carries_over():
    """Known topologies favour the head's whole correction; unseen ones the prior alone: the
    mean of both decides, and the prior's own weight is the best at share 0."""
    module = LCAGModule(LCAGTransformer(n_classes=3, dim=8, depth=1, heads=2), head_shares=[0.5, 1])
    assert module.head_shares == [0.0, 0.5, 1.0]  # the prior alone is always tried
    with pytest.raises(ConfigError, match="head_shares"):
        LCAGModule(LCAGTransformer(n_classes=3, dim=8, depth=1, heads=2), head_shares=[2.0])
    known = {(8.0, 1.0): 390, (8.0, 0.5): 385, (8.0, 0.0): 370, (2.0, 0.0): 360}
    unseen = {(8.0, 1.0): 200, (8.0, 0.5): 260, (8.0, 0.0): 330, (2.0, 0.0): 200}
    _fill_grid(module, "val", known)
    picked = module._choose_node_weights(["val"])
    assert (float(module.node_weight), float(module.evidence.head_share)) == (8.0, 1.0)
    _fill_grid(module, "val_unseen", unseen)
    picked = module._choose_node_weights(["val", "val_unseen"])
    assert (float(module.node_weight), float(module.evidence.head_share)) == (8.0, 0.0)
    assert float(module.evidence.prior_weight) == 8.0
    assert module.weight_grid[picked["perfect_prior"]] == (8.0, 0.0, -math.inf)
    assert float(module._selection["val/score"]) == pytest.approx((370 + 330) / 800)


def test_topology_odds_are_chosen_with_the_weights_and_off_with_background():
    """The topology prior lifts known topologies at a cost to unseen ones: the mean decides;
    ``perfect_nodes`` is the chosen weights without it; background decoding never takes it."""
    module = LCAGModule(LCAGTransformer(n_classes=3, dim=8, depth=1, heads=2))
    assert module.topology_log_odds == [-math.inf, 0.0, 4.0, 8.0]
    known = {(4.0, 1.0): 300, (4.0, 1.0, 0.0): 330, (4.0, 1.0, 4.0): 360, (4.0, 1.0, 8.0): 380}
    unseen = {(4.0, 1.0): 200, (4.0, 1.0, 0.0): 200, (4.0, 1.0, 4.0): 195, (4.0, 1.0, 8.0): 140}
    _fill_grid(module, "val", known)
    _fill_grid(module, "val_unseen", unseen)
    picked = module._choose_node_weights(["val", "val_unseen"])
    assert float(module.evidence.topology_log_odds) == 4.0  # (360 + 195) beats (380 + 140)
    assert module.weight_grid[picked["perfect_full"]] == (4.0, 1.0, 4.0)
    assert module.weight_grid[picked["perfect_nodes"]] == (4.0, 1.0, -math.inf)
    module.hparams.decode_background = True
    module._choose_node_weights(["val", "val_unseen"])
    assert float(module.evidence.topology_log_odds) == -math.inf
    with pytest.raises(ConfigError, match="topology_log_odds"):
        LCAGModule(LCAGTransformer(n_classes=3, dim=8, depth=1, heads=2),
                   topology_log_odds=[math.inf])  # fmt: skip
