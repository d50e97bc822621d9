"""The base class of every LCAG model: the tensor contract and a JSON config to rebuild it.

A model maps leaf features to per-pair class logits::

    model(x: (B, L, F) float, mask: (B, L) bool, pair: (B, L, L, P) | None) -> (B, C, L, L)
    model.forward_with_leaves(x, mask, pair) -> (logits (B, C, L, L), leaves (B, L, D))

``mask`` is True on real leaves. Logits are symmetric in the last two axes, and padding never
changes the logits of the real leaves. ``model.config()`` is a JSON-serialisable dict from which
:meth:`LCAGModel.from_config` rebuilds the same architecture (weights travel separately, in a
``state_dict``), so checkpoints hold no pickled code.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from lcag.errors import InvalidInputError

__all__ = ["LCAGModel"]


class LCAGModel(nn.Module, ABC):
    """Base of every model: records its constructor arguments and checks the inputs.

    A subclass's constructor arguments (JSON-serialisable values) are recorded automatically
    in ``init_args``, defaults included, so ``LCAGModel.from_config(model.config())`` rebuilds
    an identical architecture; subclasses just call ``super().__init__()``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in vars(cls):
            return
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: LCAGModel, *args: Any, **kw: Any) -> None:
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            init(self, *args, **kw)
            if type(self) is cls:  # the most derived class records its own arguments
                arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
                self.init_args = copy.deepcopy(arguments)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(self) -> None:
        super().__init__()
        self.init_args: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """``{"class_path": "<module>.<ClassName>", "init_args": {...}}``, JSON-serialisable."""
        cls = type(self)
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": copy.deepcopy(self.init_args),
        }

    @staticmethod
    def from_config(config: dict[str, Any]) -> LCAGModel:
        """Build the model a :meth:`config` dict describes (fresh weights).

        Raises:
            InvalidInputError: the config is malformed, its ``class_path`` cannot be imported
                or is not an :class:`LCAGModel` subclass, or its ``init_args`` do not fit the
                class's constructor.
        """
        if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
            raise InvalidInputError(
                f"model config: expected a dict with a 'class_path' string, got {config!r}"
            )
        class_path: str = config["class_path"]
        init_args = config.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise InvalidInputError(
                f"model config {class_path!r}: init_args must be a dict, got {init_args!r}"
            )
        module_name, _, class_name = class_path.rpartition(".")
        if not module_name:
            raise InvalidInputError(
                f"model class_path {class_path!r}: expected 'package.module.ClassName'"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidInputError(
                f"model class_path {class_path!r}: cannot import module {module_name!r} ({exc})"
            ) from exc
        cls = getattr(module, class_name, None)
        if cls is None:
            raise InvalidInputError(
                f"model class_path {class_path!r}: module {module_name!r} has no {class_name!r}"
            )
        if not (isinstance(cls, type) and issubclass(cls, LCAGModel)):
            raise InvalidInputError(
                f"model class_path {class_path!r}: not an lcag.models.LCAGModel subclass"
            )
        try:
            inspect.signature(cls).bind(**init_args)
        except TypeError as exc:
            raise InvalidInputError(
                f"model class_path {class_path!r}: init_args {init_args!r} do not fit ({exc})"
            ) from exc
        return cls(**init_args)

    def check_inputs(self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None) -> None:
        """Raise :class:`InvalidInputError` unless the shapes fit the model contract.

        Args:
            x: ``(B, L, F)`` float leaf features.
            mask: ``(B, L)`` bool, True on real leaves.
            pair: ``(B, L, L, P)`` pair features, or ``None`` when the model takes none.
        """
        n_features = self.init_args.get("n_features")
        n_pair = self.init_args.get("n_pair_features", 0)
        if x.dim() != 3 or (n_features is not None and x.shape[-1] != n_features):
            raise InvalidInputError(f"x: expected shape (B, L, {n_features}), got {tuple(x.shape)}")
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise InvalidInputError(
                f"mask: expected bool of shape {tuple(x.shape[:2])}, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        B, L = mask.shape
        if n_pair and (pair is None or pair.shape != (B, L, L, n_pair)):
            got = None if pair is None else tuple(pair.shape)
            raise InvalidInputError(
                f"pair: expected shape ({B}, {L}, {L}, {n_pair}) (n_pair_features={n_pair}), "
                f"got {got}"
            )
        if not n_pair and pair is not None:
            raise InvalidInputError(
                f"pair: the model has n_pair_features=0 but got pair features of shape "
                f"{tuple(pair.shape)}"
            )

    @property
    def leaf_dim(self) -> int:
        """Width ``D`` of the leaf embeddings :meth:`forward_with_leaves` returns."""
        return int(self.init_args.get("dim", 0))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, C, L, L)``, symmetric in the last two axes.

        Args:
            x: ``(B, L, F)`` float leaf features (normalised).
            mask: ``(B, L)`` bool, True on real leaves.
            pair: ``(B, L, L, P)`` pair features, or ``None``.
        """
        return self.forward_with_leaves(x, mask, pair)[0]

    @abstractmethod
    def forward_with_leaves(
        self, x: torch.Tensor, mask: torch.Tensor, pair: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C, L, L)`` and the final leaf embeddings ``(B, L, D)`` (padding 0),
        which a subset head (:class:`lcag.models.SubsetHead`) pools over leaf sets."""
