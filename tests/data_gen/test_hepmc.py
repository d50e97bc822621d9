"""``lcag-generate --from-hepmc``: HepMC3 files written with pyhepmc from events lcag simulated.

A tiny decay table (D*+ chains) is simulated once; its events are written as mother decays into
HepMC3 GenEvents (beams, an unrelated particle, generator copies of the mother and of an
intermediate, a stable pion the generator decayed further, two decays in one event), then
converted back and compared event by event.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from lcag.data_gen.kinematics import boost
from lcag.data_gen.shards import TopologyTable, read_manifest
from lcag.errors import DatasetError
from lcag.matrix import permute, tree_to_lcag

pyhepmc = pytest.importorskip("pyhepmc")

ROOT = Path(__file__).resolve().parents[2]
DEC = """
Decay D*+
0.677 D0 pi+ VSS;
0.307 D+ pi0 VSS;
Enddecay
Decay D0
0.4 K- pi+ PHSP;
0.3 K- pi+ pi0 PHSP;
0.2 K_S0 pi0 PHSP;
0.1 K- pi+ pi+ pi- PHSP;
0.05 pi+ pi- PHSP;
Enddecay
Decay D+
0.7 K- pi+ pi+ PHSP;
0.3 K- pi+ pi+ pi0 PHSP;
Enddecay
Decay pi0
1.0 gamma gamma PHSP;
Enddecay
Decay K_S0
1.0 pi+ pi- PHSP;
Enddecay
End
"""
MOTHER = 413  # D*+
BOOST = np.array([1.5, -2.0, 4.0])  # GeV, the lab momentum of the mothers of boosted.hepmc
SPLITS = ("train", "val", "test", "test_unknown")


# ------------------------------------------------------------------------------ the source
def read_events(root: Path) -> list[dict]:
    """Every event of a dataset: leaf momenta (L, 4), lcag (L, L) and leaf PDG ids (L,) in
    stored order, plus the topology's tree."""
    manifest = read_manifest(root)
    events = []
    for split in manifest["splits"]:
        for shard in manifest["splits"][split]["shards"]:
            with h5py.File(root / shard["file"]) as handle:
                table = TopologyTable.read(handle["topologies"])
                for name in sorted(k for k in handle if k.startswith("L")):
                    group = handle[name]
                    for e in range(group["topology"].shape[0]):
                        tree = table.topology(int(group["topology"][e])).tree
                        order = group["order"][e].astype(np.int64)
                        events.append(
                            {
                                "split": split,
                                "topology": int(group["topology"][e]),
                                "features": group["features"][e].astype(np.float64),
                                "lcag": group["lcag"][e].astype(np.int64),
                                "order": order,
                                "tree": tree,
                                "pdg": tree.pdg_ids[order],
                                "known": bool(table.known[int(group["topology"][e])]),
                            }
                        )
    return events


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Events of D*+ chains simulated by lcag (float64, mother at rest, no detector)."""
    from lcag.data_gen.config import load_config
    from lcag.data_gen.writer import generate_dataset

    folder = tmp_path_factory.mktemp("simulated")
    (folder / "mini.dec").write_text(DEC)
    cfg = load_config(
        {
            "seed": 3,
            "decfile": {"mother": "D*+", "dec_file": str(folder / "mini.dec"), "max_leaves": 7},
            "topologies": {"known": 5, "unknown": 2},
            "events": {"train": 16, "val": 4, "test": 4, "test_unknown": 8},
            "output": {"dtype": "float64"},
        }
    )
    generate_dataset(cfg, folder / "data", progress=False)
    return read_events(folder / "data")


def _particle(momentum, pid: int, status: int, scale: float) -> pyhepmc.GenParticle:
    return pyhepmc.GenParticle(tuple(float(x) * scale for x in momentum), int(pid), status)


def _add_decay(
    event: pyhepmc.GenEvent, source: dict, lab: np.ndarray | None, k: int, scale: float
) -> None:
    """Add ``source``'s decay to ``event``: beams -> mother + an unrelated pi-, then the
    mother's tree with momenta summed from its leaves (boosted to mother momentum ``lab``).
    Every third decay gets a copy of its mother, every other one a copy of an intermediate,
    every fourth a pi+ leaf that decays on (pi+ -> mu+ nu_mu)."""
    tree, leaves = source["tree"], source["features"]
    if lab is not None:
        total = leaves.sum(0)
        mass = np.sqrt(total[3] ** 2 - total[:3] @ total[:3])
        frame = np.concatenate([lab, [np.sqrt(lab @ lab + mass**2)]])
        leaves = boost(leaves, frame[None], np.array([mass]))
    by_leaf = np.empty_like(leaves)
    by_leaf[source["order"]] = leaves  # topology leaf order
    momenta = np.array([by_leaf[list(tree.leaves_under(n))].sum(0) for n in range(tree.n_nodes)])

    def particle(node: int, status: int = 2) -> pyhepmc.GenParticle:
        return _particle(momenta[node], tree.pdg_ids[node], status, scale)

    start = pyhepmc.GenVertex()
    start.add_particle_in(_particle([0, 0, 10, 10], 11, 4, scale))
    start.add_particle_in(_particle([0, 0, -10, 10], -11, 4, scale))
    made = {tree.root: particle(tree.root)}
    start.add_particle_out(made[tree.root])
    start.add_particle_out(_particle([0.1, 0.2, 0.3, 0.4], -211, 1, scale))  # not a daughter
    event.add_vertex(start)
    copied = next((n for n in tree.inner_nodes if n != tree.root), None) if k % 2 else None
    for node in tree.preorder():
        if tree.is_leaf(node):
            continue
        parent = made[node]
        if (k % 3 == 0 and node == tree.root) or node == copied:  # a generator copy
            hop = pyhepmc.GenVertex()
            hop.add_particle_in(parent)
            parent = particle(node)
            hop.add_particle_out(parent)
            event.add_vertex(hop)
        vertex = pyhepmc.GenVertex()
        vertex.add_particle_in(parent)
        for child in tree.children(node):
            made[child] = particle(child, 1 if tree.is_leaf(child) else 2)
            vertex.add_particle_out(made[child])
        event.add_vertex(vertex)
    pions = [n for n in tree.leaves if tree.pdg_ids[n] == 211]
    if k % 4 == 0 and pions:
        vertex = pyhepmc.GenVertex()
        vertex.add_particle_in(made[pions[0]])
        vertex.add_particle_out(_particle(momenta[pions[0]] * 0.6, -13, 1, scale))
        vertex.add_particle_out(_particle(momenta[pions[0]] * 0.4, 14, 1, scale))
        event.add_vertex(vertex)


def write_hepmc(
    path: Path,
    events: list[dict],
    *,
    lab: np.ndarray | None = None,
    per_event: int = 1,
    mev: bool = False,
) -> None:
    """Write ``events`` as decays into a HepMC3 file, ``per_event`` decays per GenEvent."""
    unit = pyhepmc.Units.MEV if mev else pyhepmc.Units.GEV
    with pyhepmc.open(path, "w") as handle:
        for number, start in enumerate(range(0, len(events), per_event)):
            event = pyhepmc.GenEvent(unit, pyhepmc.Units.MM)
            event.event_number = number
            for k, source in enumerate(events[start : start + per_event]):
                _add_decay(event, source, lab, start + k, 1e3 if mev else 1.0)
            handle.write(event)


@pytest.fixture(scope="module")
def hepmc_files(simulated: list[dict], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The first half of the events at rest, two decays per event (GeV); the second half with
    mothers of momentum BOOST, gzip-compressed, in MeV."""
    folder = tmp_path_factory.mktemp("hepmc")
    half = len(simulated) // 2
    rest, boosted = folder / "rest.hepmc", folder / "boosted.hepmc.gz"
    write_hepmc(rest, simulated[:half], per_event=2)
    write_hepmc(boosted, simulated[half:], lab=BOOST, mev=True)
    return [rest, boosted]


