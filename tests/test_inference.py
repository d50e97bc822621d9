"""lcag.Reconstructor: trees from a checkpoint, equal to what the trained module predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategies import PROB_RTOL, assert_same_tree_or_tied, float32_score_tolerance

import lcag
from lcag import is_valid_lcag, tree_to_lcag
from lcag.data import LCAGDataModule, collate
from lcag.errors import InvalidInputError
from lcag.module import LCAGModule

TINY32 = float(np.finfo(np.float32).tiny)  # 1.2e-38: smaller probabilities lose precision


@pytest.mark.filterwarnings("ignore:You are using a custom batch sampler:UserWarning")
def test_matches_the_trained_module(checkpoint, tiny_data):
    import lightning.pytorch as pl

    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    module = LCAGModule.from_checkpoint(checkpoint)
    dm = LCAGDataModule(str(tiny_data), eval_batch_size=128, max_eval_events=300)
    dm.setup("test")
    loader = dm.test_dataloader()[0]
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, use_distributed_sampler=False
    )
    predictions = trainer.predict(module, dataloaders=loader)  # Lightning's own loop
    for batch, expected in zip(loader, predictions, strict=True):
        results = reco.reconstruct(batch["x"].numpy(), batch["mask"].numpy())
        for k, result in enumerate(results):
            real = batch["mask"][k].numpy()
            n = int(real.sum())
            # Same batches, same shapes, same process: in practice bit for bit. The bounds are
            # those of float32 logits that moved by LOGIT_ATOL: a probability by PROB_RTOL,
            # relatively (atol: below float32's smallest normal number, only absolutely); a
            # decoded tree not at all, unless two trees tie within the scores' rounding.
            probs = expected["probs"][k][real][:, real].numpy()
            np.testing.assert_allclose(result.probs, probs, rtol=PROB_RTOL, atol=TINY32)
            leaves = batch["x"][k][real].numpy().astype(np.float64)[None]
            nodes = reco.node_scores(leaves, np.ones((1, n), dtype=bool))  # the full method's
            assert_same_tree_or_tied(
                result.lcag,
                expected["decoded"][k][real][:, real].numpy(),
                result.probs,
                float32_score_tolerance(n),
                node_scores=None if nodes is None else nodes[0],
            )
            assert is_valid_lcag(result.lcag)
            np.testing.assert_array_equal(tree_to_lcag(result.tree), result.lcag)


def assert_same_tree_or_tied_scores(a: lcag.Reconstruction, b: lcag.Reconstruction) -> None:
    """One event reconstructed twice, its float32 logits within LOGIT_ATOL of each other:
    the best score (whichever tree reaches it) moves by at most float32_score_tolerance (node
    evidence, float64 from the same momenta, adds ~1e-14), and the tree is the same unless
    rounding lets two trees that score the same swap places."""
    rounding = float32_score_tolerance(len(b.lcag))
    assert a.score == pytest.approx(b.score, rel=0, abs=rounding)
    if not np.array_equal(a.lcag, b.lcag):  # a tie: either tree is right
        assert is_valid_lcag(a.lcag)


def test_lists_and_arrays_agree_and_order_is_kept(checkpoint, tiny_data):
    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    dm = LCAGDataModule(str(tiny_data))
    dm.setup("test")
    dataset = dm.datasets["test"]
    events = dataset.__getitems__(list(range(0, len(dataset), 7)))
    as_list = reco.reconstruct([e["x"] for e in events], batch_size=16)
    batch = collate(events)
    as_array = reco.reconstruct(batch["x"].numpy(), batch["mask"].numpy())
    assert len(as_list) == len(events)
    for a, b, event in zip(as_list, as_array, events, strict=True):
        n = len(event["x"])
        assert a.lcag.shape == (n, n)
        # Batches of 16 vs one batch of every event: other shapes, other float32 kernels, so
        # the logits move by up to LOGIT_ATOL (not bit for bit), each log-probability by up
        # to twice that, and the score, summed over n(n-1)/2 pairs, by float32_score_tolerance.
        np.testing.assert_allclose(a.probs, b.probs, rtol=PROB_RTOL, atol=TINY32)
        assert_same_tree_or_tied_scores(a, b)
        assert 0 <= a.probability <= 1  # (the score, with node evidence, may be positive)


def test_bad_inputs_are_named(checkpoint):
    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    good = np.random.default_rng(0).normal(size=(2, 4, 4))
    with pytest.raises(InvalidInputError, match="3 features per leaf, expected 4"):
        reco.reconstruct(good[..., :3])
    nan = good.copy()
    nan[1, 2, 0] = np.nan
    with pytest.raises(InvalidInputError, match="event 1, leaf 2, feature 0 is nan"):
        reco.reconstruct(nan)
    with pytest.raises(InvalidInputError, match="has 70 leaves, at most 64 are supported"):
        reco.reconstruct([np.ones((70, 4))])
    with pytest.raises(InvalidInputError, match="checkpoint not found"):
        lcag.Reconstructor.from_checkpoint(checkpoint.with_name("missing.ckpt"))


def test_loads_with_weights_only(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    assert "model" in state["hyper_parameters"]


def test_awkward_events(checkpoint):
    import awkward as ak

    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    rng = np.random.default_rng(1)
    events = [rng.normal(size=(n, 4)) + np.array([0, 0, 0, 30.0]) for n in (3, 6, 2)]
    from_awkward = reco.reconstruct(ak.Array([e.tolist() for e in events]))
    from_list = reco.reconstruct(events)
    assert [r.lcag.shape[0] for r in from_awkward] == [3, 6, 2]
    for a, b in zip(from_awkward, from_list, strict=True):
        assert_same_tree_or_tied_scores(a, b)  # the same padded batch either way


def test_top_k_above_the_exact_limit(checkpoint):
    """Twelve leaves: the approximate decoder's alternatives, distinct valid trees with
    probabilities that never sum above one, the reconstructed tree among them."""
    reco = lcag.Reconstructor.from_checkpoint(checkpoint)
    rng = np.random.default_rng(3)
    p = rng.normal(scale=2.0, size=(2, 12, 3))
    x = np.concatenate([p, np.sqrt((p**2).sum(-1, keepdims=True) + 1.0)], axis=-1)
    for found in reco.reconstruct(x, top_k=4):
        trees = [M for M, _ in found.alternatives]
        probabilities = [q for _, q in found.alternatives]
        assert len(trees) == 4
        assert len({M.tobytes() for M in trees}) == 4
        assert all(is_valid_lcag(M) for M in trees)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0 + 1e-9
        at = [k for k, M in enumerate(trees) if np.array_equal(M, found.lcag)]
        assert len(at) == 1
        assert probabilities[at[0]] == pytest.approx(found.probability)
