"""Sharded, resumable, parallel dataset generation (the engine behind ``lcag-generate``).

Shards are independent units: shard ``i`` of split ``s`` draws its random numbers from
``SeedSequence(seed, spawn_key=(SHARD_KEY, split, i))`` and holds a fixed list of
``(topology, events)`` pieces, so its bytes do not depend on how many workers run or in which
order. A shard is written to a temporary name, its checksum file is written, then it is
renamed; a rerun keeps every shard whose checksum matches and redoes the rest. The manifest
is written last.

:func:`generate_part` writes one part of the shards (:mod:`lcag.data_gen.parts`) and, when it
finds every part done, the manifest; :func:`finalize_dataset` writes the manifest of a dataset
whose shards are all there. Every path builds the manifest with :func:`manifest_text`, which
merges the shards' own statistics in shard order, so the bytes do not depend on the path.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from lcag.data_gen.config import SPLITS, GenerationConfig, load_config
from lcag.data_gen.parts import (
    PARTS,
    Part,
    marker_counts,
    marker_path,
    publish_exclusive,
    read_markers,
    shards_of_part,
    write_marker,
    write_unique,
)
from lcag.data_gen.shards import (
    FEATURES,
    MANIFEST,
    SCHEMA_VERSION,
    TopologyTable,
    checksum_path,
    sha256_of,
    shard_path,
)
from lcag.data_gen.topology import Topology
from lcag.errors import ConfigError, DatasetError, InvalidInputError
from lcag.files import TMP_SUFFIX, atomic_write_text
from lcag.matrix import permute, tree_to_lcag
from lcag.stages import node_stages, stages_by_name, tree_to_stage_lcas

__all__ = [
    "PartOutcome",
    "ShardPlan",
    "build_topologies",
    "claim_directory",
    "feature_names",
    "finalize_dataset",
    "generate_dataset",
    "generate_part",
    "manifest_text",
    "plan_shards",
    "publish_shard",
    "write_manifest",
]

STATE = "generation.json"  # the config a directory is being generated with (written first)
TOPOLOGY_KEY, SHARD_KEY = 0, 2  # spawn_key prefixes of the seed streams (1: weight maxima)


@dataclass(frozen=True)
class ShardPlan:
    """One shard: which topologies, how many events of each."""

    split: str
    index: int
    pieces: tuple[tuple[int, int], ...]  # (topology id, events)

    @property
    def n_events(self) -> int:
        return sum(count for _, count in self.pieces)


def build_topologies(cfg: GenerationConfig) -> list[Topology]:
    """The dataset's topologies: ``known`` first, then ``unknown`` (test_unknown only), then
    ``val_unknown`` (the val_unknown split only); none is ever in training. Topologies are
    drawn one after the other from one stream, so adding a set leaves the earlier ones as
    they were."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(TOPOLOGY_KEY,)))
    t = cfg.topologies
    count = t.known + t.unknown + t.val_unknown
    if cfg.random is not None:
        from lcag.data_gen.topology import sample_random_topologies

        return sample_random_topologies(cfg.random, count, rng)
    from lcag.data_gen.decfile import sample_decfile_topologies

    topologies = sample_decfile_topologies(cfg.decfile, count, rng)
    _check_topologies(cfg, topologies)
    return topologies


def _check_topologies(cfg: GenerationConfig, topologies: Sequence[Topology]) -> None:
    """Fail before any shard when the detector or the stage map cannot label a topology."""
    if cfg.detector is not None:
        from lcag.data_gen.detector import leaf_species

        for topology in topologies:
            leaf_species(topology)
    if cfg.lcas is not None:
        stages = _stage_map(cfg)
        for k, topology in enumerate(topologies):
            try:
                node_stages(topology.tree, stages)
            except InvalidInputError as exc:
                raise ConfigError(f"lcas: topology {k}: {exc}") from None


def _stage_map(cfg: GenerationConfig) -> dict[int, int]:
    try:
        return stages_by_name(cfg.lcas.stages)
    except InvalidInputError as exc:
        raise ConfigError(str(exc)) from None


def feature_names(cfg: GenerationConfig) -> tuple[str, ...]:
    """The leaf feature columns a generation writes (``px, py, pz, E`` first)."""
    if cfg.detector is None:
        return FEATURES
    from lcag.data_gen.detector import detector_features

    return detector_features(cfg.detector)


