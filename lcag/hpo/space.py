"""The search space: YAML description -> Propulate limits -> overrides of a fit config.

Each searchable hyperparameter is one of

    name: value                          # fixed, not searched
    name: {choices: [a, b, c]}           # categorical
    name: {low: 16, high: 128}           # integer range (both ends ints)
    name: {low: 0.0, high: 0.3}          # float range
    name: {low: 1.0e-4, high: 1.0e-2, log: true}   # float range searched in log10

The names are fixed (:data:`PARAMETERS`); :func:`apply` writes a point of the space into a fit
config (the dict of a ``configs/fit/*.yaml``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lcag.errors import ConfigError

__all__ = ["MODEL_CLASSES", "PARAMETERS", "Dimension", "SearchSpace", "apply"]

MODEL_CLASSES = {"transformer": "lcag.models.LCAGTransformer", "nri": "lcag.models.LCAGNRI"}
PARAMETERS = {
    "model": "model family: transformer or nri",
    "dim": "width (hidden size); a Transformer's is rounded up to a multiple of heads",
    "depth": "number of blocks",
    "heads": "attention heads (Transformer only)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "dropout": "dropout probability",
    "batch_size": "training batch size",
    "pair_features": "pair features (invariant mass, opening angle) on or off",
}
KINDS: dict[str, type] = {
    "model": str,
    "dim": int,
    "depth": int,
    "heads": int,
    "lr": float,
    "weight_decay": float,
    "dropout": float,
    "batch_size": int,
    "pair_features": bool,
}
"""The type of each hyperparameter: ranges of ``int`` ones give integers (also on a log scale)."""
DEFAULT_PAIR_FEATURES = ["mass", "angle"]


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter.

    Attributes:
        name: a key of :data:`PARAMETERS`.
        choices: the values of a categorical dimension (any YAML scalars), else ``None``.
        low, high: the bounds of a range.
        log: search ``log10`` of the value (ranges of positive numbers).
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False

    @property
    def trait(self) -> str:
        """The name Propulate sees (``log10_lr`` for a log-scaled ``lr``)."""
        return f"log10_{self.name}" if self.log else self.name

    def limits(self) -> tuple[Any, ...]:
        """Propulate's limits: ``(low, high)`` floats or ints, or a tuple of strings."""
        if self.choices is not None:
            return tuple(_token(c) for c in self.choices)
        if self.log:
            return (math.log10(self.low), math.log10(self.high))
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (a recorded trial still in the space)."""
        if self.choices is not None:
            return _token(value) in {_token(c) for c in self.choices}
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def decode(self, raw: Any) -> Any:
        """Propulate's trait value -> the hyperparameter's value."""
        if self.choices is not None:
            return {_token(c): c for c in self.choices}[raw]
        value = 10.0**raw if self.log else raw
        return round(value) if KINDS[self.name] is int else float(value)

    def encode(self, value: Any) -> Any:
        """The hyperparameter's value -> Propulate's trait value (inverse of :meth:`decode`)."""
        if self.choices is not None:
            return _token(value)
        if self.log:
            return float(math.log10(value))
        return int(value) if KINDS[self.name] is int else float(value)


class SearchSpace:
    """The searched and the fixed hyperparameters of a search.

    Args:
        spec: the ``space`` mapping of an HPO config (see the module docstring).
        source: where ``spec`` came from, for error messages.
    """

    def __init__(self, spec: Mapping[str, Any], source: str = "space") -> None:
        if not isinstance(spec, Mapping) or not spec:
            raise ConfigError(f"{source}: must be a non-empty mapping of hyperparameters")
        self.dimensions: list[Dimension] = []
        self.fixed: dict[str, Any] = {}
        for name, entry in spec.items():
            if name not in PARAMETERS:
                raise ConfigError(
                    f"{source}.{name}: unknown hyperparameter; known: {', '.join(PARAMETERS)}"
                )
            if isinstance(entry, Mapping):
                self.dimensions.append(_dimension(name, entry, f"{source}.{name}"))
            else:
                self.fixed[name] = entry
        if not self.dimensions:
            raise ConfigError(f"{source}: nothing to search (every hyperparameter is fixed)")
        family = self.fixed.get("model")
        if family is not None and family not in MODEL_CLASSES:
            raise ConfigError(f"{source}.model = {family!r}: one of {list(MODEL_CLASSES)}")

    def limits(self) -> dict[str, tuple[Any, ...]]:
        """Propulate's search-space ``limits`` (trait name -> bounds or choices)."""
        return {d.trait: d.limits() for d in self.dimensions}

    def decode(self, traits: Mapping[str, Any]) -> dict[str, Any]:
        """A Propulate individual's traits -> every hyperparameter (searched and fixed)."""
        point = {d.name: d.decode(traits[d.trait]) for d in self.dimensions}
        return {**self.fixed, **point}

    def contains(self, point: Mapping[str, Any]) -> bool:
        """Whether recorded hyperparameters lie in this space (searched and fixed alike)."""
        return all(d.name in point and d.contains(point[d.name]) for d in self.dimensions) and all(
            point.get(k) == v for k, v in self.fixed.items()
        )

    def encode(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """Hyperparameters (as recorded) -> a Propulate individual's traits."""
        return {d.trait: d.encode(point[d.name]) for d in self.dimensions}


def apply(fit_config: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``fit_config`` with the hyperparameters of ``point`` written in.

    Switching the model family keeps ``n_features`` and ``n_classes`` and every other
    constructor argument that the new class also accepts.
    """
    config = copy.deepcopy(dict(fit_config))
    module = config.setdefault("model", {})
    model = module.setdefault("model", {})
    family = point.get("model")
    if family is not None:
        if family not in MODEL_CLASSES:
            raise ConfigError(f"model = {family!r}: one of {list(MODEL_CLASSES)}")
        model["class_path"] = MODEL_CLASSES[family]
    class_path = model.get("class_path", "")
    accepted = _constructor_arguments(class_path)
    init_args = {k: v for k, v in model.get("init_args", {}).items() if k in accepted}
    for name in ("dim", "depth", "dropout", "heads"):
        if name in point and name in accepted:
            init_args[name] = point[name]
    if "heads" in accepted and "dim" in init_args:
        heads = int(init_args.get("heads", 1))
        init_args["dim"] = heads * math.ceil(int(init_args["dim"]) / heads)
    if "pair_features" in point:
        wanted = point["pair_features"]
        if isinstance(wanted, bool):
            base = module.get("pair_features") or DEFAULT_PAIR_FEATURES
            names = list(base) if wanted else []
        else:
            names = list(wanted)
        module["pair_features"] = names
        init_args["n_pair_features"] = len(names)
    model["init_args"] = init_args
    for name in ("lr", "weight_decay"):
        if name in point:
            module[name] = point[name]
    if "batch_size" in point:
        config.setdefault("data", {})["batch_size"] = int(point["batch_size"])
    return config


def _dimension(name: str, entry: Mapping[str, Any], where: str) -> Dimension:
    unknown = set(entry) - {"choices", "low", "high", "log"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; use choices or low/high")
    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise ConfigError(f"{where}.choices = {choices!r}: a list of two or more values")
        if name == "model" and any(c not in MODEL_CLASSES for c in choices):
            raise ConfigError(f"{where}.choices = {choices!r}: each one of {list(MODEL_CLASSES)}")
        if len({_token(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}.choices = {choices!r}: repeated value")
        kind = KINDS[name]
        if any(type(c) is not kind for c in choices):
            raise ConfigError(f"{where}.choices = {choices!r}: {name} takes {kind.__name__} values")
        return Dimension(name, choices=tuple(choices))
    low, high, log = entry.get("low"), entry.get("high"), bool(entry.get("log", False))
    kind = KINDS[name]
    if kind not in (int, float):
        raise ConfigError(f"{where}: {name} takes choices, not a low/high range")
    numbers = (int, float)
    if any(not isinstance(v, numbers) or isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be numbers (got {low!r}, {high!r})")
    if not low < high:
        raise ConfigError(f"{where}: low = {low!r} must be below high = {high!r}")
    if kind is int:
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: {name} is an integer; low and high must be too")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    if log:
        if low <= 0:
            raise ConfigError(f"{where}: log = true needs low > 0 (got {low!r})")
        return Dimension(name, low=low, high=high, log=True)
    return Dimension(name, low=low, high=high)


def _token(value: Any) -> str:
    """Propulate's categorical traits are strings: ``True`` -> ``"true"``, ``4`` -> ``"4"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _constructor_arguments(class_path: str) -> set[str]:
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name:
        raise ConfigError(f"model.model.class_path = {class_path!r}: not a dotted class path")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ConfigError(f"model.model.class_path = {class_path!r}: cannot import it") from None
    return set(inspect.signature(cls.__init__).parameters) - {"self"}
