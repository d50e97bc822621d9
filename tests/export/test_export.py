"""ONNX and TorchScript export: parity with PyTorch for both models, every leaf count of the
tiny test events, padded batches; the dense NRI path against the message-passing model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lcag import Reconstructor
from lcag.data import LCAGDataset
from lcag.export.graph import DenseNRI, ExportGraph
from lcag.export.onnx import export_checkpoint
from lcag.models import LCAGNRI, LCAGTransformer

ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5
PER_SIZE = 6  # events per leaf count


def train_briefly(module, tiny_data: Path, root: Path) -> Path:
    """A few optimiser steps and one validation on tiny data, saved as ``lcag fit`` does."""
    import lightning.pytorch as pl

    from lcag.data import LCAGDataModule

    pl.seed_everything(1)
    dm = LCAGDataModule(str(tiny_data), batch_size=32, max_train_events=200, max_eval_events=40)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=4, logger=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=0, enable_checkpointing=False, default_root_dir=root,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
        warnings.filterwarnings("ignore", message=r"The number of training batches \(4\)")
        trainer.fit(module, dm)
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def other_checkpoints(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """NRI with pair features (their edges start from them), trained for a few steps; NRI
    without (edges from the node pair) and a Transformer without, untrained, saved in
    Lightning's format."""
    from lcag.module import LCAGModule

    root = tmp_path_factory.mktemp("nri")
    with_pairs = LCAGModule(
        LCAGNRI(n_classes=5, dim=32, depth=2, n_pair_features=2),
        pair_features=["mass", "angle"], node_evidence="mass_prior", mass_prior_events=200,
        lr=3e-3,
    )  # fmt: skip
    trained = train_briefly(with_pairs, tiny_data, root)
    out = {"nri_pairs": trained}
    torch.manual_seed(2)
    for name, model in (
        ("nri_plain", LCAGNRI(n_classes=5, dim=32, depth=2)),
        ("transformer_plain", LCAGTransformer(n_classes=5, dim=32, depth=2, heads=4)),
    ):
        plain = LCAGModule(model, node_evidence="none")
        plain.feature_std.fill_(15.0)
        out[name] = root / f"{name}.ckpt"
        state = {"state_dict": plain.state_dict(), "hyper_parameters": dict(plain.hparams)}
        torch.save(state, out[name])
    return out


@pytest.fixture(scope="module")
def models(checkpoint: Path, other_checkpoints: dict[str, Path]) -> dict[str, Path]:
    """The trained Transformer (pair features), the NRI model with and without pair features,
    the Transformer without them."""
    return {"transformer": checkpoint, **other_checkpoints}


@pytest.fixture(scope="module")
def test_events(tiny_data: Path) -> dict[int, np.ndarray]:
    """Up to PER_SIZE tiny test events of each leaf count, ``n -> (k, n, 4)`` float32."""
    dataset = LCAGDataset(tiny_data, "test")
    by_size: dict[int, list[np.ndarray]] = {}
    for event in dataset.__getitems__(range(len(dataset))):
        by_size.setdefault(len(event["x"]), []).append(event["x"])
    return {n: np.stack(xs[:PER_SIZE]).astype(np.float32) for n, xs in sorted(by_size.items())}


@pytest.fixture(scope="module")
def exported(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("exported")
    files = {}
    for name, ckpt in models.items():
        for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
            files[name, fmt] = out / f"{name}.{suffix}"
            export_checkpoint(ckpt, fmt, files[name, fmt])
    return files


def padded(test_events: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two events of every leaf count in one batch padded to the largest, garbage in the
    padding (it must not matter)."""
    L = max(test_events)
    events = [x for xs in test_events.values() for x in xs[:2]]
    x = np.full((len(events), L, 4), 1e3, dtype=np.float32)
    mask = np.zeros((len(events), L), dtype=bool)
    for k, event in enumerate(events):
        x[k, : len(event)], mask[k, : len(event)] = event, True
    return x, mask


def onnx_runner(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as torch in these tests (conftest.py)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x, mask: session.run(None, {"x": x, "mask": mask})[0]


def torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path))

    def run(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # without the JIT's profiling and fusion passes: they cost seconds per new shape
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return module(torch.from_numpy(x), torch.from_numpy(mask)).numpy()

    return run


def test_export_graph_is_the_reconstructors_function(checkpoint, test_events):
    graph = ExportGraph.from_checkpoint(checkpoint)
    reco = Reconstructor.from_checkpoint(checkpoint)
    x, mask = padded(test_events)
    with torch.no_grad():
        probs = graph(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    assert np.abs(probs - reco.probabilities(x, mask)).max() <= TOLERANCE
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["transformer", "transformer_plain", "nri_pairs", "nri_plain"])
def test_export_matches_pytorch_at_every_leaf_count(name, fmt, models, exported, test_events):
    reco = Reconstructor.from_checkpoint(models[name])
    run = (onnx_runner if fmt == "onnx" else torchscript_runner)(exported[name, fmt])
    assert len(test_events) >= 6, sorted(test_events)  # tiny: 2..8 leaves
    for n, x in test_events.items():
        mask = np.ones(x.shape[:2], dtype=bool)
        expected, got = reco.probabilities(x, mask), run(x, mask)
        assert got.shape == expected.shape == (len(x), n, n, 5)
        assert np.abs(got - expected).max() <= TOLERANCE, (name, fmt, n)
    x, mask = padded(test_events)
    expected, got = reco.probabilities(x, mask), run(x, mask)
    assert np.abs(got - expected).max() <= TOLERANCE, (name, fmt, "padded")
    # padding does not reach the real leaves: each padded event equals its own run alone
    for k in (0, len(x) - 1):
        n = int(mask[k].sum())
        alone = run(x[k : k + 1, :n], mask[k : k + 1, :n])[0]
        assert np.abs(got[k, :n, :n] - alone).max() <= TOLERANCE


@pytest.mark.parametrize("n_pair", [0, 2])
def test_dense_nri_equals_message_passing(n_pair):
    """The dense path is the same function as the torch-geometric model, including events of
    one leaf (a node without neighbours) and leaves padded anywhere."""
    torch.manual_seed(n_pair)
    model = LCAGNRI(n_classes=6, dim=24, depth=3, n_pair_features=n_pair).eval()
    x = torch.randn(5, 7, 4)
    mask = torch.rand(5, 7) < 0.7
    mask[0], mask[1], mask[2] = True, False, False
    mask[1, 3], mask[2, 0:2] = True, True  # one leaf; two leaves
    pair = None
    if n_pair:
        pair = torch.randn(5, 7, 7, n_pair)
        pair = torch.where(
            (mask[:, :, None] & mask[:, None])[..., None], pair + pair.transpose(1, 2), 0.0
        )
    with torch.no_grad():
        logits, leaves = model.forward_with_leaves(x, mask, pair)
        dense_logits, dense_leaves = DenseNRI(model).forward_with_leaves(x, mask, pair)
    pairs = mask[:, :, None] & mask[:, None, :]
    assert torch.allclose(dense_logits, logits, atol=TOLERANCE, rtol=0)
    assert bool(pairs.any())
    assert torch.allclose(dense_leaves, leaves, atol=TOLERANCE, rtol=0)