def plan_shards(cfg: GenerationConfig) -> list[ShardPlan]:
    """Cut each split's events into shards of at most ``output.events_per_shard`` events."""
    n_known, n_unknown = cfg.topologies.known, cfg.topologies.unknown
    first_val_unknown = n_known + n_unknown
    topologies = {
        "test_unknown": range(n_known, first_val_unknown),
        "val_unknown": range(first_val_unknown, first_val_unknown + cfg.topologies.val_unknown),
    }
    plans = []
    for split in SPLITS:
        ids = topologies.get(split, range(n_known))
        per_topology = getattr(cfg.events, split)
        pieces: list[tuple[int, int]] = []
        room = cfg.output.events_per_shard
        for topology in ids:
            left = per_topology
            while left > 0:
                take = min(left, room)
                pieces.append((topology, take))
                left -= take
                room -= take
                if room == 0:
                    plans.append(ShardPlan(split, _count(plans, split), tuple(pieces)))
                    pieces, room = [], cfg.output.events_per_shard
        if pieces:
            plans.append(ShardPlan(split, _count(plans, split), tuple(pieces)))
    return plans


def _count(plans: list[ShardPlan], split: str) -> int:
    return sum(1 for p in plans if p.split == split)


# ----------------------------------------------------------------------------- the driver
def generate_dataset(
    cfg: GenerationConfig,
    out: Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Callable[[ShardPlan], None] | None = None,
) -> dict[str, Any]:
    """Generate (or finish) the dataset of ``cfg`` in ``out``; returns the manifest.

    Args:
        workers: processes generating shards; the output does not depend on it.
        overwrite: replace a dataset of another config found in ``out``.
        progress: show a progress bar with events/s.
        on_shard: called in this process after each shard is complete.

    Raises:
        DatasetError: ``out`` holds another config or foreign files.
    """
    out = Path(out)
    claim_directory(out, cfg.to_dict(), overwrite)
    topologies = build_topologies(cfg)
    table = TopologyTable.from_topologies(topologies, cfg.topologies.known)
    plans = plan_shards(cfg)
    _write_shards(cfg, out, topologies, table, plans, workers, progress, on_shard)
    return write_manifest(out, **_manifest_fields(cfg, topologies, table, plans))


@dataclass(frozen=True)
class PartOutcome:
    """What :func:`generate_part` did: its shards, and whether the dataset is now complete."""

    part: Part
    shards: int  # the part's shards (all complete now)
    events: int  # their events
    parts_done: int  # parts with a done-marker, this one included
    manifest: dict[str, Any] | None  # the dataset's manifest, once every part is done
    wrote_manifest: bool  # this call wrote it (False: another part did, or not yet complete)
    stale_markers: bool = False  # every marker is there but shards differ from them


def generate_part(
    cfg: GenerationConfig,
    out: Path,
    part: Part,
    *,
    workers: int = 1,
    progress: bool = True,
    on_shard: Callable[[ShardPlan], None] | None = None,
) -> PartOutcome:
    """Generate (or finish) part ``part`` of the dataset of ``cfg`` in ``out``.

    The part writes its shards (:func:`~lcag.data_gen.parts.shards_of_part`), then its
    done-marker; if every part's marker is there, it tries to write the manifest, which only
    one of the parts racing to do so succeeds in. Part ``0/1`` is :func:`generate_dataset`.

    Raises:
        DatasetError: ``out`` holds another config or foreign files.
    """
    out = Path(out)
    plans = plan_shards(cfg)
    if part.whole:
        manifest = generate_dataset(cfg, out, workers=workers, progress=progress, on_shard=on_shard)
        events = sum(p.n_events for p in plans)
        return PartOutcome(part, len(plans), events, 1, manifest, True)
    mine = shards_of_part(plans, part)
    claim_directory(out, cfg.to_dict(), False, shards=mine)
    marker = marker_path(out, part)
    for leftover in marker.parent.glob(f"{marker.name}{TMP_SUFFIX}*"):
        leftover.unlink(missing_ok=True)
    topologies = build_topologies(cfg)
    table = TopologyTable.from_topologies(topologies, cfg.topologies.known)
    _write_shards(cfg, out, topologies, table, mine, workers, progress, on_shard)
    write_marker(out, part, [_shard_entry(out, plan) for plan in mine])
    markers = read_markers(out, part.count)
    outcome = partial(PartOutcome, part, len(mine), sum(p.n_events for p in mine), len(markers))
    if len(markers) < part.count:
        return outcome(None, False)
    if not _markers_cover(out, plans, markers):
        return outcome(None, False, stale_markers=True)
    manifest, text = manifest_text(out, **_manifest_fields(cfg, topologies, table, plans))
    if publish_exclusive(out / MANIFEST, text):
        return outcome(manifest, True)
    try:  # another part won: its manifest stands
        return outcome(json.loads((out / MANIFEST).read_text()), False)
    except (OSError, ValueError):
        return outcome(None, False)


