"""OIALR: factorised layers compute what the dense ones did, pruning cuts exactly the small
singular values, optimiser state follows the parameters, a fit resumed after conversion keeps
its ranks, and every loader (LCAGModule, Reconstructor, the export graph) reads the result."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lcag.data import LCAGDataModule
from lcag.data_gen.paper_npy import convert_paper_npy
from lcag.matrix import permute, tree_to_lcag
from lcag.models import LCAGNRI, LCAGTransformer
from lcag.module import LCAGModule
from lcag.training.lowrank import LowRankLinear, dense_linears, kept_rank, low_rank_layers
from lcag.training.oialr import OIALR, move_state

ROOT = Path(__file__).resolve().parents[2]
TREES = [((0, 1), (2, (3, 4))), ((0, (1, 2)), 3), (((0, 1), 2), (3, 4), 5)]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three topologies of 4-6 leaves, 96 shuffled events each, random momenta (the model
    only has to run, not to learn physics), in lcag's format through the paper converter:
    a second, not a minute of phase-space generation."""
    from lcag.tree import DecayTree

    rng = np.random.default_rng(0)
    src = tmp_path_factory.mktemp("npy")
    for folder, index, tree in [("known", 0, TREES[0]), ("known", 1, TREES[1]),
                                ("unknown", 0, TREES[2])]:  # fmt: skip
        lcag = tree_to_lcag(DecayTree.from_nested(tree))
        n = lcag.shape[0]
        masses = rng.uniform(0.5, 3.0, n)
        (src / folder).mkdir(exist_ok=True)
        for split in ("train", "val", "test"):
            p = rng.normal(0, 5.0, (96, n, 3))
            order = np.argsort(rng.random((96, n)), axis=1)
            leaves = np.concatenate([p, np.sqrt((p**2).sum(-1) + masses**2)[..., None]], -1)
            leaves = np.take_along_axis(leaves, order[..., None], 1)
            np.save(src / folder / f"leaves_{split}.{index}.npy", leaves)
            np.save(src / folder / f"lcas_{split}.{index}.npy", permute(lcag, order))
    out = tmp_path_factory.mktemp("data") / "small"
    convert_paper_npy(src, out)
    return out


def transformer() -> LCAGTransformer:
    return LCAGTransformer(n_classes=5, dim=32, depth=1, heads=4, n_pair_features=2)


def small_module(model: nn.Module | None = None) -> LCAGModule:
    return LCAGModule(
        transformer() if model is None else model, pair_features=["mass", "angle"], lr=3e-3,
        node_evidence="none", decode_at_eval=False,
    )  # fmt: skip


def fit(
    module: LCAGModule, data: Path, root: Path, callbacks: list, ckpt_path: str | None = None,
    **kwargs,
) -> pl.Trainer:  # fmt: skip
    dm = LCAGDataModule(str(data), batch_size=32, max_eval_events=64)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
        callbacks=callbacks, **kwargs,
    )  # fmt: skip
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def low_rank(sigma: list[float], out: int = 20, inp: int = 12) -> LowRankLinear:
    """A layer ``U (P diag(sigma) Q^T) V^T`` with a full (not diagonal) core."""
    k = len(sigma)
    layer = LowRankLinear(inp, out, k).double()
    layer.U, layer.V = orthonormal(out, k, 1), orthonormal(inp, k, 2)
    core = orthonormal(k, k, 3) @ torch.diag(torch.tensor(sigma, dtype=torch.float64))
    layer.S.data = core @ orthonormal(k, k, 4).T
    return layer


# ------------------------------------------------------------------------- conversion
@pytest.mark.parametrize(
    "make_model",
    [transformer, lambda: LCAGNRI(n_classes=5, dim=32, depth=2, n_pair_features=2)],
    ids=["transformer", "nri"],
)
def test_a_converted_model_computes_what_the_dense_one_did(make_model):
    torch.manual_seed(0)
    module = small_module(make_model()).eval()
    eligible = [n for n, lin in dense_linears(module.model) if min(lin.weight.shape) > 0.1 *
                max(lin.weight.shape)]  # fmt: skip
    narrow = [n for n, lin in dense_linears(module.model) if n not in eligible]
    x = torch.randn(3, 6, 4) * 5
    x[..., 3] = x[..., :3].norm(dim=-1) + 1
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3], dtype=torch.bool)
    before = module(x, mask)
    callback = OIALR(warmup_steps=0, frequency=1, stability=-1.0, verbose=False)
    callback.check(module, [], step=0)  # first check: bases recorded, nothing converted
    assert not list(low_rank_layers(module))
    callback.check(module, [], step=1)  # second: every eligible layer converts, at full rank
    converted = dict(low_rank_layers(module.model))
    assert sorted(converted) == sorted(eligible)
    assert len(eligible) >= 6
    assert all(layer.rank == min(layer.U.shape[0], layer.V.shape[0])
               for layer in converted.values())  # fmt: skip
    # ineligible layers (2 -> 32 for the pair features: 2 is not above 32 / 10) stay dense
    assert narrow
    assert all(isinstance(module.model.get_submodule(n), nn.Linear) for n in narrow)
    torch.testing.assert_close(module(x, mask), before, atol=1e-5, rtol=1e-5)


