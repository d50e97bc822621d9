"""What a checkpoint (or an exported model) is: the facts ``lcag info`` prints.

    lcag info runs/tiny_transformer/checkpoints/best.ckpt     # or model.onnx, model.pt

At every checkpoint save, ``LCAGModule.on_save_checkpoint`` stores :func:`training_facts` as
``checkpoint["lcag_info"]``: the lcag version, the training data (the dataset directory, the
SHA-256 of its generation config, the events per split in the dataset and those used, feature
names and units, from the dataset's ``manifest.json``) and the validation figures of the saved
weights (the trainer's ``val/*`` metrics at that moment). :func:`checkpoint_facts` adds what the
checkpoint holds anyway (model class and arguments, parameter count, pair features,
normalisation, node evidence, the tree temperature, the checkpoint callbacks' best scores,
epoch and step), so an older checkpoint without ``lcag_info`` still says what it can.
``lcag export`` writes the same dictionary, plus an ``export`` entry, into the ONNX file's
``metadata_props`` (key ``lcag_info``) and into the TorchScript archive
(``extra/lcag_info.json``); :func:`read_facts` reads any of the three.

The config checksum is ``sha256`` of the manifest's ``config`` written as JSON with sorted keys
and no spaces (:func:`config_checksum`): two datasets made from the same generation config (and
seed) have the same checksum.

Everything here is plain JSON: numbers, strings, lists, dicts.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lcag.checkpoints import load_checkpoint
from lcag.errors import InvalidInputError, MissingDependencyError

__all__ = [
    "EXTRA_FILE",
    "METADATA_KEY",
    "NODE_EVIDENCE_NOTE",
    "checkpoint_facts",
    "config_checksum",
    "format_facts",
    "read_facts",
    "training_facts",
]

METADATA_KEY = "lcag_info"  # ONNX metadata_props key, and the checkpoint's key
EXTRA_FILE = "lcag_info.json"  # TorchScript _extra_files name
NODE_EVIDENCE_NOTE = (
    "used by lcag.Reconstructor; not part of exported graphs, which return per-pair "
    "probabilities only"
)


def config_checksum(config: Mapping[str, Any]) -> str:
    """SHA-256 of a dataset's generation config (JSON, sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: tensors and numpy values to numbers or lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar
        return _plain(value.tolist())
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):  # exact types: torch.__version__ is a str subclass
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def data_facts(
    manifest: Mapping[str, Any],
    data_dir: str | Path,
    used: Mapping[str, int] | None = None,
    val_split: str | None = None,
) -> dict[str, Any]:
    """The training data's facts from its ``manifest.json``.

    Args:
        manifest: the dataset's manifest.
        data_dir: the dataset directory.
        used: events per split that training actually read (after ``max_*_events``).
        val_split: the split validated on.
    """
    splits = manifest.get("splits", {})
    topologies = manifest.get("topologies", {})
    return _plain(
        {
            "data_dir": str(data_dir),
            "config_sha256": config_checksum(manifest.get("config", {})),
            "seed": manifest.get("seed"),
            "schema_version": manifest.get("schema_version"),
            "features": manifest.get("features"),
            "units": manifest.get("units"),
            "dtype": manifest.get("dtype"),
            "n_classes": manifest.get("n_classes"),
            "max_leaves": manifest.get("max_leaves"),
            "topologies": {k: topologies.get(k) for k in ("known", "unknown")},
            "events": {split: info.get("events") for split, info in splits.items()},
            "events_used": dict(used or {}),
            "val_split": val_split,
            "generator_versions": manifest.get("versions", {}),
        }
    )


def training_facts(module: Any) -> dict[str, Any]:
    """The facts an ``LCAGModule`` knows when a checkpoint is saved (``checkpoint["lcag_info"]``).

    Never raises: a checkpoint is saved even when a fact cannot be found (say, a module
    trained outside a trainer or on another data module); such facts are left out.
    """
    import lightning
    import torch

    import lcag

    facts: dict[str, Any] = {
        "lcag_version": lcag.__version__,
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__},
    }
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return facts
    datamodule = getattr(trainer, "datamodule", None)
    manifest = getattr(datamodule, "manifest", None)
    hparams = getattr(datamodule, "hparams", None)
    val_split = hparams.get("val_split") if isinstance(hparams, Mapping) else None
    if isinstance(manifest, Mapping):
        try:
            datasets = getattr(datamodule, "datasets", {}) or {}
            used = {split: len(d) for split, d in datasets.items() if split != "validation"}
            facts["data"] = data_facts(manifest, datamodule.data_dir, used, val_split)
        except Exception as exc:  # a fact missing must not stop a checkpoint being saved
            facts["data"] = {"error": f"{type(exc).__name__}: {exc}"}
    metrics = {
        name: float(value)
        for name, value in sorted(getattr(trainer, "callback_metrics", {}).items())
        if name.startswith(("val/", "val_unseen/")) and getattr(value, "numel", lambda: 1)() == 1
    }
    results = getattr(module, "results", {}).get("val", {})
    facts["validation"] = {
        "epoch": int(getattr(trainer, "current_epoch", 0)),
        "global_step": int(getattr(trainer, "global_step", 0)),
        "split": val_split,
        "events": results.get("events"),
        "metrics": metrics,
    }
    return _plain(facts)


