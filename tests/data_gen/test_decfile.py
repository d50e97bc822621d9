"""Decay chains drawn from the EvtGen tables shipped with decaylanguage."""

from __future__ import annotations

import re

import numpy as np
import pytest
from particle import Particle

from lcag.data_gen.config import DEFAULT_STABLE, DecFileChains
from lcag.data_gen.decfile import sample_decfile_topologies
from lcag.data_gen.topology import Topology
from lcag.errors import ConfigError
from lcag.tree import DecayTree

D_STAR_STABLE = ["D0", "D+", "pi+", "pi0", "gamma"]
TINY_DEC = """\
Decay D*+
0.677 D0 pi+ VSS;
0.323 D+ pi0 VSS;
Enddecay
Decay D0
1.0 K- pi+ PHSP;
Enddecay
End
"""


@pytest.fixture(scope="module")
def b0_topologies() -> list[Topology]:
    """20 unique B0 chains from the Belle II table (parses it once for the module)."""
    return sample_decfile_topologies(DecFileChains(), 20, np.random.default_rng(0))


def _signature(topologies: list[Topology]) -> list[tuple]:
    return [
        (t.tree.names, t.tree.parents.tolist(), t.tree.masses.tolist(), t.widths.tolist())
        for t in topologies
    ]


def test_b0_chains_are_valid_trees(b0_topologies: list[Topology]) -> None:
    cfg = DecFileChains()
    assert len(b0_topologies) == 20
    for topology in b0_topologies:
        tree = topology.tree
        assert isinstance(tree, DecayTree)
        assert tree.names[tree.root] == "B0"
        assert tree.pdg_ids[tree.root] == 511
        assert tree.masses[tree.root] == pytest.approx(5.2797, abs=1e-3)
        assert cfg.min_leaves <= tree.n_leaves <= cfg.max_leaves
        assert all(tree.names[leaf] in cfg.stable for leaf in tree.leaves)
        assert not np.any(topology.widths)  # use_widths=False: every mass fixed
        for node in tree.inner_nodes:
            assert len(tree.children(node)) >= 2
            assert sum(tree.masses[c] for c in tree.children(node)) < tree.masses[node]
        for node in range(tree.n_nodes):  # names, PDG ids and GeV masses agree with `particle`
            particle = Particle.from_evtgen_name(tree.names[node])
            assert tree.pdg_ids[node] == int(particle.pdgid)
            assert tree.masses[node] == pytest.approx(particle.mass / 1000)
    keys = [t.key() for t in b0_topologies]
    assert len(set(keys)) == len(keys)


def test_same_seed_same_topologies(b0_topologies: list[Topology]) -> None:
    again = sample_decfile_topologies(DecFileChains(), 20, np.random.default_rng(0))
    assert _signature(again) == _signature(b0_topologies)
    first, second = (
        sample_decfile_topologies(DecFileChains(unique=False), 30, np.random.default_rng(7))
        for _ in range(2)
    )
    assert _signature(first) == _signature(second)


def test_mode_frequency_follows_branching_fraction() -> None:
    cfg = DecFileChains(mother="D*+", stable=D_STAR_STABLE, unique=False)
    n = 2000
    topologies = sample_decfile_topologies(cfg, n, np.random.default_rng(1))
    d0_pi = sum(sorted(t.tree.names[:2]) == ["D0", "pi+"] for t in topologies)
    expected = 0.677 / (0.677 + 0.307 + 0.016)  # the table's D*+ modes, normalised
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert abs(d0_pi / n - expected) < 4 * sigma


def test_single_daughter_modes_are_collapsed() -> None:
    # K*0 -> K0 pi0 with K0 -> K_S0 or K_L0 (single-daughter modes): no K0 node survives.
    cfg = DecFileChains(mother="K*0", unique=False)
    topologies = sample_decfile_topologies(cfg, 300, np.random.default_rng(2))
    names = [name for t in topologies for name in t.tree.names]
    assert "K0" not in names
    assert "K_L0" in names
    assert "K_S0" in names


def test_widths_on_broad_resonances_only() -> None:
    cfg = DecFileChains(use_widths=True)
    topologies = sample_decfile_topologies(cfg, 40, np.random.default_rng(3))
    broad = set()
    for topology in topologies:
        assert not np.any(topology.widths[: topology.n_leaves])
        assert np.all(topology.widths >= 0)
        broad |= {topology.tree.names[i] for i in np.flatnonzero(topology.widths > 0)}
    assert broad & {"rho0", "rho+", "rho-", "K*0", "anti-K*0", "K*+", "K*-"}
    assert "pi0" not in broad  # width / mass below 1e-6: fixed
    assert "B0" not in broad


def test_depth_filter() -> None:
    cfg = DecFileChains(max_depth=3, max_attempts=20_000)
    topologies = sample_decfile_topologies(cfg, 10, np.random.default_rng(4))
    assert all(t.depth <= 3 for t in topologies)


def test_path_to_a_dec_file(tmp_path) -> None:
    path = tmp_path / "tiny.dec"
    path.write_text(TINY_DEC)
    cfg = DecFileChains(
        mother="D*+", dec_file=str(path), stable=["D+", "pi0", "K-", "pi+"], unique=True
    )
    topologies = sample_decfile_topologies(cfg, 2, np.random.default_rng(5))
    assert sorted(t.n_leaves for t in topologies) == [2, 3]


@pytest.mark.filterwarnings("ignore::decaylanguage.dec.dec.MisconfiguredAliasWarning")
def test_lhcb_table() -> None:
    cfg = DecFileChains(mother="B+", dec_file="DECAY_LHCB.DEC")
    topologies = sample_decfile_topologies(cfg, 5, np.random.default_rng(6))
    assert len(topologies) == 5
    assert all(
        t.tree.names[t.tree.root] == "B+" and t.tree.pdg_ids[t.tree.root] == 521 for t in topologies
    )


@pytest.mark.parametrize(
    ("changes", "count", "needle"),
    [
        ({"dec_file": "NO_SUCH_TABLE.DEC"}, 1, "NO_SUCH_TABLE.DEC"),
        ({"mother": "B00"}, 1, "'B00'"),
        ({"stable": [*DEFAULT_STABLE, "Foo"]}, 1, "'Foo'"),
        ({"min_leaves": 50, "max_leaves": None, "max_attempts": 200}, 3, "min_leaves=50"),
    ],
)
def test_config_errors_name_the_value(changes: dict, count: int, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        sample_decfile_topologies(DecFileChains(**changes), count, np.random.default_rng(0))


def test_unknown_dec_file_lists_shipped_tables() -> None:
    with pytest.raises(ConfigError, match=r"nope\.dec.*DECAY_BELLE2\.DEC, DECAY_LHCB\.DEC"):
        sample_decfile_topologies(DecFileChains(dec_file="nope.dec"), 1, np.random.default_rng(0))


def test_invalid_dec_file(tmp_path) -> None:
    path = tmp_path / "bad.dec"
    path.write_text("this is not a decay table;\n")
    with pytest.raises(ConfigError, match=r"bad\.dec.*not a valid decay table"):
        sample_decfile_topologies(DecFileChains(dec_file=str(path)), 1, np.random.default_rng(0))