def test_torch_geometric_linear_layers_convert_and_multihead_attention_stays_dense():
    from torch_geometric.nn import Linear as GeometricLinear

    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"pyg": GeometricLinear(16, 24), "mha": nn.MultiheadAttention(16, 2, batch_first=True)}
    )
    x = torch.randn(5, 16)
    before = model["pyg"](x)
    callback = OIALR(stability=-1.0, verbose=False, module="")
    callback.check(model, [], 0)
    callback.check(model, [], 1)
    assert isinstance(model["pyg"], LowRankLinear)
    torch.testing.assert_close(model["pyg"](x), before, atol=1e-5, rtol=1e-5)
    # its forward reads in_proj_weight and out_proj.weight directly: not factorised
    assert type(model["mha"].out_proj).__name__ == "NonDynamicallyQuantizableLinear"
    assert list(callback.ranks) == ["pyg"]


def test_the_core_gradient_is_the_projected_dense_gradient():
    torch.manual_seed(0)
    dense = nn.Linear(12, 20)
    x = torch.randn(7, 12)
    dense(x).square().sum().backward()
    layer = LowRankLinear.from_dense(dense.weight, dense.bias)
    assert layer.bias is dense.bias  # shared: its optimiser state stays where it is
    layer(x).square().sum().backward()
    U, V = layer.U, layer.V
    torch.testing.assert_close(layer.S.grad, U.T @ dense.weight.grad @ V, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- pruning
def test_pruning_cuts_exactly_the_singular_values_below_the_cutoff():
    sigma = [10.0, 6.0, 3.0, 1.5, 1.2, 0.5, 0.05, 0.01]  # cutoff 0.1 x 10: four below 1
    layer = low_rank(sigma)
    W = layer.weight()
    U, s, Vh = torch.linalg.svd(W)
    _P, _Q, k = layer.rediagonalise(cutoff=0.1)
    assert k == layer.rank == 5
    assert layer.S.shape == (5, 5)
    assert layer.U.shape == (20, 5)
    assert layer.V.shape == (12, 5)
    torch.testing.assert_close(layer.S, torch.diag(torch.tensor(sigma[:5], dtype=torch.float64)))
    # what is left is the dense weight without its three smallest directions
    best = U[:, :5] @ torch.diag(s[:5]) @ Vh[:5]
    torch.testing.assert_close(layer.weight(), best)
    # the bases stay orthonormal
    torch.testing.assert_close(layer.U.T @ layer.U, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(layer.V.T @ layer.V, torch.eye(5, dtype=torch.float64))


def test_pruning_cuts_at_most_half_the_rank_per_check():
    layer = low_rank([10.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01])  # seven below the cutoff
    assert [layer.rediagonalise(cutoff=0.1)[2] for _ in range(4)] == [4, 2, 1, 1]
    torch.testing.assert_close(layer.S, torch.tensor([[10.0]], dtype=torch.float64))
    assert kept_rank(torch.tensor([5.0, 4.0, 3.0]), cutoff=0.1) == 3  # nothing below: all kept
    assert kept_rank(torch.tensor([5.0, 0.1, 0.1]), cutoff=0.1) == 2  # 3 // 2 = 1 cut at most


# ------------------------------------------------------------------- optimiser state
def test_optimiser_state_follows_the_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    x = torch.randn(16, 12)

    def step() -> None:
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        scheduler.step()

    for _ in range(3):
        step()
    dense = model[0].weight
    old = {k: v.clone() for k, v in optimizer.state[dense].items()}
    callback = OIALR(stability=-1.0, verbose=False, module="")
    callback.check(model, [optimizer], 0)
    callback.check(model, [optimizer], 1)
    layer = model[0]
    assert isinstance(layer, LowRankLinear)
    assert layer.rank == 12
    assert isinstance(model[2], nn.Linear)  # 2 x 24: 2 is not above 24 / 10, stays dense
    params = optimizer.param_groups[0]["params"]
    assert dense not in optimizer.state
    assert not any(p is dense for p in params)
    assert params[0] is layer.S
    assert params[1] is layer.bias
    state = optimizer.state[layer.S]
    U, V = layer.U, layer.V
    torch.testing.assert_close(state["exp_avg"], U.T @ old["exp_avg"] @ V)
    torch.testing.assert_close(state["exp_avg_sq"], (U * U).T @ old["exp_avg_sq"] @ (V * V))
    assert float(state["step"]) == float(old["step"]) == 3.0
    step()  # the optimiser and scheduler keep running on the new parameter
    assert float(optimizer.state[layer.S]["step"]) == 4.0

    # pruning resizes S in place: the same Parameter, state moved along the kept directions
    with torch.no_grad():
        P0, _, Q0h = torch.linalg.svd(layer.S)
        sigma = torch.tensor([10.0, 9, 8, 7, 6, 5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])  # 6 below 1
        layer.S.copy_(P0 @ torch.diag(sigma) @ Q0h)
    S, shape = layer.S, layer.S.shape
    old = {k: v.clone() for k, v in optimizer.state[S].items()}
    P, Q, k = layer.rediagonalise(cutoff=0.1)
    move_state(optimizer, S, S, P, Q, old_shape=shape)
    assert k == 6
    assert layer.S is S
    assert optimizer.param_groups[0]["params"][0] is S
    torch.testing.assert_close(optimizer.state[S]["exp_avg"], P.T @ old["exp_avg"] @ Q)
    torch.testing.assert_close(
        optimizer.state[S]["exp_avg_sq"], (P * P).T @ old["exp_avg_sq"] @ (Q * Q)
    )
    layer.S.grad = None
    step()
    assert optimizer.state[S]["exp_avg"].shape == (6, 6)


# ---------------------------------------------------------------- a real fit, resumed
class RanksAtStart(pl.Callback):
    """Record the low-rank layers' ranks and the optimiser's step when training (re)starts."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ranks = {n: layer.rank for n, layer in low_rank_layers(pl_module)}
        self.step = trainer.global_step
        state = trainer.optimizers[0].state
        self.core_steps = {float(state[layer.S]["step"]) for _, layer in
                           low_rank_layers(pl_module)}  # fmt: skip


@pytest.fixture(scope="module")
def converted(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six steps of a real fit: bases recorded at step 2, layers converted at 4, pruned at 6;
    then the checkpoint."""
    root = tmp_path_factory.mktemp("oialr")
    pl.seed_everything(0)
    module = small_module()
    callback = OIALR(warmup_steps=2, frequency=2, stability=-1.0, cutoff=0.1, verbose=False)
    trainer = fit(module, small_data, root, [callback], max_steps=6)
    path = root / "converted.ckpt"
    trainer.save_checkpoint(path)
    return {"module": module.eval(), "callback": callback, "path": path, "root": root}


def test_a_fit_converts_and_prunes_then_resumes_with_the_same_ranks(converted, small_data):
    callback, module = converted["callback"], converted["module"]
    events = [(h["step"], h["event"]) for h in callback.history]
    assert {s for s, e in events if e == "converted"} == {4}
    ranks = {n: layer.rank for n, layer in low_rank_layers(module)}
    assert ranks == callback.ranks
    assert len(ranks) >= 6
    assert any(h["event"] == "pruned" and h["step"] == 6 for h in callback.history)
    assert any(r < callback.full_ranks[n] for n, r in ranks.items())  # some were pruned
    n_dense = sum(p.numel() for p in small_module().parameters())
    n_trained = sum(p.numel() for p in module.parameters())
    assert n_trained < n_dense

    pl.seed_everything(0)
    resumed = small_module()  # dense, as a fresh run builds it
    probe = RanksAtStart()
    again = OIALR(warmup_steps=2, frequency=2, stability=-1.0, cutoff=0.1, verbose=False)
    trainer = fit(resumed, small_data, converted["root"], [again, probe], max_steps=8,
                  ckpt_path=str(converted["path"]))  # fmt: skip
    assert probe.step == 6
    assert probe.ranks == ranks
    assert probe.core_steps == {6.0}  # the cores' optimiser state came back too
    assert again.history[: len(callback.history)] == callback.history
    assert again.last_check == 8
    assert trainer.global_step == 8


def test_loaders_read_a_converted_checkpoint(converted):
    from lcag.checkpoints import load_checkpoint
    from lcag.export.info import checkpoint_facts
    from lcag.export.onnx import export_checkpoint
    from lcag.inference import Reconstructor

    trained, path = converted["module"], converted["path"]
    ranks = {n: layer.rank for n, layer in low_rank_layers(trained)}
    loaded = LCAGModule.from_checkpoint(path)
    assert {n: layer.rank for n, layer in low_rank_layers(loaded)} == ranks
    x = torch.randn(2, 5, 4) * 5
    x[..., 3] = x[..., :3].norm(dim=-1) + 1
    mask = torch.tensor([[1] * 5, [1] * 4 + [0]], dtype=torch.bool)
    with torch.no_grad():
        expected = trained(x, mask).softmax(dim=1).permute(0, 2, 3, 1)
        torch.testing.assert_close(loaded(x, mask).softmax(dim=1).permute(0, 2, 3, 1), expected)
    reco = Reconstructor.from_checkpoint(path)
    assert {n: layer.rank for n, layer in low_rank_layers(reco.model)} == {
        n[len("model.") :]: r for n, r in ranks.items()
    }
    probs = reco.probabilities(x.numpy(), mask.numpy())
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    # lcag info: the trained parameters (cores, not the fixed bases) and the ranks
    facts = checkpoint_facts(load_checkpoint(path))["model"]
    assert facts["low_rank"] == ranks
    assert facts["parameters"] == sum(p.numel() for p in trained.model.parameters())
    # lcag export: the traced graph (checked against PyTorch on fresh shapes when written)
    out = converted["root"] / "converted.pt"
    export_checkpoint(path, "torchscript", out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch's, of jit.load
        script = torch.jit.load(str(out))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        exported = script(x, mask)
    torch.testing.assert_close(exported, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny_transformer_oialr", "paper_transformer_oialr"])
def test_the_fit_configs_switch_oialr_on(name):
    config = yaml.safe_load((ROOT / "configs" / "fit" / f"{name}.yaml").read_text())
    entries = [c for c in config["trainer"]["callbacks"]
               if c["class_path"] == "lcag.training.oialr.OIALR"]  # fmt: skip
    assert len(entries) == 1
    callback = OIALR(**entries[0].get("init_args", {}))
    base = yaml.safe_load((ROOT / "configs" / "fit" / f"{name[: -len('_oialr')]}.yaml").read_text())
    assert config["model"] == base["model"]
    assert config["data"] == base["data"]
    assert callback.warmup_steps > 0
    assert callback.stability == 0.99


DDP_SCRIPT = """
import hashlib, json, sys
import lightning.pytorch as pl
from lcag.data import LCAGDataModule
from lcag.models import LCAGTransformer
from lcag.module import LCAGModule
from lcag.training.lowrank import low_rank_layers
from lcag.training.oialr import OIALR


class Report(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        ranks = sorted(layer.rank for _, layer in low_rank_layers(pl_module))
        digest = hashlib.sha256()
        for key, value in sorted(pl_module.state_dict().items()):
            digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
        facts = {"rank": trainer.global_rank, "step": trainer.global_step, "ranks": ranks,
                 "pruned": sum(h["event"] == "pruned" for h in oialr.history),
                 "sha256": digest.hexdigest()}
        # one file per rank: two processes printing to one pipe can interleave their lines
        with open(f"{sys.argv[2]}/report_{trainer.global_rank}.json", "w") as handle:
            json.dump(facts, handle)


pl.seed_everything(0)
module = LCAGModule(LCAGTransformer(n_classes=5, dim=32, depth=1, heads=4, n_pair_features=2),
                    pair_features=["mass", "angle"], lr=3e-3, node_evidence="none",
                    decode_at_eval=False)
oialr = OIALR(warmup_steps=2, frequency=3, stability=-1.0, cutoff=0.2, verbose=False)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=10, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False,
                     num_sanity_val_steps=0, limit_val_batches=0, callbacks=[oialr, Report()],
                     default_root_dir=sys.argv[2])
trainer.fit(module, LCAGDataModule(sys.argv[1], batch_size=16, max_eval_events=32))
"""


def test_ddp_ranks_take_the_same_decisions_and_keep_the_cores_in_sync(small_data, tmp_path):
    """Two CPU processes: conversion at step 5, pruning at 8, then two more steps on different
    batches per rank; the ranks hold the same factorised layers and bitwise-equal weights
    (the new cores' gradients are all-reduced: the DDP wrapper was rebuilt)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_oialr.py"
    script.write_text(DDP_SCRIPT)
    # a fresh launch: no distributed settings inherited from the test process
    launched = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                "LOCAL_WORLD_SIZE", "GROUP_RANK"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in launched and not k.startswith("SLURM")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [sys.executable, str(script), str(small_data), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    files = sorted(tmp_path.glob("report_*.json"))
    assert files, run.stdout[-2000:] + run.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in files]
    reports.sort(key=lambda report: report["rank"])
    assert [report["rank"] for report in reports] == [0, 1]
    zero, one = reports
    assert zero["step"] == one["step"] == 10
    assert len(zero["ranks"]) >= 6
    assert zero["pruned"] > 0  # pruning happened, by the same decisions on both
    assert zero["ranks"] == one["ranks"]
    assert zero["sha256"] == one["sha256"]
