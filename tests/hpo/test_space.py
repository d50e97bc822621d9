import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcag.errors import ConfigError
from lcag.hpo.search import load_base
from lcag.hpo.space import MODEL_CLASSES, SearchSpace, apply
from tests.conftest import ROOT

TINY_SPACE = {
    "model": {"choices": ["transformer", "nri"]},
    "dim": {"low": 16, "high": 64},
    "depth": {"low": 1, "high": 3},
    "heads": {"choices": [2, 4]},
    "lr": {"low": 3e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-4, "high": 1e-1, "log": True},
    "dropout": {"low": 0.0, "high": 0.2},
    "batch_size": {"choices": [32, 64]},
    "pair_features": {"choices": [True, False]},
}


@pytest.fixture(scope="module")
def base():
    return load_base(ROOT / "configs" / "fit" / "tiny_transformer.yaml")


def test_limits_follow_propulate_conventions():
    limits = SearchSpace(TINY_SPACE).limits()
    assert limits["model"] == ("transformer", "nri")
    assert limits["dim"] == (16, 64)
    assert limits["heads"] == ("2", "4")
    assert limits["pair_features"] == ("true", "false")
    assert limits["log10_lr"] == pytest.approx((math.log10(3e-4), -2.0))
    assert isinstance(limits["dropout"][0], float)


@given(
    model=st.sampled_from(["transformer", "nri"]),
    dim=st.integers(16, 64),
    lr_exponent=st.floats(math.log10(3e-4), -2.0),
    heads=st.sampled_from(["2", "4"]),
    pairs=st.sampled_from(["true", "false"]),
)
def test_decode_then_encode_gives_the_traits_back(model, dim, lr_exponent, heads, pairs):
    space = SearchSpace(TINY_SPACE)
    traits = {
        "model": model,
        "dim": dim,
        "depth": 2,
        "heads": heads,
        "log10_lr": lr_exponent,
        "log10_weight_decay": -2.0,
        "dropout": 0.1,
        "batch_size": "64",
        "pair_features": pairs,
    }
    point = space.decode(traits)
    # 10**x and log10 in float64 round trip to ~1e-15: approx's default rel=1e-6 is ample
    assert point["heads"] in (2, 4)
    assert point["batch_size"] == 64
    assert isinstance(point["pair_features"], bool)
    assert point["lr"] == pytest.approx(10**lr_exponent)
    again = space.encode(point)
    assert again.keys() == traits.keys()
    for key, value in traits.items():
        assert again[key] == pytest.approx(value)


def test_fixed_values_pass_through_and_are_not_searched():
    space = SearchSpace({"lr": {"low": 1e-4, "high": 1e-2}, "model": "nri", "dropout": 0.0})
    assert list(space.limits()) == ["lr"]
    assert space.decode({"lr": 1e-3}) == {"model": "nri", "dropout": 0.0, "lr": 1e-3}


def test_apply_switches_family_and_keeps_shared_arguments(base):
    config = apply(base, {"model": "nri", "dim": 24, "depth": 2, "heads": 4, "lr": 0.003})
    model = config["model"]["model"]
    assert model["class_path"] == MODEL_CLASSES["nri"]
    assert "heads" not in model["init_args"]  # the NRI has none
    assert model["init_args"]["n_classes"] == base["model"]["model"]["init_args"]["n_classes"]
    assert model["init_args"]["dim"] == 24
    assert model["init_args"]["depth"] == 2
    assert config["model"]["lr"] == 0.003
    assert base["model"]["model"]["class_path"] == MODEL_CLASSES["transformer"]  # not mutated


def test_apply_rounds_transformer_width_to_heads_and_switches_pair_features(base):
    config = apply(base, {"model": "transformer", "dim": 30, "heads": 4, "pair_features": False})
    init_args = config["model"]["model"]["init_args"]
    assert init_args["dim"] == 32
    assert init_args["heads"] == 4
    assert config["model"]["pair_features"] == []
    assert init_args["n_pair_features"] == 0
    config = apply(base, {"pair_features": True, "batch_size": 32})
    assert config["model"]["pair_features"] == ["mass", "angle"]
    assert config["model"]["model"]["init_args"]["n_pair_features"] == 2
    assert config["data"]["batch_size"] == 32


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"width": {"low": 1, "high": 2}}, "space.width: unknown hyperparameter"),
        ({"lr": {"low": 0.0, "high": 1e-2, "log": True}}, "log = true needs low > 0"),
        ({"dim": {"low": 64, "high": 16}}, "low = 64 must be below high = 16"),
        ({"dim": {"low": "a", "high": 16}}, "low and high must be numbers"),
        ({"model": {"choices": ["transformer", "mlp"]}}, "each one of"),
        ({"heads": {"choices": [2]}}, "two or more values"),
        ({"heads": {"choices": [2, 4], "step": 2}}, "unknown key(s) ['step']"),
        ({"dropout": 0.1}, "nothing to search"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_spaces_are_named(spec, message):
    with pytest.raises(ConfigError) as info:
        SearchSpace(spec)
    assert message in str(info.value)


def test_load_base_names_missing_and_wrong_files(tmp_path):
    with pytest.raises(ConfigError, match="no such fit config"):
        load_base(tmp_path / "absent.yaml")
    (tmp_path / "data.yaml").write_text("events: 10\n")
    with pytest.raises(ConfigError, match="not a fit config"):
        load_base(tmp_path / "data.yaml")


def test_integer_hyperparameters_stay_integers_on_a_log_scale():
    space = SearchSpace(
        {"dim": {"low": 16, "high": 512, "log": True}, "dropout": {"low": 0, "high": 1}}
    )
    limits = space.limits()
    assert limits["log10_dim"] == pytest.approx((math.log10(16), math.log10(512)))
    assert limits["dropout"] == (0.0, 1.0)  # a float range although written with ints
    point = space.decode({"log10_dim": 1.7, "dropout": 0.25})
    assert point["dim"] == 50
    assert isinstance(point["dim"], int)
    assert point["dropout"] == 0.25


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"depth": {"low": 1.5, "high": 4}}, "depth is an integer"),
        ({"heads": {"choices": [2.0, 4.0]}}, "heads takes int values"),
        ({"pair_features": {"low": 0, "high": 1}}, "takes choices, not a low/high range"),
    ],
)
def test_hyperparameter_types_are_checked(spec, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace(spec)


def test_contains_tells_recorded_points_inside_the_space():
    space = SearchSpace({"dim": {"low": 40, "high": 64}, "model": "nri"})
    assert space.contains({"dim": 48, "model": "nri"})
    assert not space.contains({"dim": 33, "model": "nri"})  # the range was narrowed
    assert not space.contains({"dim": 48, "model": "transformer"})  # a fixed value changed