def convert(files: list[Path], out: Path, on_shard=None, **options) -> dict:
    from lcag.data_gen.hepmc import HepMCOptions, convert_hepmc

    settings = {"mothers": (MOTHER,), "dtype": "float64", "events_per_shard": 16,
                "unseen_fraction": 0.3, "seed": 1, **options}  # fmt: skip
    return convert_hepmc(files, out, HepMCOptions(**settings), progress=False, on_shard=on_shard)


def matched(converted: list[dict], source: list[dict]) -> list[tuple[dict, dict]]:
    """Each converted event with the source event of the same leaf count and the nearest
    sorted leaf energies; every source event is used exactly once."""
    pairs, used = [], set()
    for event in converted:
        energies = np.sort(event["features"][:, 3])
        best, distance = None, np.inf
        for i, other in enumerate(source):
            if len(other["features"]) != len(energies):
                continue
            d = np.abs(np.sort(other["features"][:, 3]) - energies).max()
            if d < distance:
                best, distance = i, d
        assert best is not None
        assert best not in used
        used.add(best)
        pairs.append((event, source[best]))
    assert len(used) == len(source)
    return pairs


def assert_same_events(converted: list[dict], source: list[dict], atol: float) -> None:
    """Same trees (LCAG and PDG ids up to leaf order) and leaf momenta, event by event."""
    for event, other in matched(converted, source):
        mine = np.argsort(event["features"][:, 3])
        theirs = np.argsort(other["features"][:, 3])
        np.testing.assert_allclose(
            event["features"][mine], other["features"][theirs], rtol=0, atol=atol
        )
        np.testing.assert_array_equal(
            event["lcag"][np.ix_(mine, mine)], other["lcag"][np.ix_(theirs, theirs)]
        )
        np.testing.assert_array_equal(event["pdg"][mine], other["pdg"][theirs])
        assert event["tree"].isomorphic(other["tree"], labels=True)


