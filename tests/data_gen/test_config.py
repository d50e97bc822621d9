"""Generation configs: defaults, and clear errors for unknown keys and impossible physics."""

from __future__ import annotations

import pytest
from gen_configs import TINY, tiny_dict

from lcag.data_gen.config import GenerationConfig, load_config
from lcag.errors import ConfigError

CONFIGS = sorted((TINY.parent).glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, GenerationConfig)


def test_paper_defaults():
    cfg = load_config(TINY.parent / "paper.yaml")
    assert cfg.random.root_mass == 100
    assert cfg.random.intermediate_masses == [90, 80, 70, 50, 25, 20, 10]
    assert cfg.random.final_state_masses == [1, 2, 3, 5, 12]
    assert cfg.random.max_depth == 8
    assert (cfg.random.min_children, cfg.random.max_children) == (2, 5)
    assert cfg.topologies.known == 200
    assert cfg.output.dtype == "float64"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": 1}, r"unknown key config\.colour"),
        (tiny_dict(random={"max_dept": 3}), r"unknown key config\.random\.max_dept"),
        (tiny_dict(events={"train": "many"}), r"config\.events\.train must be an integer"),
        (tiny_dict(output={"dtype": "float16"}), r"config\.output\.dtype must be one of"),
        (tiny_dict(random={"root_mass": 1.5}), r"random\.root_mass = 1\.5: below threshold"),
        (
            tiny_dict(random={"intermediate_masses": [150.0]}),
            r"intermediate_masses\[0\] = 150\.0: must be below root_mass",
        ),
        (
            tiny_dict(random={"intermediate_masses": [1.5, 50.0]}),
            r"intermediate_masses\[0\] = 1\.5: below threshold",
        ),
        (tiny_dict(random={"final_state_masses": [5.0, 50.0]}), "both intermediate and final"),
        (tiny_dict(random={"final_state_masses": [-1.0]}), r"final_state_masses\[0\] = -1\.0"),
        (tiny_dict(decfile={"mother": "B0"}), "exactly one topology source"),
        (tiny_dict(kinematics={"momentum_resolution": 2.0}), "momentum_resolution = 2.0"),
        (tiny_dict(kinematics={"mother_momentum": [1.0]}), "mother_momentum"),
        (tiny_dict(topologies={"known": 0}), "topologies.known = 0"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(data)


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nrandom: {}\nkinematic: {}\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key config\.kinematic"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
