"""Exporting a trained model for analyses without lcag: ONNX and TorchScript, with its facts.

- :mod:`lcag.export.graph`: :class:`ExportGraph`, raw leaf features + mask -> per-pair class
  probabilities (normalisation and pair features inside), and :class:`DenseNRI`, the NRI
  model's message passing on dense edges so that it traces with dynamic shapes.
- :mod:`lcag.export.onnx`: ``lcag export`` (:func:`export_checkpoint`).
- :mod:`lcag.export.info`: ``lcag info``, what a checkpoint or exported file is.
- :mod:`lcag.export.cli`: the two subcommands.

Names import lazily, so ``import lcag.export.info`` (the checkpoint hook) loads no exporter.
"""

from __future__ import annotations

from lcag.lazy import lazy_names

__all__ = [
    "DenseNRI",
    "ExportGraph",
    "checkpoint_facts",
    "export_checkpoint",
    "format_facts",
    "read_facts",
]

_WHERE = {
    "DenseNRI": "lcag.export.graph",
    "ExportGraph": "lcag.export.graph",
    "export_checkpoint": "lcag.export.onnx",
    "checkpoint_facts": "lcag.export.info",
    "format_facts": "lcag.export.info",
    "read_facts": "lcag.export.info",
}

__getattr__ = lazy_names(__name__, _WHERE)
