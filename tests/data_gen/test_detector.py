"""The detector response: resolutions, efficiencies, thresholds, PID, background, LCAS."""

from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from lcag.data_gen.config import Detector, load_config
from lcag.data_gen.detector import (
    DETECTOR_FEATURES,
    PHOTON,
    SPECIES,
    TRACK_MASSES,
    background_species,
    beam_background,
    measure,
    momentum_covariance,
    production_displacement,
)
from lcag.data_gen.shards import TopologyTable, shard_path
from lcag.errors import ConfigError
from lcag.stages import tree_to_stage_lcas

ROOT = Path(__file__).resolve().parents[2]
PI, E_, GAMMA, KL = 2, 0, 5, 6
MASS = {PI: 0.13957, E_: 0.000511, GAMMA: 0.0, KL: 0.497611}


def _true_leaves(n_events: int, species: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(E, L, 4)`` isotropic leaves with |p| in 0.3..3 GeV (polar angle kept central)."""
    rng = np.random.default_rng(seed)
    masses = np.array([MASS[s] for s in species])
    p = rng.uniform(0.3, 3.0, size=(n_events, len(species)))
    cos_t = rng.uniform(-0.8, 0.8, size=p.shape)
    phi = rng.uniform(-3.0, 3.0, size=p.shape)
    sin_t = np.sqrt(1 - cos_t**2)
    true = np.stack(
        [p * sin_t * np.cos(phi), p * sin_t * np.sin(phi), p * cos_t, np.hypot(p, masses)], -1
    )
    return true, masses


def _measure(detector: Detector, species: list[int], n_events: int = 40_000, seed: int = 1):
    true, masses = _true_leaves(n_events, species)
    charges = np.array([0.0 if s >= PHOTON else 1.0 for s in species])
    rng = np.random.default_rng(seed)
    features, kept = measure(true, masses, np.array(species, np.int8), charges, detector, rng)
    return true, masses, features, kept


def _polar(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pt = np.hypot(v[..., 0], v[..., 1])
    return pt, np.arctan2(pt, v[..., 2]), np.arctan2(v[..., 1], v[..., 0])


def test_pulls_have_unit_width_per_species() -> None:
    detector = Detector()
    detector.neutral_hadrons.energy_resolution = [0.1, 0.02]  # no clipping at 0 in the test
    species = [PI, E_, GAMMA, KL]
    true, masses, features, _ = _measure(detector, species)
    pt, theta, phi = _polar(true)
    pt_m, theta_m, phi_m = _polar(features)
    a, b = detector.tracks.pt_resolution
    beta = np.linalg.norm(true[..., :3], axis=-1) / true[..., 3]
    sigma_pt = np.hypot(a * pt, b / beta)
    for leaf, s in enumerate(species):
        if s < PHOTON:
            pull = (pt_m - pt)[:, leaf] / (sigma_pt * pt)[:, leaf]
            angle = detector.tracks.angle_resolution
            # the energy follows from the measured momentum and the PID's mass hypothesis
            hypothesis = TRACK_MASSES[features[:, leaf, 6:11].argmax(-1)]
            np.testing.assert_allclose(
                features[:, leaf, 3],
                np.hypot(np.linalg.norm(features[:, leaf, :3], axis=-1), hypothesis),
                rtol=1e-12,
            )
            right = features[:, leaf, 6:11].argmax(-1) == s
            expected = detector.pid.response[s][s] if s < PHOTON else 1.0
            assert abs(right.mean() - expected) < 0.01  # misidentified: the wrong mass
        else:
            response = detector.photons if s == GAMMA else detector.neutral_hadrons
            kinetic = true[:, leaf, 3] - masses[leaf]
            sigma = response.energy_resolution[0] / np.sqrt(kinetic)
            sigma += response.energy_resolution[1]
            pull = (features[:, leaf, 3] - true[:, leaf, 3]) / (sigma * kinetic)
            angle = response.angle_resolution
        theta_pull = (theta_m - theta)[:, leaf] / angle
        phi_pull = (phi_m - phi)[:, leaf] / angle
        for name, values in (("p", pull), ("theta", theta_pull), ("phi", phi_pull)):
            assert abs(values.mean()) < 0.03, (SPECIES[s], name, values.mean())
            assert abs(values.std() - 1) < 0.03, (SPECIES[s], name, values.std())


def test_momentum_covariance_whitens_the_measurement_errors() -> None:
    # the covariance the baseline assumes is the one the detector smears with
    detector = Detector()
    detector.neutral_hadrons.energy_resolution = [0.02, 0.02]  # a cluster never lost at 0
    species = [PI, E_, GAMMA, KL]
    true, _, features, _ = _measure(detector, species)
    covariance = momentum_covariance(features, detector)
    whitened = np.linalg.solve(
        np.linalg.cholesky(covariance), (features[..., :3] - true[..., :3])[..., None]
    )[..., 0]
    for leaf, s in enumerate(species):
        w = whitened[:, leaf]
        np.testing.assert_allclose(w.std(axis=0), 1.0, atol=0.04, err_msg=SPECIES[s])
        correlation = np.corrcoef(w.T)[np.triu_indices(3, 1)]
        assert np.abs(correlation).max() < 0.04, (SPECIES[s], correlation)


def test_long_lived_ancestors_displace_their_tracks() -> None:
    from lcag.data_gen.config import VertexResponse
    from lcag.data_gen.topology import Topology
    from lcag.tree import DecayTree

    # B0 (at rest) -> K_S0 gamma, K_S0 -> pi+ pi-: the pions fly with the K_S0
    tree = DecayTree([3, 3, 4, 4, -1], pdg_ids=[211, -211, 22, 310, 511],
                     masses=[0.13957, 0.13957, 0.0, 0.497611, 5.27966])  # fmt: skip
    topology = Topology(tree, np.zeros(5))
    n = 40_000
    pion = np.array([0.0, 0.0, 0.5, np.hypot(0.5, 0.13957)])
    photon = np.array([0.0, 0.0, -1.0, 1.0])
    true = np.broadcast_to(np.stack([pion, pion, photon]), (n, 3, 4)).copy()
    vertex = VertexResponse(resolution=0.002)
    distance = production_displacement(true, topology, vertex, np.random.default_rng(0))
    kaon = pion[:3] * 2, pion[3] * 2
    beta_gamma = np.linalg.norm(kaon[0]) / np.sqrt(kaon[1] ** 2 - kaon[0] @ kaon[0])
    expected = beta_gamma * 26.844 / 10  # cm: beta gamma c tau of the K_S0
    np.testing.assert_allclose(distance[:, 0], distance[:, 1])  # one K_S0 vertex for both
    assert abs(distance[:, 0].mean() / expected - 1) < 0.02
    assert abs(distance[:, 0].std() / expected - 1) < 0.03  # exponential: std = mean
    assert (distance[:, 2] == 0).all()  # the photon comes from the B0, at rest
    detector = Detector(vertex=vertex)
    species, charges = np.array([PI, PI, GAMMA], np.int8), np.array([1.0, -1.0, 0.0])
    masses = np.array([0.13957, 0.13957, 0.0])
    features, _ = measure(true, masses, species, charges, detector,
                          np.random.default_rng(1), distance)  # fmt: skip
    assert features.shape[-1] == len(DETECTOR_FEATURES) + 1
    pull = (features[:, :2, -1] - distance[:, :2]) / vertex.resolution
    assert abs(pull.std() - 1) < 0.02
    assert (features[:, 2, -1] == 0).all()


def test_true_mass_hypothesis_gives_the_true_mass() -> None:
    detector = Detector()
    detector.tracks.mass_hypothesis = "true"
    _, masses, features, _ = _measure(detector, [PI, E_], n_events=2000)
    mass2 = features[..., 3] ** 2 - np.square(features[..., :3]).sum(-1)
    np.testing.assert_allclose(np.sqrt(np.maximum(mass2, 0)), np.broadcast_to(masses, mass2.shape),
                               atol=1e-6)  # fmt: skip


def test_default_ecl_resolution_follows_the_three_term_formula() -> None:
    # Belle ECL: sigma(E)/E = 0.066 % / E (+) 0.81 % / E^(1/4) (+) 1.34 %, 0.1 to 5 GeV
    a, b = Detector().photons.energy_resolution
    energy = np.linspace(0.1, 5.0, 500)
    three_terms = np.sqrt((0.00066 / energy) ** 2 + (0.0081 / energy**0.25) ** 2 + 0.0134**2)
    assert np.abs(a / np.sqrt(energy) + b - three_terms).max() < 0.0004


def test_features_charge_photon_flag_and_pid_rows() -> None:
    detector = Detector()
    species = [PI, E_, GAMMA, KL]
    _, _, features, _ = _measure(detector, species)
    names = list(DETECTOR_FEATURES)
    assert names[:4] == ["px", "py", "pz", "E"]
    charge, photon = features[..., names.index("charge")], features[..., names.index("is_photon")]
    np.testing.assert_array_equal(charge[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(photon[0], [0, 0, 1, 0])
    pid = features[..., names.index("pid_e") :]
    np.testing.assert_allclose(pid[:, :2].sum(-1), 1.0, rtol=1e-12)
    assert (pid[:, 2:] == 0).all()  # neutral leaves carry no PID
    response = np.asarray(detector.pid.response)
    n = len(features)
    for leaf, s in ((0, PI), (1, E_)):
        identified = np.bincount(pid[:, leaf].argmax(-1), minlength=5) / n
        error = np.sqrt(response[s] * (1 - response[s]) / n)
        assert (np.abs(identified - response[s]) < 5 * error + 1e-4).all(), (s, identified)


def test_efficiencies_hold_and_thresholds_cut() -> None:
    detector = Detector()
    detector.tracks.efficiency, detector.photons.efficiency = 0.9, 0.7
    detector.tracks.min_pt = 0.0
    detector.photons.min_energy = 0.0
    n = 40_000
    _, _, _, kept = _measure(detector, [PI, PI, GAMMA], n)
    expected = 0.9 * 0.9 * 0.7
    assert abs(kept.mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    detector = Detector()
    detector.tracks.efficiency = 1.0
    detector.tracks.min_pt = 1.0
    true, _, _, kept = _measure(detector, [PI], n)
    pt = np.hypot(true[..., 0, 0], true[..., 0, 1])
    np.testing.assert_array_equal(kept, pt >= 1.0)


def test_beam_background_spectra_and_counts() -> None:
    detector = Detector()
    detector.background.photons, detector.background.tracks = 2.0, 0.5
    n = 20_000
    features = beam_background(n, detector, np.random.default_rng(3))
    species = [background_species(f) for f in features]
    counts = np.array([len(s) for s in species])
    assert abs(counts.mean() - 2.5) < 5 * np.sqrt(2.5 / n)
    all_f, all_s = np.concatenate(features), np.concatenate(species)
    photons, tracks = all_f[all_s == PHOTON], all_f[all_s != PHOTON]
    above = photons[:, 3] - detector.photons.min_energy
    assert above.min() >= 0
    assert abs(above.mean() - 0.1) < 0.005
    pt = np.hypot(tracks[:, 0], tracks[:, 1]) - detector.tracks.min_pt
    assert pt.min() >= -1e-12
    assert abs(pt.mean() - 0.2) < 0.01
    assert set(np.unique(tracks[:, 4])) == {-1.0, 1.0}
    assert (photons[:, 5] == 1).all()
    assert (tracks[:, 5] == 0).all()


# ---------------------------------------------------------------- generated datasets
def _config(**detector: dict) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "data" / "belle2_b0.yaml").read_text())
    data["decfile"]["max_leaves"] = 6
    data["topologies"] = {"known": 3, "unknown": 2}
    data["events"] = {"train": 60, "val": 10, "test": 10, "test_unknown": 20}
    data["output"]["events_per_shard"] = 100
    data.pop("detector", None)
    data["detector"] = {"background": {"photons": 1.0, "tracks": 0.5}, **detector}
    data["lcas"] = {}
    return copy.deepcopy(data)


@pytest.fixture(scope="module")
def detector_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lcag.data_gen.writer import generate_dataset

    out = tmp_path_factory.mktemp("belle") / "data"
    generate_dataset(load_config(_config()), out, workers=1, progress=False)
    return out


def test_dataset_targets_background_and_lcas(detector_dataset: Path) -> None:
    import json

    manifest = json.loads((detector_dataset / "manifest.json").read_text())
    assert manifest["features"] == list(DETECTOR_FEATURES)
    assert manifest["species"] == list(SPECIES)
    assert len(manifest["normalisation"]["mean"]) == len(DETECTOR_FEATURES)
    background_leaves = 0
    for split, info in manifest["splits"].items():
        for k in range(len(info["shards"])):
            with h5py.File(shard_path(detector_dataset, split, k), "r") as handle:
                table = TopologyTable.read(handle["topologies"])
                for name in (g for g in handle if g.startswith("L")):
                    group = handle[name]
                    lcag, lcas, order = group["lcag"][()], group["lcas"][()], group["order"][()]
                    species = group["species"][()]
                    for e, tid in enumerate(group["topology"][()]):
                        tree = table.topology(int(tid)).tree
                        real = np.flatnonzero(order[e] >= 0)
                        background = np.flatnonzero(order[e] < 0)
                        background_leaves += len(background)
                        assert (lcag[e][background] == 0).all()
                        assert (lcas[e][background] == 0).all()
                        assert (lcas[e][:, background] == 0).all()
                        leaves = order[e][real]
                        expected = tree_to_stage_lcas(tree)[np.ix_(leaves, leaves)]
                        np.testing.assert_array_equal(lcas[e][np.ix_(real, real)], expected)
                        pdg = np.abs(tree.pdg_ids[leaves])
                        is_photon = species[e][real] == PHOTON
                        np.testing.assert_array_equal(is_photon, pdg == 22)
    assert background_leaves > 0


def test_same_config_same_bytes(detector_dataset: Path, tmp_path: Path) -> None:
    from lcag.data_gen.writer import generate_dataset

    generate_dataset(load_config(_config()), tmp_path / "again", workers=1, progress=False)
    for shard in sorted(detector_dataset.glob("*/*.h5")):
        again = tmp_path / "again" / shard.relative_to(detector_dataset)
        assert again.read_bytes() == shard.read_bytes(), shard.name


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"detector": {"pid": {"response": [[1.0] * 5] * 5}}}, "pid.response[0]"),
        ({"detector": {"tracks": {"efficiency": 0.0}}}, "tracks.efficiency"),
        ({"detector": {"photons": {"energy_resolution": [0.1]}}}, "energy_resolution"),
        ({"kinematics": {"momentum_resolution": 0.01}}, "replaces them"),
        ({"lcas": {"stages": {"B0": 0}}}, "stages start at 1"),
    ],
)
def test_config_errors_name_the_field(change: dict, needle: str) -> None:
    data = _config()
    for key, value in change.items():
        data[key] = {**data.get(key, {}), **value}
    with pytest.raises(ConfigError, match=None) as info:
        load_config(data)
    assert needle in str(info.value)


def test_detector_needs_a_decay_table() -> None:
    tiny = yaml.safe_load((ROOT / "configs" / "data" / "tiny.yaml").read_text())
    tiny["detector"] = {}
    with pytest.raises(ConfigError, match="decfile"):
        load_config(tiny)


# ---------------------------------------------------------------- training on the features
def _trainer(root: Path, **options: object):
    """A quiet CPU trainer writing under ``root`` (``options`` set the length)."""
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        **options,
    )


def test_baseline_uses_the_detector_and_sets_background_aside(detector_dataset: Path) -> None:
    from dataclasses import replace

    from lcag.data import LCAGDataset
    from lcag.evaluate import baseline_dataset, baseline_for

    baseline = baseline_for(LCAGDataset(detector_dataset, "test"), 12)
    assert baseline.detector is not None
    assert baseline.background
    assert baseline.n_features == 6
    inputs = baseline_dataset(detector_dataset, "test", baseline)
    events = [e for e in inputs.__getitems__(range(len(inputs))) if len(e["x"]) <= 12]
    leaves = [e["x"].astype(np.float64) for e in events]
    truth = [e["target"] for e in events]
    found = baseline.lcag(leaves)
    assert [len(f) for f in found] == [len(x) for x in leaves]
    rate = baseline.perfect_rate(leaves, truth)
    assert rate == np.mean([np.array_equal(f, t - np.diag(np.diag(t))) for f, t in
                            zip(found, truth, strict=True)])  # fmt: skip
    # every leaf in the tree cannot be right when an event has background
    everything = replace(baseline, background=False)
    has_background = [k for k, t in enumerate(truth) if (t.clip(0).sum(axis=1) == 0).any()]
    assert has_background
    subset = [leaves[k] for k in has_background]
    assert everything.perfect_rate(subset, [truth[k] for k in has_background]) == 0.0
    assert baseline.perfect_rate(subset, [truth[k] for k in has_background]) > 0.0
    assert rate > 0.2


def test_a_vertex_response_adds_the_displacement_feature(tmp_path: Path) -> None:
    import json

    from lcag.data import LCAGDataset
    from lcag.data_gen.writer import generate_dataset

    out = tmp_path / "data"
    generate_dataset(load_config(_config(vertex={})), out, workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["features"] == [*DETECTOR_FEATURES, "displacement"]
    events = LCAGDataset(out, "train").__getitems__(range(60))
    x = np.concatenate([e["x"] for e in events])
    photon = x[:, 5] > 0
    assert (x[photon | (x[:, 4] == 0), -1] == 0).all()  # neutral leaves: no vertex
    assert x[~photon & (x[:, 4] != 0), -1].std() > 0


def test_background_is_read_from_the_manifest(detector_dataset: Path) -> None:
    import json

    from lcag.data import has_background

    manifest = json.loads((detector_dataset / "manifest.json").read_text())
    assert has_background(manifest)
    quiet = copy.deepcopy(manifest)
    quiet["config"]["detector"]["background"] = {"photons": 0.0, "tracks": 0.0}
    assert not has_background(quiet)
    assert has_background({"config": {"kinematics": {"background_mean": 0.5}}})
    assert not has_background({"config": {"kinematics": {"momentum_resolution": 0.01}}})


def test_data_module_selects_features_and_targets_by_name(detector_dataset: Path) -> None:
    from lcag.data import LCAGDataModule
    from lcag.errors import DatasetError

    every = LCAGDataModule(str(detector_dataset), batch_size=16)
    assert every.features == list(DETECTOR_FEATURES)
    momenta = LCAGDataModule(str(detector_dataset), features=["px", "py", "pz", "E"])
    assert len(momenta.normalisation[0]) == 4
    assert momenta.normalisation[0] == every.normalisation[0][:4]
    stages = LCAGDataModule(
        str(detector_dataset), features=["px", "py", "pz", "E", "charge"], target="lcas"
    )
    stages.setup("fit")
    event = stages.datasets["train"][0]
    assert event["x"].shape[-1] == 5
    assert stages.n_classes == 7
    with h5py.File(stages.datasets["train"].files[0], "r") as handle:
        n = len(event["x"])
        stored = handle[f"L{n}"]["lcas"][0].astype(np.int64)
    np.fill_diagonal(stored, -1)
    np.testing.assert_array_equal(event["target"], stored)
    with pytest.raises(DatasetError, match="no feature 'pid_x'"):
        LCAGDataModule(str(detector_dataset), features=["px", "py", "pz", "E", "pid_x"])
    with pytest.raises(DatasetError, match="start with px, py, pz, E"):
        LCAGDataModule(str(detector_dataset), features=["charge", "px", "py", "pz", "E"])


@pytest.mark.parametrize("features", [None, ["px", "py", "pz", "E"]])
def test_a_model_trains_on_detector_features(
    detector_dataset: Path, tmp_path: Path, features: list[str] | None
) -> None:
    import lightning.pytorch as pl
    import torch

    from lcag.data import LCAGDataModule
    from lcag.models import LCAGTransformer
    from lcag.module import LCAGModule

    pl.seed_everything(0)
    dm = LCAGDataModule(str(detector_dataset), batch_size=32, features=features)
    width = len(dm.features)
    module = LCAGModule(LCAGTransformer(n_classes=8, n_features=width, dim=16, depth=1, heads=2))
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=1)
    trainer.fit(module, dm)
    assert module.feature_mean.shape == (width,)
    assert torch.allclose(module.feature_mean, torch.tensor(dm.normalisation[0]).float())
    assert module.hparams.decode_background is True  # chosen from the data's background


def test_feature_count_mismatch_is_named(detector_dataset: Path, tmp_path: Path) -> None:

    from lcag.data import LCAGDataModule
    from lcag.models import LCAGTransformer
    from lcag.module import LCAGModule

    dm = LCAGDataModule(str(detector_dataset), batch_size=32)
    module = LCAGModule(LCAGTransformer(n_classes=8, n_features=4, dim=16, depth=1, heads=2))
    trainer = _trainer(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match=r"n_features = 4, but the data gives 11 .*pid_p"):
        trainer.fit(module, dm)


def test_a_model_trains_and_decodes_lcas_targets(detector_dataset: Path, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from lcag.data import LCAGDataModule
    from lcag.models import LCAGTransformer
    from lcag.module import LCAGModule
    from lcag.stages import is_valid_lcas

    pl.seed_everything(0)
    dm = LCAGDataModule(str(detector_dataset), batch_size=32, target="lcas")
    model = LCAGTransformer(n_classes=dm.n_classes, n_features=11, dim=16, depth=1, heads=2)
    module = LCAGModule(model, target="lcas")  # with the subset head and the mass prior
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, dm)
    assert "val/perfect_decoded" in trainer.callback_metrics
    batch = next(
        iter(
            dm.val_dataloader()[0] if isinstance(dm.val_dataloader(), list) else dm.val_dataloader()
        )
    )
    decoded = module.decode(module(batch["x"], batch["mask"]), batch["mask"]).numpy()
    assert module.hparams.decode_background  # the data has background: read from it
    for matrix, mask in zip(decoded, batch["mask"].numpy(), strict=True):
        real = matrix[np.ix_(mask, mask)]
        inside = np.flatnonzero((real > 0).any(axis=1))  # background leaves: class 0
        assert is_valid_lcas(real[np.ix_(inside, inside)])
    # the Reconstructor decodes the checkpoint's target, with background leaves set aside
    from lcag.data import LCAGDataset
    from lcag.errors import InvalidInputError
    from lcag.inference import Reconstructor

    trainer.save_checkpoint(tmp_path / "lcas.ckpt")
    reco = Reconstructor.from_checkpoint(tmp_path / "lcas.ckpt")
    assert reco.target == "lcas"
    assert reco.background
    assert reco.features is None  # every column, as trained
    events = LCAGDataset(detector_dataset, "test", target="lcas").__getitems__(range(8))
    found = reco.reconstruct([e["x"] for e in events])
    for result, event in zip(found, events, strict=True):
        assert result.target == "lcas"
        assert len(result.lcag) == len(event["x"])
        assert is_valid_lcas(result.lcag[np.ix_(result.in_tree, result.in_tree)])
        assert result.tree.n_leaves == len(result.in_tree)
        assert np.isnan(result.probability)
    with pytest.raises(InvalidInputError, match="LCAG-only"):
        reco.reconstruct([events[0]["x"]], top_k=2)
    # lcag-reconstruct writes the same trees, background leaves marked -2
    import awkward as ak

    from lcag.ntuple.cli import event_parents, reconstruct_files

    columns = {name: [e["x"][:, k].tolist() for e in events]
               for k, name in enumerate(DETECTOR_FEATURES)}  # fmt: skip
    ak.to_parquet(ak.zip(columns, depth_limit=1), tmp_path / "in.parquet")
    reconstruct_files(tmp_path / "lcas.ckpt", [tmp_path / "in.parquet"], tmp_path / "out.parquet",
                      features=DETECTOR_FEATURES)  # fmt: skip
    written = ak.from_parquet(tmp_path / "out.parquet")
    assert "species" not in written.fields
    for row, result in zip(written, found, strict=True):
        np.testing.assert_array_equal(np.asarray(row["parent"]), event_parents(result))
        n = len(result.lcag)
        np.testing.assert_array_equal(np.asarray(row["lcag"]).reshape(n, n), result.lcag)
    assert module.mass_prior.fitted  # on the LCAS trees' nodes
    assert reco.evidence is not None
    with pytest.raises(ConfigError, match="LCAG-only"):
        LCAGModule(model, target="lcas", tree_loss_weight=0.5)
    with pytest.raises(ConfigError, match="data module reads 'lcas'"):
        _trainer(tmp_path / "mismatch", max_steps=1).fit(
            LCAGModule(model, node_evidence="none"), dm
        )


def test_particle_type_head_learns_species(detector_dataset: Path, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from lcag.data import LCAGDataModule
    from lcag.models import LCAGTransformer
    from lcag.module import LCAGModule

    pl.seed_everything(0)
    dm = LCAGDataModule(str(detector_dataset), batch_size=16)
    model = LCAGTransformer(n_classes=8, n_features=11, dim=16, depth=1, heads=2)
    module = LCAGModule(model, node_evidence="none", type_loss_weight=1.0, lr=1e-2)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=False)
    trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "types.ckpt")
    trainer.test(module, dm, verbose=False)
    by_species = module.results["test"]["type_accuracy_by_species"]
    assert list(by_species) == list(SPECIES)
    photons, pions = by_species["gamma"], by_species["pi"]
    assert photons[1] > 0
    assert pions[1] > 0
    assert photons[0] > 0.9  # the photon flag is a feature
    assert module.results["test"]["type_accuracy"] > 0.6
    plain = LCAGModule(model, node_evidence="none")
    assert plain.type_head is None
    # the Reconstructor returns each leaf's species, as the head classifies it
    from lcag.data import LCAGDataset
    from lcag.inference import Reconstructor

    reco = Reconstructor.from_checkpoint(tmp_path / "types.ckpt")
    assert reco.species_names == SPECIES
    events = LCAGDataset(detector_dataset, "test").__getitems__(range(30))
    found = reco.reconstruct([e["x"] for e in events])
    right = total = 0
    for result, event in zip(found, events, strict=True):
        assert result.species_probs.shape == (len(event["x"]), len(SPECIES))
        np.testing.assert_allclose(result.species_probs.sum(-1), 1.0, rtol=1e-5)
        right += int((result.species == event["species"]).sum())
        total += len(event["x"])
    assert right / total > 0.6
    x = np.stack([events[0]["x"]])
    probs = reco.species_probabilities(x, np.ones(x.shape[:2], dtype=bool))
    np.testing.assert_allclose(probs[0], found[0].species_probs, rtol=1e-5)
    import awkward as ak

    from lcag.ntuple.cli import reconstruct_files

    columns = {name: [e["x"][:, k].tolist() for e in events]
               for k, name in enumerate(DETECTOR_FEATURES)}  # fmt: skip
    ak.to_parquet(ak.zip(columns, depth_limit=1), tmp_path / "in.parquet")
    reconstruct_files(tmp_path / "types.ckpt", [tmp_path / "in.parquet"],
                      tmp_path / "out.parquet", features=DETECTOR_FEATURES)  # fmt: skip
    written = ak.from_parquet(tmp_path / "out.parquet")
    for row, result in zip(written, found, strict=True):
        np.testing.assert_array_equal(np.asarray(row["species"]), result.species)