def finalize_dataset(out: Path) -> dict[str, Any]:
    """Write the manifest of the ``--config`` generation in ``out`` from its shards alone.

    Every shard the config plans is checked against its checksum first; the manifest is the
    one a single process would have written.

    Raises:
        DatasetError: ``out`` is not such a generation, or shards are missing or damaged (all
            named, with the parts that write them when done-markers say how many there are);
            nothing is written then.
    """
    out = Path(out)
    state = out / STATE
    if not out.is_dir():
        raise DatasetError(f"{out}: no such directory to finalize")
    if not state.is_file():
        raise DatasetError(
            f"{out}: not an lcag dataset (no {STATE}); --finalize takes the --out directory "
            "of lcag-generate --config"
        )
    held = _read_state(state)
    config = held.get("config") if held.get("schema_version") == SCHEMA_VERSION else None
    if not isinstance(config, dict):
        raise DatasetError(
            f"{state}: schema_version {held.get('schema_version')!r}, this lcag writes "
            f"{SCHEMA_VERSION}; regenerate the dataset with this version"
        )
    if "source" in config:
        raise DatasetError(
            f"{state}: a dataset converted from {config['source']} files, which the converter "
            "finishes itself; --finalize finishes lcag-generate --config generations"
        )
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise DatasetError(f"{state}: its config does not load: {exc}") from None
    plans = plan_shards(cfg)
    problems = [(k, p, why) for k, p in enumerate(plans) if (why := _shard_problem(out, p))]
    if problems:
        raise DatasetError(_unfinished_message(out, plans, problems))
    topologies = build_topologies(cfg)
    table = TopologyTable.from_topologies(topologies, cfg.topologies.known)
    return write_manifest(out, **_manifest_fields(cfg, topologies, table, plans))


def _write_shards(
    cfg: GenerationConfig,
    out: Path,
    topologies: Sequence[Topology],
    table: TopologyTable,
    plans: Sequence[ShardPlan],
    workers: int,
    progress: bool,
    on_shard: Callable[[ShardPlan], None] | None,
) -> None:
    """Write every shard of ``plans`` that is not already complete in ``out``."""
    pending = [p for p in plans if not _shard_is_done(out, p)]
    done_events = sum(p.n_events for p in plans) - sum(p.n_events for p in pending)
    pool = None
    if workers > 1 and pending:
        # One worker estimates the weight maxima while the others start (TensorFlow import,
        # tracing phasespace for every number of children); this process never loads
        # TensorFlow, which saves its memory.
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=_join_pool
        )
        estimate = pool.submit(_ceilings, cfg, topologies) if cfg.kinematics.unweight else None
        for _ in range(workers - 1 if estimate is not None else workers):
            pool.submit(_warm_up, topologies)
        try:
            ceilings = None if estimate is None else estimate.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    else:
        ceilings = _ceilings(cfg, topologies) if pending and cfg.kinematics.unweight else None
    with _ProgressBar(progress, sum(p.n_events for p in plans), done_events) as advance:
        tasks = [(cfg, table, ceilings, out, plan) for plan in pending]
        if pool is None:
            for task in tasks:
                write_shard(*task)
                advance(task[-1].n_events)
                if on_shard:
                    on_shard(task[-1])
        else:
            with pool:
                futures = {pool.submit(write_shard, *task): task[-1] for task in tasks}
                try:
                    for future in as_completed(futures):
                        future.result()
                        advance(futures[future].n_events)
                        if on_shard:
                            on_shard(futures[future])
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise


def _manifest_fields(
    cfg: GenerationConfig,
    topologies: Sequence[Topology],
    table: TopologyTable,
    plans: Sequence[ShardPlan],
) -> dict[str, Any]:
    """The arguments of :func:`manifest_text` for a ``--config`` generation."""
    return {
        "config": cfg.to_dict(),
        "shards": plans,
        "table": table,
        "n_classes": _n_classes(cfg, [t.depth for t in topologies]),
        "units": "GeV" if cfg.decfile is not None else "a.u. (the paper's mass units)",
        "dtype": cfg.output.dtype,
        "features": feature_names(cfg),
        "extra": _manifest_extra(cfg),
    }


def _manifest_extra(cfg: GenerationConfig) -> dict[str, Any]:
    """Manifest entries of the optional targets: leaf species, LCAS stages."""
    extra: dict[str, Any] = {}
    if cfg.detector is not None:
        from lcag.data_gen.detector import SPECIES

        extra["species"] = list(SPECIES)
    if cfg.lcas is not None:
        stages = _stage_map(cfg)
        extra["lcas"] = {
            "stages_by_abs_pdg_id": {str(k): v for k, v in sorted(stages.items())},
            "n_classes": max(stages.values()) + 1,
        }
    return extra


def _shard_entry(out: Path, plan: ShardPlan) -> dict[str, str]:
    path = shard_path(out, plan.split, plan.index)
    return {"file": str(path.relative_to(out)), "sha256": checksum_path(path).read_text().strip()}


