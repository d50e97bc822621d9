"""``lcag export``: a checkpoint as an ONNX or TorchScript file, facts in its metadata.

    lcag export --ckpt runs/tiny_transformer/checkpoints/best.ckpt --format onnx --out model.onnx

The file holds :class:`lcag.export.graph.ExportGraph`: inputs ``x (batch, leaves, F)`` float32
raw leaf features (``px, py, pz, E`` first) and ``mask (batch, leaves)`` bool, output ``probs
(batch, leaves, leaves, C)`` float32, with dynamic batch and leaf axes; normalisation and pair
features are inside. :func:`lcag.export.info.checkpoint_facts` plus an ``export`` entry go into
the ONNX ``metadata_props`` (key ``lcag_info``, JSON) or the TorchScript archive
(``extra/lcag_info.json``).

ONNX uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
it takes dynamic axes as they are, needs no ``onnxscript``, exports in under a second, and the
graph it traces is checked here and in ``tests/export`` against the PyTorch model. torch has
deprecated it (as it has ``torch.jit.trace`` and ``torch.jit.save``, which the TorchScript
export needs); lcag pins torch 2.13, where both work, and silences those notices while exporting.
After writing, every export is run on inputs of another batch size and leaf count than the
traced ones and compared with PyTorch (ONNX through onnxruntime, when installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lcag.checkpoints import load_checkpoint
from lcag.errors import InvalidInputError, MissingDependencyError
from lcag.export.graph import ExportGraph
from lcag.export.info import EXTRA_FILE, METADATA_KEY, checkpoint_facts

__all__ = [
    "DYNAMIC_AXES",
    "FORMATS",
    "INPUT_NAMES",
    "OPSET",
    "OUTPUT_NAMES",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
]

FORMATS = ("onnx", "torchscript")
OPSET = 17  # LayerNormalization is an ONNX op from 17 on
INPUT_NAMES = ("x", "mask")
OUTPUT_NAMES = ("probs",)
DYNAMIC_AXES = {
    "x": {0: "batch", 1: "leaves"},
    "mask": {0: "batch", 1: "leaves"},
    "probs": {0: "batch", 1: "leaves", 2: "leaves"},
}
# Largest |probability difference| the check after writing accepts (tests/export holds the
# exports to 1e-5; float32 rounding of a larger model than the tests' may go a bit further).
TOLERANCE = 1e-4


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's notices (the models' shape checks run once, at trace time) and
    torch's deprecation of the TorchScript-based exporter, ``jit.trace`` and ``jit.save``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_facts(ckpt: Path, fmt: str, graph: ExportGraph, opset: int | None) -> dict[str, Any]:
    import lcag

    facts = checkpoint_facts(load_checkpoint(ckpt))
    F, C = graph.n_features, graph.n_classes
    facts["export"] = {
        "format": fmt,
        "opset": opset,
        "exporter": (
            "torch.onnx.export (TorchScript-based, dynamo=False)" if fmt == "onnx"
            else "torch.jit.trace"
        ),
        "lcag_version": lcag.__version__,
        "torch": torch.__version__,
        "checkpoint": ckpt.name,
        "checkpoint_sha256": _sha256(ckpt),
        "inputs": f"x float32 (batch, leaves, {F}) raw features; mask bool (batch, leaves)",
        "outputs": f"probs float32 (batch, leaves, leaves, {C}) per-pair class probabilities",
        "node_evidence": "not included (lcag.Reconstructor adds it)",
    }  # fmt: skip
    return facts


def _max_difference(graph: ExportGraph, run: Any) -> float:
    """Largest difference between ``run(x, mask)`` (numpy out) and the graph, on inputs of
    two shapes other than the traced one."""
    worst = 0.0
    for batch, leaves, seed in ((2, 5, 1), (4, 9, 2)):
        x, mask = graph.example_inputs(batch, leaves, seed)
        with torch.no_grad():
            expected = graph(x, mask).numpy()
        got = run(x.numpy(), mask.numpy())
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(abs(got - expected).max()))
    return worst


def _check(out: Path, graph: ExportGraph, run: Any) -> None:
    worst = _max_difference(graph, run)
    if not worst <= TOLERANCE:
        raise RuntimeError(
            f"{out}: the export differs from the PyTorch model by {worst:.3g} (> {TOLERANCE}) "
            "on inputs of another size than the traced ones; the model does not trace "
            "with dynamic axes"
        )


def export_onnx(
    graph: ExportGraph, out: str | Path, facts: dict[str, Any], opset: int = OPSET,
    check: bool = True,
) -> None:  # fmt: skip
    """Write ``graph`` as an ONNX file with ``facts`` in its ``metadata_props``.

    Raises:
        MissingDependencyError: onnx is not installed.
        RuntimeError: ``check`` and onnxruntime's output differs from PyTorch's.
    """
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("ONNX export needs onnx: pip install 'lcag[export]'") from None
    import lcag

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    x, mask = graph.example_inputs()
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            graph, (x, mask), str(tmp), dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
        )  # fmt: skip
    proto = onnx.load(str(tmp))
    proto.producer_name, proto.producer_version = "lcag", lcag.__version__
    proto.doc_string = facts["export"]["outputs"] + " from " + facts["export"]["inputs"]
    summary = {
        METADATA_KEY: json.dumps(facts, sort_keys=True),
        "lcag_version": lcag.__version__,  # of the export; the checkpoint's is in lcag_info
        "model": str(facts["model"]["class_path"]),
        "inputs": facts["export"]["inputs"],
        "outputs": facts["export"]["outputs"],
        "node_evidence": facts["export"]["node_evidence"],
    }
    del proto.metadata_props[:]
    for key, value in summary.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # as many as torch uses
            session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
            _check(out, graph, lambda x, m: session.run(None, {"x": x, "mask": m})[0])
    os.replace(tmp, out)


def export_torchscript(
    graph: ExportGraph, out: str | Path, facts: dict[str, Any], check: bool = True
) -> None:
    """Write ``graph`` traced as a TorchScript archive, ``facts`` in ``extra/lcag_info.json``.

    Raises:
        RuntimeError: ``check`` and the traced module's output differs from PyTorch's.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(graph, graph.example_inputs(), check_trace=False)
        extra = {EXTRA_FILE: json.dumps(facts, sort_keys=True)}
        torch.jit.save(traced, str(tmp), _extra_files=extra)
        if check:  # without the JIT's profiling passes, which cost seconds per new shape
            loaded = torch.jit.load(str(tmp))
            with torch.jit.optimized_execution(False):
                _check(out, graph, lambda x, m: loaded(*map(torch.from_numpy, (x, m))).numpy())
    os.replace(tmp, out)


def export_checkpoint(
    ckpt: str | Path, fmt: str, out: str | Path, opset: int = OPSET, check: bool = True
) -> dict[str, Any]:
    """Export a checkpoint from ``lcag fit``; returns the facts written into the file.

    Args:
        ckpt: the checkpoint.
        fmt: ``onnx`` or ``torchscript``.
        out: the file to write (its directory is made).
        opset: the ONNX opset.
        check: run the export on fresh shapes and compare with PyTorch.

    Raises:
        CheckpointError: a missing, truncated or corrupt checkpoint.
        InvalidInputError: an unknown format.
        MissingDependencyError: onnx is not installed (ONNX).
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    ckpt, out = Path(ckpt), Path(out)
    graph = ExportGraph.from_checkpoint(ckpt)
    facts = _export_facts(ckpt, fmt, graph, opset if fmt == "onnx" else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        export_onnx(graph, out, facts, opset, check)
    else:
        export_torchscript(graph, out, facts, check)
    return facts