def _best_scores(checkpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each checkpoint callback's monitored metric and best score."""
    out = []
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, Mapping) or "best_model_score" not in state:
            continue
        if state.get("monitor") is None:
            continue
        out.append(
            {
                "callback": str(name).split("{", 1)[0],
                "monitor": state.get("monitor"),
                "best_model_score": _plain(state.get("best_model_score")),
                "best_model_path": state.get("best_model_path"),
            }
        )
    return out


def _rerank_facts(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The decay grammar's reranking (``lcag.evidence.grammar_rerank``): its particles and
    weight (``inf``: the grammar alone), or ``None``."""
    if not data:
        return None
    weight = float(data.get("weight", 0.0))
    return {
        "particles": len(data.get("grammar", {}).get("types", [])),
        "weight": "inf" if weight >= 1e299 else weight,
    }


def _prior_facts(state: Mapping[str, Any]) -> dict[str, int] | None:
    """The mass prior's size (bins, leaf species, stored (composition, bin) pairs), if any."""
    edges = state.get("evidence.mass_prior_edges")
    if edges is None:
        return None
    species = state.get("evidence.species_log_masses")
    keys = state.get("evidence.composition_keys")
    return {
        "bins": int(edges.numel()) - 1,
        "species": 0 if species is None else int(species.numel()),
        "compositions": 0 if keys is None else int(keys.numel()),
    }


def checkpoint_facts(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Everything :func:`format_facts` prints, from a loaded checkpoint (with or without
    ``lcag_info``); JSON-ready."""
    from lcag.evidence.node_evidence import upgrade_state_dict
    from lcag.training.lowrank import factorised_ranks

    stored = dict(checkpoint.get(METADATA_KEY) or {})
    hparams = dict(checkpoint["hyper_parameters"])
    state = upgrade_state_dict(dict(checkpoint["state_dict"]))
    model = dict(hparams["model"])
    low_rank = {k: r for k, r in factorised_ranks(state).items() if k.startswith("model.")}
    bases = {f"{name}.{b}" for name in low_rank for b in ("U", "V")}  # fixed, not trained
    n_parameters = sum(
        int(v.numel()) for k, v in state.items() if k.startswith("model.") and k not in bases
    )
    data = stored.get("data")
    if not data:
        datamodule = checkpoint.get("datamodule_hyper_parameters") or {}
        data = {"data_dir": datamodule.get("data_dir"), "recorded": False}
    evidence = hparams.get("node_evidence", "none")
    weight = state.get("evidence.weight")
    share = state.get("evidence.head_share")
    odds = state.get("evidence.topology_log_odds")
    trees = state.get("evidence.catalogue_trees")
    validation = stored.get("validation") or {}
    return _plain(
        {
            "lcag_version": stored.get("lcag_version"),
            "versions": {
                **(stored.get("versions") or {}),
                "lightning": checkpoint.get("pytorch-lightning_version"),
            },
            "model": {
                "class_path": model.get("class_path"),
                "init_args": model.get("init_args", {}),
                "parameters": n_parameters,
                **({"low_rank": low_rank} if low_rank else {}),  # OIALR: layer -> rank
            },
            "inputs": {
                "features": data.get("features"),
                "units": data.get("units"),
                "n_features": int(model.get("init_args", {}).get("n_features", 4)),
                "pair_features": list(hparams.get("pair_features") or []),
                "normalisation": {
                    "mean": state.get("feature_mean"),
                    "std": state.get("feature_std"),
                },
            },
            "node_evidence": {
                "kind": evidence,
                "weight": None if weight is None else float(weight),
                **({} if share is None else {"head_share": float(share)}),
                "mass_prior": _prior_facts(state),
                "note": NODE_EVIDENCE_NOTE,
            },
            # lcag.evidence.topology_prior: -inf (None in JSON) is off
            "topology_prior": {
                "log_odds": None if odds is None or float(odds) == -math.inf else float(odds),
                "catalogued_trees": 0 if trees is None else int(trees.shape[0]),
            },
            # one per leaf count (entry n for n leaves, larger events the last), or one number
            "tree_temperature": state.get("tree_temperature", 1.0),
            "grammar_rerank": _rerank_facts(checkpoint.get("grammar_rerank")),
            "data": data,
            "validation": validation,
            "best": _best_scores(checkpoint),
            "training": {
                "epoch": checkpoint.get("epoch"),
                "global_step": checkpoint.get("global_step"),
            },
        }
    )


def read_facts(path: str | Path) -> dict[str, Any]:
    """The facts of a checkpoint, or of an ONNX or TorchScript file from ``lcag export``.

    Raises:
        CheckpointError: a missing, truncated or corrupt checkpoint.
        InvalidInputError: an ONNX or TorchScript file without lcag's metadata, or unreadable.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")]
            if names:  # a TorchScript archive: read the JSON, no need to load the code
                return json.loads(archive.read(names[0]))
    elif path.is_file() and path.suffix.lower() == ".onnx":
        return onnx_facts(path)
    return checkpoint_facts(load_checkpoint(path))


def onnx_facts(path: str | Path) -> dict[str, Any]:
    """The facts in an ONNX file's ``metadata_props`` (``lcag_info``)."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "reading ONNX metadata needs onnx: pip install 'lcag[export]'"
        ) from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidInputError(f"{path}: not a readable ONNX file ({exc})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise InvalidInputError(f"{path}: an ONNX file without {METADATA_KEY!r} metadata")
    return json.loads(meta[METADATA_KEY])


# -------------------------------------------------------------------------- printing
def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _vector(values: Any) -> str:
    if not values:
        return "not recorded"
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _temperatures(table: Any) -> str:
    """The tree temperatures (one number, one per leaf count from 2 on, or such a row for
    trees of training topologies and one for others) in a line."""
    note = "(tree probabilities; lcag.callbacks.TreeCalibration)"
    if isinstance(table, list) and table and isinstance(table[0], list):
        if len(table) == 1 or table[0] == table[-1]:
            return _temperatures(table[0])
        known, other = (_temperatures(row).removesuffix(f" {note}") for row in table[:2])
        return f"known topologies {known}; others {other} {note}"
    values = table if isinstance(table, list) else [table]
    if len(set(values[2:] or values)) == 1:
        return f"{_number(float((values[2:] or values)[0]))} for every leaf count {note}"
    sizes = [f"{n}: {float(t):.3g}" for n, t in enumerate(values) if n >= 2]
    sizes[-1] = sizes[-1].replace(":", "+:", 1)
    return "by leaves " + ", ".join(sizes) + f" {note}"


def format_facts(facts: Mapping[str, Any]) -> str:
    """The facts as ``lcag info`` prints them: one labelled line (or a few) per topic."""
    lines: list[tuple[str, str]] = []
    model = facts.get("model", {})
    args = model.get("init_args", {})
    lines.append(("model", f"{model.get('class_path')}, {_number(model.get('parameters'))} "
                           "parameters"))  # fmt: skip
    if model.get("low_rank"):  # OIALR's factorised layers: their cores count, not the bases
        ranks = ", ".join(f"{k.removeprefix('model.')} {r}" for k, r in model["low_rank"].items())
        lines.append(("", f"{len(model['low_rank'])} low-rank layers (U S V^T), ranks: {ranks}"))
    lines.append(("", " ".join(f"{k}={v}" for k, v in args.items())))
    inputs = facts.get("inputs", {})
    features = inputs.get("features")
    names = ", ".join(features) if features else "not recorded (px, py, pz, E first)"
    units = inputs.get("units") or "not recorded"
    pairs = ", ".join(inputs.get("pair_features") or []) or "none"
    lines.append(("inputs", f"{names}; units {units}; pair features: {pairs}"))
    norm = inputs.get("normalisation", {})
    lines.append(("normalisation", f"mean {_vector(norm.get('mean'))}"))
    lines.append(("", f"std  {_vector(norm.get('std'))}"))

    data = facts.get("data") or {}
    lines.append(("training data", str(data.get("data_dir") or "not recorded")))
    if data.get("recorded") is False:
        lines.append(("", "checksum, events, features: not recorded in this checkpoint "
                          "(written before lcag recorded them)"))  # fmt: skip
    elif data.get("error"):
        lines.append(("", f"not recorded: {data['error']}"))
    else:
        lines.append(("", f"config sha256 {data.get('config_sha256')}, seed {data.get('seed')}, "
                          f"schema {data.get('schema_version')}, {data.get('dtype')}"))  # fmt: skip
        used = data.get("events_used") or {}
        counts = []
        for split, n in (data.get("events") or {}).items():
            extra = f" (used {_number(used[split])})" if split in used and used[split] != n else ""
            counts.append(f"{split} {_number(n)}{extra}")
        lines.append(("", "events: " + ", ".join(counts)))
        top = data.get("topologies") or {}
        lines.append(("", f"topologies: {top.get('known')} known + {top.get('unknown')} unseen; "
                          f"<= {data.get('max_leaves')} leaves, {data.get('n_classes')} "
                          "LCAG classes"))  # fmt: skip

    validation = facts.get("validation") or {}
    metrics = validation.get("metrics") or {}
    if metrics:
        where = f"epoch {validation.get('epoch')}, step {validation.get('global_step')}"
        if validation.get("events"):
            where += f", {validation['events']} {validation.get('split') or 'val'} events"
        lines.append(("validation", where))
        headline = [k for k in metrics if "perfect_L" not in k]  # perfect_L<n>: per size
        for name in headline:
            lines.append(("", f"{name} {_number(metrics[name])}"))
        sizes = {
            int(k.rsplit("perfect_L", 1)[1]): v for k, v in metrics.items() if "perfect_L" in k
        }
        if sizes:
            lines.append(("", "perfect by leaves: " + ", ".join(
                f"{n}: {sizes[n]:.3f}" for n in sorted(sizes))))  # fmt: skip
    else:
        lines.append(("validation", "not recorded"))
    for best in facts.get("best") or []:
        lines.append(("best", f"{best.get('callback')} {best.get('monitor')} = "
                              f"{_number(best.get('best_model_score'))}"))  # fmt: skip
    training = facts.get("training") or {}
    lines.append(("trained", f"epoch {training.get('epoch')}, step {training.get('global_step')}"))
    evidence = facts.get("node_evidence") or {}
    weight = evidence.get("weight")
    at = "" if weight is None else f" at weight {_number(weight)}"
    if evidence.get("head_share") is not None and evidence.get("kind") == "subset_head":
        at += f", head share {_number(evidence['head_share'])}"
    lines.append(("node evidence", f"{evidence.get('kind')}{at}: {NODE_EVIDENCE_NOTE}"))
    topology = facts.get("topology_prior") or {}
    if topology:
        odds = topology.get("log_odds")
        state = "off" if odds is None else f"log prior odds {_number(odds)}"
        lines.append(("topology prior", f"{state}, {topology.get('catalogued_trees', 0)} "
                                        "training topologies catalogued"))  # fmt: skip
    prior = evidence.get("mass_prior")
    if prior:
        lines.append(("mass prior", f"{prior['bins']} log-mass bins, {prior['species']} leaf "
                                    f"species, {prior['compositions']:,} (composition, bin) "
                                    "pairs"))  # fmt: skip
    if facts.get("tree_temperature") is not None:
        lines.append(("tree temperature", _temperatures(facts["tree_temperature"])))
    rerank = facts.get("grammar_rerank")
    if rerank:
        weight = rerank["weight"]
        state = "off (no gain on validation)" if not weight else f"weight {_number(weight)}"
        lines.append(("decay grammar", f"{rerank['particles']} particles, {state}; reranks "
                                       "trees of no training topology"))  # fmt: skip
    export = facts.get("export")
    if export:
        digest = str(export.get("checkpoint_sha256", ""))[:16]
        source = f"from {export.get('checkpoint')} (sha256 {digest}...)"
        lines.append(("export", f"{export.get('format')}, {source}"))
        lines.append(("", f"inputs {export.get('inputs')} -> outputs {export.get('outputs')}"))
    versions = facts.get("versions") or {}
    others = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    version = facts.get("lcag_version") or "not recorded"
    lines.append(("lcag version", f"{version}" + (f" ({others})" if others else "")))
    width = max(len(label) for label, _ in lines) + 2
    return "\n".join(f"{label:<{width}}{text}".rstrip() for label, text in lines)