def _markers_cover(out: Path, plans: Sequence[ShardPlan], markers: dict[int, Any]) -> bool:
    """Every planned shard is in a marker, with the checksum its checksum file holds now."""
    recorded = {
        entry.get("file"): entry.get("sha256")
        for marker in markers.values()
        for entry in marker.get("shards", [])
        if isinstance(entry, dict)
    }
    for plan in plans:
        path = shard_path(out, plan.split, plan.index)
        check = checksum_path(path)
        if not (path.is_file() and check.is_file()):
            return False
        if recorded.get(str(path.relative_to(out))) != check.read_text().strip():
            return False
    return True


def _shard_problem(out: Path, plan: ShardPlan) -> str:
    """Why a shard is not complete ("" when it is), verifying its checksum."""
    path = shard_path(out, plan.split, plan.index)
    check = checksum_path(path)
    if not path.is_file():
        return "missing"
    if not check.is_file():
        return f"no {check.name}"
    if check.read_text().strip() != sha256_of(path):
        return "checksum differs"
    return ""


def _unfinished_message(
    out: Path, plans: Sequence[ShardPlan], problems: Sequence[tuple[int, ShardPlan, str]]
) -> str:
    shown = 6
    named = [
        f"{shard_path(out, p.split, p.index).relative_to(out)} ({why})" for _, p, why in problems
    ]
    listed = ", ".join(named[:shown])
    if len(named) > shown:
        listed += f" and {len(named) - shown} more"
    counts = marker_counts(out)
    if len(counts) == 1:
        n = counts[0]
        parts = sorted({k % n for k, _, _ in problems})
        done = read_markers(out, n)
        names = ", ".join(f"{i}/{n}" + ("" if i in done else " (no done-marker)") for i in parts)
        if len(parts) == 1:
            advice = (
                f"part {names} is not complete: rerun it (--part {parts[0]}/{n}), then --finalize"
            )
        else:
            advice = f"parts {names} are not complete: rerun them (--part i/{n}), then --finalize"
    else:
        advice = "rerun the generation (all of it, or every --part), then --finalize"
    return (
        f"{out}: {len(problems)} of {len(plans)} shards not complete, no manifest written: "
        f"{listed}; {advice}"
    )


def claim_directory(
    out: Path,
    config: dict[str, Any],
    overwrite: bool,
    shards: Sequence[ShardPlan] | None = None,
) -> None:
    """Make ``out`` ours for ``config``: refuse another config, clear leftovers of a crash.

    Parts of one generation may claim the same directory at the same time: the first to
    create ``generation.json`` wins, the others check that it holds their config.

    Args:
        shards: the shards this process writes, whose leftovers it clears; ``None``: all of
            them (one process writes the whole dataset).

    Raises:
        DatasetError: ``out`` holds a dataset of another config (unless ``overwrite``) or
            foreign files.
    """
    state_file = out / STATE
    wanted = {"schema_version": SCHEMA_VERSION, "config": config}
    text = json.dumps(wanted, indent=1, sort_keys=True) + "\n"
    if not state_file.is_file():
        # Only another process's generation.json on its way in may be there already.
        if out.exists() and any(not p.name.startswith(STATE) for p in out.iterdir()):
            raise DatasetError(
                f"{out}: not empty and not an lcag dataset (no {STATE}); choose an empty directory"
            )
        out.mkdir(parents=True, exist_ok=True)
        publish_exclusive(state_file, text)  # a part starting at once may win: compared next
    held = _read_state(state_file)
    if held != wanted:
        if not overwrite:
            difference = _first_difference(held, wanted)
            raise DatasetError(
                f"{out}: holds a dataset of another config ({difference}); "
                "pass --overwrite to replace it, or choose another directory"
            )
        _remove_dataset(out)
        write_unique(state_file, text)
    if shards is None:
        for split in SPLITS:
            for leftover in (out / split).glob(f"*{TMP_SUFFIX}*"):
                leftover.unlink(missing_ok=True)
        for leftover in out.glob(f"{MANIFEST}{TMP_SUFFIX}*"):
            leftover.unlink(missing_ok=True)
        return
    for plan in shards:  # other parts may be writing theirs right now
        path = shard_path(out, plan.split, plan.index)
        for name in (path.name, checksum_path(path).name):
            for leftover in path.parent.glob(f"{name}{TMP_SUFFIX}*"):
                leftover.unlink(missing_ok=True)


def _read_state(state_file: Path) -> dict[str, Any]:
    try:
        held = json.loads(state_file.read_text())
    except ValueError as exc:
        raise DatasetError(f"{state_file}: not valid JSON ({exc})") from None
    if not isinstance(held, dict):
        raise DatasetError(f"{state_file}: expected a JSON object, got {type(held).__name__}")
    return held