def checksums(root: Path) -> dict[str, str]:
    from lcag.data_gen.shards import sha256_of

    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("shard-*.h5"))}


@pytest.fixture(scope="module")
def converted(hepmc_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "data"
    convert(hepmc_files, out)
    return out


# ------------------------------------------------------------------------------- the tests
def test_conversion_gives_back_the_simulated_trees_and_momenta(converted, simulated):
    manifest = read_manifest(converted)
    assert manifest["config"]["decays"] == len(simulated)
    assert manifest["config"]["skipped"] == {}
    assert manifest["units"] == "GeV"
    events = read_events(converted)
    assert len(events) == len(simulated)
    for event in events:  # the stored matrix is the topology's under the stored leaf order
        np.testing.assert_array_equal(
            event["lcag"], permute(tree_to_lcag(event["tree"]), event["order"])
        )
        assert (event["split"] == "test_unknown") == (not event["known"])
    # float64 through 17-digit ASCII, boosted to BOOST (|p| ~ 5 GeV) and back: ~1e-15 GeV
    assert_same_events(events, simulated, atol=1e-12)


def test_topologies_split_by_hash_and_decays_by_seed(converted):
    from lcag.data_gen.hepmc import HepMCOptions, _unseen_side

    manifest = read_manifest(converted)
    keys = manifest["config"]["topology_keys"]
    assert len(keys) == len(set(keys)) == 7  # the table's seven D*+ chains
    n_known = manifest["topologies"]["known"]
    options = HepMCOptions(mothers=(MOTHER,), unseen_fraction=0.3, seed=1)
    sides = [_unseen_side(key, options) for key in keys]
    assert sides == [None] * n_known + ["test_unknown"] * (7 - n_known)
    assert "val_unseen_fraction" not in manifest["config"]  # none asked: recorded as before
    assert 0 < n_known < 7
    counts = {split: manifest["splits"][split]["events"] for split in SPLITS}
    assert all(counts.values())
    assert counts["train"] > counts["val"] + counts["test"]


def test_val_unseen_fraction_keeps_topologies_for_val_unknown(hepmc_files, tmp_path):
    from lcag.data_gen.hepmc import HepMCOptions, _unseen_side

    # hash fractions of the seven chains at seed 1: two below 0.2, three in [0.2, 0.25)
    manifest = convert(hepmc_files, tmp_path / "val", unseen_fraction=0.2, val_unseen_fraction=0.05)
    assert manifest["config"]["val_unseen_fraction"] == 0.05
    assert manifest["topologies"] == {**manifest["topologies"], "known": 2, "unknown": 2,
                                      "val_unknown": 3}  # fmt: skip
    options = HepMCOptions(mothers=(MOTHER,), unseen_fraction=0.2, val_unseen_fraction=0.05, seed=1)
    sides = [_unseen_side(key, options) for key in manifest["config"]["topology_keys"]]
    assert sides == [None] * 2 + ["test_unknown"] * 2 + ["val_unknown"] * 3
    events = read_events(tmp_path / "val")
    by_split: dict[str, set[int]] = {}
    for event in events:
        by_split.setdefault(event["split"], set()).add(event["topology"])
    known = by_split["train"] | by_split["val"] | by_split["test"]
    assert known == {0, 1}
    assert by_split["test_unknown"] == {2, 3}
    assert by_split["val_unknown"] == {4, 5, 6}


def test_lab_frame_keeps_the_stored_momenta(hepmc_files, simulated, tmp_path):
    half = len(simulated) // 2
    convert(hepmc_files[:1], tmp_path / "lab", frame="lab", unseen_fraction=0.0)
    events = read_events(tmp_path / "lab")
    assert not any(event["split"] == "test_unknown" for event in events)
    assert_same_events(events, simulated[:half], atol=0.0)  # mothers at rest: the same bits
    convert(hepmc_files[1:], tmp_path / "boosted", frame="lab")
    for event in read_events(tmp_path / "boosted"):
        np.testing.assert_allclose(event["features"].sum(0)[:3], BOOST, rtol=0, atol=1e-12)


def test_detector_response_and_float32(hepmc_files, converted, tmp_path):
    out = tmp_path / "smeared"
    convert(hepmc_files, out, dtype="float32", momentum_resolution=0.01, background_mean=1.0)
    events = read_events(out)
    assert len(events) == read_manifest(converted)["config"]["decays"]
    extra = [int((e["order"] < 0).sum()) for e in events]
    assert 0.5 < np.mean(extra) < 1.5  # Poisson(1) background leaves, LCAG class 0
    for event, n in zip(events, extra, strict=True):
        background = event["order"] < 0
        assert (event["lcag"][background] == 0).all()
        tree = event["features"][~background]
        mass2 = tree[:, 3] ** 2 - np.square(tree[:, :3]).sum(-1)
        masses = event["tree"].masses[event["order"][~background]]
        # E recomputed from the leaf's nominal mass (float32 storage: ~1e-7 relative)
        np.testing.assert_allclose(np.sqrt(np.maximum(mass2, 0)), masses, atol=2e-3)
        assert len(event["features"]) == len(tree) + n


def test_rerun_resumes_and_is_bit_for_bit_the_same(hepmc_files, converted, tmp_path):
    out = tmp_path / "again"
    convert(hepmc_files, out)
    assert checksums(out) == checksums(converted)  # same files + seed: same bytes
    manifest = (out / "manifest.json").read_text()
    assert json.loads(manifest) == json.loads((converted / "manifest.json").read_text())
    (out / "val" / "shard-00000.h5").unlink()
    written = []
    convert(hepmc_files, out, on_shard=written.append)
    assert [(plan.split, plan.index) for plan in written] == [("val", 0)]
    assert checksums(out) == checksums(converted)
    assert (out / "manifest.json").read_text() == manifest
    with pytest.raises(DatasetError, match="another config"):
        convert(hepmc_files, out, seed=2)


def lcag_generate(capsys, *args: str) -> tuple[int, str]:
    from lcag.data_gen.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_command_line_converts(hepmc_files, converted, tmp_path, capsys):
    files = [str(f) for f in hepmc_files]
    out = tmp_path / "cli"
    code, err = lcag_generate(
        capsys, "--from-hepmc", *files, "--mother", "D*+", "--out", str(out), "--no-progress",
        "--dtype", "float64", "--events-per-shard", "16", "--unseen-fraction", "0.3",
        "--seed", "1",
    )  # fmt: skip
    assert code == 0, err
    assert checksums(out) == checksums(converted)


def _hepmc2(path: Path, hepmc_file: Path) -> None:
    with pyhepmc.open(hepmc_file) as source, pyhepmc.open(path, "w", format="HepMC2") as sink:
        sink.write(next(iter(source)))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"nowhere\.hepmc: file not found$"),
        ("text", r"notes\.txt: not a HepMC3 ASCII file \(no HepMC::Asciiv3 header\)$"),
        ("hepmc2", r"old\.hepmc: a HepMC2 file, not a HepMC3 ASCII file"),
        ("truncated", r"cut\.hepmc: truncated, the file does not end with HepMC::Asciiv3-END_"),
        ("other mother", r"rest\.hepmc: no decay of 521 \(B\+\) found in \d+ events$"),
        ("too many leaves", r"rest\.hepmc: event \d+: particle \d+ \(D\*\+\): the decay has "
                            r"\d leaves, more than --max-leaves 3"),
        ("no mother", r"--from-hepmc needs --mother"),
        ("bad mother", r"--mother 'Dstar': neither a PDG id nor a particle name"),
        ("bad frame", r"--frame 'sideways': expected 'rest' or 'lab'"),
        ("option alone", r"--mother applies to --from-hepmc only"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_file_event_particle(
    hepmc_files, tmp_path, capsys, case, message
):
    rest = str(hepmc_files[0])
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    args = {
        "missing": ["--from-hepmc", str(tmp_path / "nowhere.hepmc"), "--mother", "413"],
        "text": ["--from-hepmc", str(tmp_path / "notes.txt"), "--mother", "413"],
        "hepmc2": ["--from-hepmc", str(tmp_path / "old.hepmc"), "--mother", "413"],
        "truncated": ["--from-hepmc", str(tmp_path / "cut.hepmc"), "--mother", "413"],
        "other mother": ["--from-hepmc", rest, "--mother", "521"],
        "too many leaves": ["--from-hepmc", rest, "--mother", "413", "--max-leaves", "3"],
        "no mother": ["--from-hepmc", rest],
        "bad mother": ["--from-hepmc", rest, "--mother", "Dstar"],
        "bad frame": ["--from-hepmc", rest, "--mother", "413", "--frame", "sideways"],
        "option alone": ["--config", str(ROOT / "configs" / "data" / "tiny.yaml"), "--mother", "1"],
    }[case]
    (tmp_path / "notes.txt").write_text("px py pz E\n1 2 3 4\n")
    (tmp_path / "cut.hepmc").write_bytes(hepmc_files[0].read_bytes()[:5000])
    if case == "hepmc2":
        _hepmc2(tmp_path / "old.hepmc", hepmc_files[0])
    code, err = lcag_generate(capsys, *args, *out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lcag-generate: error: ")
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.slow
@pytest.mark.filterwarnings(
    r"ignore:(?s).*was deprecated in v4\.\d+\.\d+ and will be removed in v5:DeprecationWarning"
)
def test_lcag_fit_runs_on_a_converted_set(hepmc_files, tmp_path, monkeypatch):
    from lcag.cli import main

    data = tmp_path / "data"
    convert(hepmc_files, data, dtype="float32", events_per_shard=64)
    config = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_transformer.yaml").read_text())
    run = tmp_path / "runs"
    config["data"].update(data_dir=str(data), batch_size=16, eval_batch_size=64)
    config["model"]["model"]["init_args"].update(dim=16, depth=1, heads=2)
    config["trainer"].update(
        max_epochs=1, limit_train_batches=3, log_every_n_steps=1, enable_progress_bar=False
    )
    config["trainer"]["logger"] = [  # one logger: two in one directory warn
        {**c, "init_args": {**c["init_args"], "save_dir": str(run)}}
        for c in config["trainer"]["logger"]
        if c["class_path"].endswith("CSVLogger")
    ]
    config["trainer"]["callbacks"] = [
        {**c, "init_args": {**c["init_args"], "dirpath": str(run / "checkpoints")}}
        for c in config["trainer"]["callbacks"]
        if c["class_path"].endswith("ModelCheckpoint")
    ]
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(sys, "argv", ["lcag"])
    assert main(["fit", "--config", str(path)]) == 0
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert "train/loss" in (run / "tiny_transformer" / "metrics.csv").read_text()


def test_unusable_decays_are_skipped_and_counted(simulated, tmp_path):
    path = tmp_path / "mixed.hepmc"
    p = [0.0, 0.0, 0.0, 2.01]
    with pyhepmc.open(path, "w") as handle:
        event = pyhepmc.GenEvent(pyhepmc.Units.GEV, pyhepmc.Units.MM)
        _add_decay(event, simulated[0], None, 1, 1.0)
        for daughters in ([(321, 1), (-11, 1), (12, 1)], [(211, 1)]):  # K- e+ nu_e; one pi+
            mother = _particle(p, MOTHER, 2, 1.0)
            start, decay = pyhepmc.GenVertex(), pyhepmc.GenVertex()
            start.add_particle_in(_particle([0, 0, 5, 5], 11, 4, 1.0))
            start.add_particle_out(mother)
            decay.add_particle_in(mother)
            for pid, status in daughters:
                decay.add_particle_out(_particle(np.array(p) / 3, pid, status, 1.0))
            event.add_vertex(start)
            event.add_vertex(decay)
        handle.write(event)
    manifest = convert([path], tmp_path / "out", unseen_fraction=0.0)
    assert manifest["config"]["decays"] == 1
    assert manifest["config"]["skipped"] == {
        "ending as one pi+ (a copy chain, not a decay)": 1,
        "reaching nu_e (neither stable nor decayed)": 1,
    }
    (event,) = read_events(tmp_path / "out")
    assert event["tree"].isomorphic(simulated[0]["tree"], labels=True)