def _remove_dataset(out: Path) -> None:
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    for name in (MANIFEST, STATE):
        (out / name).unlink(missing_ok=True)
        (out / f"{name}.claim").unlink(missing_ok=True)


def _first_difference(held: Any, wanted: Any, where: str = "") -> str:
    if isinstance(held, dict) and isinstance(wanted, dict):
        for key in sorted(set(held) | set(wanted)):
            if held.get(key) != wanted.get(key):
                return _first_difference(
                    held.get(key), wanted.get(key), f"{where}.{key}".strip(".")
                )
    return f"{where}: {held!r} there, {wanted!r} here"


def _shard_is_done(out: Path, plan: ShardPlan) -> bool:
    """A shard counts only when its file matches its checksum; otherwise it is removed."""
    path = shard_path(out, plan.split, plan.index)
    check = checksum_path(path)
    if path.is_file() and check.is_file() and check.read_text().strip() == sha256_of(path):
        return True
    path.unlink(missing_ok=True)
    check.unlink(missing_ok=True)
    return False


class _ProgressBar:
    """A rich progress bar in events with an events/s column (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class EventsPerSecond(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} events/s" if speed else "- events/s")

        self._progress = Progress(
            TextColumn("generating"),
            BarColumn(),
            MofNCompleteColumn(),
            EventsPerSecond(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._progress.start()
        task = self._progress.add_task("events", total=self.total, completed=self.done)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()


# ------------------------------------------------------------------------- one shard
_WORKER: dict[str, Any] = {}  # per process: the phasespace engine, topologies, weight maxima


def _ceilings(cfg: GenerationConfig, topologies: Sequence[Topology]) -> list[np.ndarray]:
    """Maximum decay weights for accept-reject, estimated once for all workers."""
    from lcag.data_gen.kinematics import children_counts, max_weights

    engine = _engine()
    ceilings = max_weights(topologies, engine, cfg.seed)
    engine.prepare(children_counts(topologies))  # two-body decays have no estimate
    return ceilings


def _warm_up(topologies: Sequence[Topology]) -> None:
    """Start TensorFlow and trace phasespace in this worker before its first shard."""
    from lcag.data_gen.kinematics import children_counts

    _engine().prepare(children_counts(topologies))


def _engine() -> Any:
    """This process's phasespace engine (created, and TensorFlow imported, on first use)."""
    from lcag.data_gen.kinematics import NBodyEngine

    if "engine" not in _WORKER:
        _WORKER["engine"] = NBodyEngine()
        if _WORKER.get("pool_worker"):
            atexit.register(_exit_without_teardown)
    return _WORKER["engine"]


def _join_pool() -> None:
    """Initializer of the shard pool's workers (and of no other process)."""
    _WORKER["pool_worker"] = True


def _exit_without_teardown() -> None:
    """End a shard-pool worker at once: TensorFlow's teardown takes about a second per process,
    and a worker has nothing left to save (its shards are published, its results sent; the pool
    reads no worker's exit code). Registered after TensorFlow's own exit handlers, so it runs
    before them."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def write_shard(
    cfg: GenerationConfig,
    table: TopologyTable,
    ceilings: Sequence[np.ndarray] | None,
    out: Path,
    plan: ShardPlan,
) -> None:
    """Generate one shard and publish it atomically (checksum first, then the file)."""
    publish_shard(
        shard_path(out, plan.split, plan.index),
        _shard_events(cfg, table, ceilings, plan),
        table,
        np.dtype(cfg.output.dtype),
        split=plan.split,
        index=plan.index,
    )


Groups = dict[int, tuple]  # n -> (features, lcag, topology, order[, {name: target}])


def publish_shard(
    path: Path, groups: Groups, table: TopologyTable, dtype: np.dtype, *, split: str, index: int
) -> None:
    """Write events grouped by leaf count to ``path`` atomically, with its checksum file.

    Args:
        groups: leaf count ``n`` -> ``(features (N, n, F), lcag (N, n, n), topology (N,),
            order (N, n))``, optionally with a fifth item, ``{name: int8 array}`` of further
            targets (``lcas (N, n, n)``, ``species (N, n)``).
        table: the dataset's topology table, stored in every shard.
        dtype: the feature dtype on disk.
    """
    import h5py

    tmp = path.with_name(path.name + f"{TMP_SUFFIX}-{os.getpid()}")
    path.parent.mkdir(exist_ok=True)  # a split's folder appears with its first shard
    width = next(iter(groups.values()))[0].shape[-1] if groups else len(FEATURES)
    total = np.zeros(width)
    squares = np.zeros(width)
    leaves = 0
    events = 0
    with h5py.File(tmp, "w") as handle:
        for n in sorted(groups):
            features, lcag, topology, order = groups[n][:4]
            extras = groups[n][4] if len(groups[n]) > 4 else {}
            group = handle.create_group(f"L{n}")
            for name, data, kind in (
                ("features", features, dtype),
                ("lcag", lcag, np.int8),
                ("topology", topology, np.int32),
                ("order", order, np.int8),
                *((key, extras[key], np.int8) for key in sorted(extras)),
            ):
                group.create_dataset(name, data=data.astype(kind), track_times=False)
            stored = features.astype(dtype).astype(np.float64)
            total += stored.sum(axis=(0, 1))
            squares += np.square(stored).sum(axis=(0, 1))
            leaves += stored.shape[0] * stored.shape[1]
            events += stored.shape[0]
        handle.attrs["schema_version"] = SCHEMA_VERSION
        handle.attrs["split"] = split
        handle.attrs["shard"] = index
        handle.attrs["n_events"] = events
        handle.attrs["feature_sum"] = total
        handle.attrs["feature_sum_squares"] = squares
        handle.attrs["leaf_count"] = leaves
        table.write(handle.create_group("topologies"))
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    atomic_write_text(checksum_path(path), sha256_of(tmp) + "\n")
    os.replace(tmp, path)


def _topology_key(table: TopologyTable, tid: int) -> tuple:
    """What topology ``tid`` of ``table`` is (its nodes' rows), for this process's cache: one
    process may write datasets of other configs with the same seed and topology ids."""
    lo, hi = int(table.node_offsets[tid]), int(table.node_offsets[tid + 1])
    rows = (table.parents, table.masses, table.widths, table.pdg_ids)
    return (*(a[lo:hi].tobytes() for a in rows), table.names[lo:hi])


def _shard_events(
    cfg: GenerationConfig,
    table: TopologyTable,
    ceilings: Sequence[np.ndarray] | None,
    plan: ShardPlan,
) -> Groups:
    """Events of a shard grouped by leaf count: features, lcag, topology ids, leaf orders,
    and the optional targets (``lcas``, ``species``)."""
    from lcag.data_gen.kinematics import add_background, generate_events, smear

    engine = _engine()
    cache = _WORKER.setdefault("topologies", {})
    ids = [tid for tid, _ in plan.pieces]
    stages = None if cfg.lcas is None else tuple(sorted(_stage_map(cfg).items()))
    keys = {tid: (_topology_key(table, tid), stages) for tid in ids}
    for tid in ids:
        if keys[tid] not in cache:
            topology = table.topology(tid)
            targets = {"lcag": tree_to_lcag(topology.tree)}
            if cfg.lcas is not None:
                targets["lcas"] = tree_to_stage_lcas(topology.tree, dict(stages))
            cache[keys[tid]] = (topology, targets)
    topologies = [cache[keys[tid]][0] for tid in ids]
    split_index = SPLITS.index(plan.split)
    rng = np.random.default_rng(
        np.random.SeedSequence(cfg.seed, spawn_key=(SHARD_KEY, split_index, plan.index))
    )
    counts = [count for _, count in plan.pieces]
    chosen = None if ceilings is None else [ceilings[tid] for tid in ids]
    if cfg.detector is None:
        blocks = generate_events(topologies, counts, rng, engine, cfg.kinematics, chosen)
    else:
        blocks = _detected_events(cfg, topologies, counts, rng, engine, chosen)
    groups: dict[int, list[tuple]] = {}
    final_state = table.final_state_masses()
    for tid, topology, block in zip(ids, topologies, blocks, strict=True):
        targets = cache[keys[tid]][1]
        columns: dict[str, np.ndarray] = {}
        if cfg.detector is None:
            leaf_masses = topology.tree.masses[: topology.n_leaves]
            leaves = smear(block.leaves, leaf_masses, cfg.kinematics.momentum_resolution, rng)
            background = add_background(len(leaves), cfg.kinematics, final_state, rng)
        else:
            from lcag.data_gen.detector import background_species, beam_background, leaf_species

            leaves = block
            background = beam_background(len(leaves), cfg.detector, rng)
            species = leaf_species(topology)[0]
        for n_extra in sorted({len(b) for b in background}):
            events = [e for e, b in enumerate(background) if len(b) == n_extra]
            extra = np.stack([background[e] for e in events]) if n_extra else None
            if cfg.detector is not None:
                tail = (
                    np.zeros((len(events), 0), np.int8)
                    if extra is None
                    else background_species(extra)
                )
                head = np.broadcast_to(species, (len(events), len(species)))
                columns = {"species": np.concatenate([head, tail], axis=1)}
            part = _shuffled(
                tid,
                leaves[events],
                extra,
                targets["lcag"],
                rng,
                matrices={k: v for k, v in targets.items() if k != "lcag"},
                columns=columns,
            )
            groups.setdefault(part[0].shape[1], []).append(part)
    return {n: _concatenate_parts(parts) for n, parts in groups.items()}


def _concatenate_parts(parts: Sequence[tuple]) -> tuple:
    """Join :func:`_shuffled` outputs of one leaf count (their optional targets too)."""
    joined = tuple(np.concatenate([p[k] for p in parts]) for k in range(4))
    names = sorted(parts[0][4]) if len(parts[0]) > 4 else []
    if not names:
        return joined
    return (*joined, {name: np.concatenate([p[4][name] for p in parts]) for name in names})


def _detected_events(
    cfg: GenerationConfig,
    topologies: Sequence[Topology],
    counts: Sequence[int],
    rng: np.random.Generator,
    engine: Any,
    ceilings: Sequence[np.ndarray] | None,
) -> list[np.ndarray]:
    """Per topology, ``(count, L, F)`` measured features of events the detector keeps.

    Events with a lost leaf (efficiency, thresholds) are dropped and replaced: each round
    generates the missing events divided by the acceptance seen so far (the efficiencies'
    product at first), so the result depends only on the inputs and ``rng``.

    Raises:
        ConfigError: a topology whose acceptance is below 1 in 1000 after 10,000 events.
    """
    from lcag.data_gen.detector import (
        acceptance_guess,
        leaf_species,
        measure,
        production_displacement,
    )
    from lcag.data_gen.kinematics import generate_events

    detector = cfg.detector
    labels = [leaf_species(t) for t in topologies]
    rate = [acceptance_guess(species, detector) for species, _ in labels]
    missing = list(counts)
    kept: list[list[np.ndarray]] = [[] for _ in topologies]
    tried, accepted = [0] * len(topologies), [0] * len(topologies)
    while any(missing):
        active = [k for k, m in enumerate(missing) if m > 0]
        asks = [int(np.ceil(missing[k] / max(rate[k], 1e-3) * 1.05)) + 4 for k in active]
        blocks = generate_events(
            [topologies[k] for k in active],
            asks,
            rng,
            engine,
            cfg.kinematics,
            None if ceilings is None else [ceilings[k] for k in active],
        )
        for k, ask, block in zip(active, asks, blocks, strict=True):
            species, charges = labels[k]
            masses = topologies[k].tree.masses[: topologies[k].n_leaves]
            displacement = None
            if detector.vertex is not None:
                displacement = production_displacement(
                    block.leaves, topologies[k], detector.vertex, rng
                )
            features, ok = measure(
                block.leaves, masses, species, charges, detector, rng, displacement
            )
            take = features[ok][: missing[k]]
            kept[k].append(take)
            missing[k] -= len(take)
            tried[k] += ask
            accepted[k] += int(ok.sum())
            rate[k] = max(accepted[k] / tried[k], 1e-3)
            if missing[k] and tried[k] >= 10_000 and accepted[k] < tried[k] / 1000:
                tree = topologies[k].tree
                raise ConfigError(
                    f"detector: {accepted[k]} of {tried[k]} {tree.label(tree.root)} -> "
                    f"{', '.join(tree.label(leaf) for leaf in tree.leaves)} events have every "
                    "leaf reconstructed; lower the thresholds or raise the efficiencies"
                )
    return [np.concatenate(parts) for parts in kept]


def _shuffled(
    topology_id: int,
    leaves: np.ndarray,
    extra: np.ndarray | None,
    base_lcag: np.ndarray,
    rng: np.random.Generator,
    *,
    matrices: dict[str, np.ndarray] | None = None,
    columns: dict[str, np.ndarray] | None = None,
) -> tuple:
    """Append background leaves, shuffle leaves per event.

    Args:
        leaves: ``(E, L, F)`` the tree's leaves; ``extra``: ``(E, k, F)`` background leaves.
        base_lcag: ``(L, L)`` the topology's LCAG.
        matrices: further ``(L, L)`` pair targets (``lcas``), class 0 with background.
        columns: further ``(E, L + k)`` per-leaf targets (``species``), background included.

    Returns:
        ``(features (E, n, F), lcag (E, n, n), id (E,), order (E, n))``, plus a dict of the
        shuffled further targets when any are given.
    """
    E, L, _ = leaves.shape
    n_extra = 0 if extra is None else extra.shape[1]
    n = L + n_extra
    features = leaves if extra is None else np.concatenate([leaves, extra], axis=1)
    source = np.concatenate([np.arange(L), np.full(n_extra, -1)])  # topology leaf or -1
    order = np.argsort(rng.random((E, n)), axis=1)  # event leaf k <- unshuffled leaf order[k]
    shuffled = np.take_along_axis(features, order[:, :, None], axis=1)
    out = (
        shuffled,
        permute(_padded(base_lcag, n), order),
        np.full(E, topology_id, dtype=np.int32),
        source[order],
    )
    if not matrices and not columns:
        return out
    targets = {name: permute(_padded(m, n), order) for name, m in (matrices or {}).items()}
    for name, column in (columns or {}).items():
        targets[name] = np.take_along_axis(column, order, axis=1)
    return (*out, targets)


def _padded(matrix: np.ndarray, n: int) -> np.ndarray:
    """``(L, L)`` pair labels inside an ``(n, n)`` int8 zero matrix (class 0: background)."""
    full = np.zeros((n, n), dtype=np.int8)  # LCAG/LCAS classes fit int8, as on disk
    full[: len(matrix), : len(matrix)] = matrix
    return full


# --------------------------------------------------------------------------- manifest
def write_manifest(
    out: Path,
    *,
    config: dict[str, Any],
    shards: Sequence[ShardPlan],
    table: TopologyTable,
    n_classes: int,
    units: str,
    dtype: str,
    features: Sequence[str] = FEATURES,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Summarise finished shards into ``out/manifest.json`` (written atomically, last).

    The manifest is :func:`manifest_text`'s.
    """
    manifest, text = manifest_text(
        out,
        config=config,
        shards=shards,
        table=table,
        n_classes=n_classes,
        units=units,
        dtype=dtype,
        features=features,
        extra=extra,
    )
    atomic_write_text(out / MANIFEST, text)
    return manifest


def manifest_text(
    out: Path,
    *,
    config: dict[str, Any],
    shards: Sequence[ShardPlan],
    table: TopologyTable,
    n_classes: int,
    units: str,
    dtype: str,
    features: Sequence[str] = FEATURES,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """The manifest of finished shards, as a dict and as the text of ``manifest.json``.

    ``features`` names the leaf feature columns; ``extra`` adds entries (the species and
    stage tables of optional targets).

    Event counts, leaf counts and checksums are read from the shards themselves, one shard
    at a time. The normalisation statistics are those of the train split's leaves, merged
    from each shard's stored sums (``feature_sum``, ``feature_sum_squares``, ``leaf_count``)
    in shard order, so the bytes are the same whichever process, or how many, wrote the
    shards, and no process holds more than one shard's attributes.
    """
    import h5py

    written = {plan.split for plan in shards}
    splits: dict[str, Any] = {
        s: {"events": 0, "shards": []} for s in SPLITS if s != "val_unknown" or s in written
    }
    total = np.zeros(len(features))
    squares = np.zeros(len(features))
    leaves = 0
    for plan in shards:
        path = shard_path(out, plan.split, plan.index)
        with h5py.File(path, "r") as handle:
            counts = {k[1:]: int(handle[k]["topology"].shape[0]) for k in handle if k[0] == "L"}
            n_events = int(handle.attrs["n_events"])
            if plan.split == "train":
                total += handle.attrs["feature_sum"]
                squares += handle.attrs["feature_sum_squares"]
                leaves += int(handle.attrs["leaf_count"])
        splits[plan.split]["shards"].append(
            {
                "file": str(path.relative_to(out)),
                "events": n_events,
                "sha256": checksum_path(path).read_text().strip(),
                "leaf_counts": dict(sorted(counts.items(), key=lambda kv: int(kv[0]))),
            }
        )
        splits[plan.split]["events"] += n_events
    mean = total / max(leaves, 1)
    std = np.sqrt(np.maximum(squares / max(leaves, 1) - mean**2, 0.0))
    leaf_counts = [int(n) for s in splits.values() for sh in s["shards"] for n in sh["leaf_counts"]]
    val_unknown = {t for plan in shards if plan.split == "val_unknown" for t, _ in plan.pieces}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "seed": config.get("seed"),
        "versions": _versions(),
        "features": list(features),
        **(extra or {}),
        "units": units,
        "dtype": dtype,
        "n_classes": n_classes,
        "max_leaves": max(leaf_counts, default=0),
        "topologies": {
            "known": int(table.known.sum()),
            "unknown": int((~table.known).sum()) - len(val_unknown),
            **({"val_unknown": len(val_unknown)} if val_unknown else {}),
            "max_depth": max(t.depth for t in table),
            "stored_in": "/topologies of every shard",
        },
        "splits": splits,
        "normalisation": {"split": "train", "mean": mean.tolist(), "std": std.tolist()},
    }
    return manifest, json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def _n_classes(cfg: GenerationConfig, depths: Sequence[int]) -> int:
    """LCAG classes C: 0 (diagonal, background) and heights 1..depth-1, depth from the config."""
    limit = cfg.random.max_depth if cfg.random is not None else cfg.decfile.max_depth
    return int(limit or max(depths))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("lcag", "numpy", "h5py", "phasespace", "tensorflow", "decaylanguage", "particle"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
