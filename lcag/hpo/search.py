"""The search: Propulate's asynchronous evolutionary optimiser over MPI ranks, one Lightning fit
per evaluation.

Layout of ``out_dir``:

    trials/<trial>/     one directory per evaluation (see :mod:`lcag.hpo.trial`)
    results.csv/.json   every trial: hyperparameters, objective, metrics, wall time, energy
    best.yaml           the best trial as a ready fit config (or where ``best_config`` says)
    energy.json         the whole search's energy (all ranks), estimated or measured
    propulate/          Propulate's own checkpoints;  propulate.log: its log

Resuming: a trial's ``result.json`` is written last and atomically, and it is the checkpoint.
Rerun the same command and every worker replays its finished evaluations in order (the recorded
hyperparameters and objective go back into the population, no fit), then goes on. Propulate's
own pickle checkpoint is not used to resume: it is written by one worker at a time and lags
behind the others' last evaluations, and Propulate 1.2.2 cannot load it when it holds no
individual of some worker (``max()`` of an empty list). Resume with the same number of ranks.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import socket
import sys
import traceback
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import yaml

from lcag.energy.monitor import EnergyMonitor, energy_summary
from lcag.energy.sensors import usable_cores
from lcag.errors import ConfigError, LCAGError, MissingDependencyError
from lcag.files import atomic_write_json, atomic_write_text
from lcag.hpo.config import HPOConfig
from lcag.hpo.space import PARAMETERS, SearchSpace, apply
from lcag.hpo.trial import TrialResult, as_list, load_result, run_trial, trial_config

__all__ = ["best_fit_config", "collect_results", "load_base", "run_search", "trial_name"]


def run_search(cfg: HPOConfig) -> list[TrialResult]:
    """Run (or resume) the search on every MPI rank; rank 0 returns all results, others ``[]``.

    Raises:
        ConfigError: bad settings, or ``out_dir`` holds a search with other settings.
        DatasetError: the data cannot be read (on one rank; with several, all are aborted).
    """
    MPI, propulate = _require_mpi()
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only.rank = 0  # each trial is a one-process fit, whatever SLURM_PROCID says
    comm = MPI.COMM_WORLD
    base = load_base(cfg.base, cfg.data_dir)
    space = SearchSpace(cfg.space, source="space")
    _check_settings(cfg, comm.size)
    out = Path(cfg.out_dir)
    problem, lock = None, None
    if comm.rank == 0:
        try:
            lock = _lock_out_dir(out)
            _claim_out_dir(out, cfg, comm.size)
        except ConfigError as err:
            problem = str(err)
    problem = comm.bcast(problem, root=0)
    if problem is not None:
        raise ConfigError(problem)
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    device = _device_for(local.rank, local.size)
    propulate.set_logger_config(
        level=logging.INFO, log_file=out / "propulate.log", log_to_stdout=False, colors=False
    )
    replayed = []

    def evaluate(individual: Any) -> float:
        name = trial_name(individual.island, individual.rank, individual.generation)
        trial_dir = out / "trials" / name
        done = load_result(trial_dir)
        if done is not None and space.contains(done.hyperparameters):
            # finished before an interruption: replay, do not refit
            _set_traits(individual, space.encode(done.hyperparameters))
            replayed.append(name)
            return done.objective
        point = space.decode(individual)
        config = trial_config(base, point, trial_dir, cfg.budget, device, cfg.watts_per_core)
        config["seed_everything"] = cfg.search.seed
        record = {
            "trial": name,
            "island": int(individual.island),
            "rank": int(individual.rank),
            "generation": int(individual.generation),
            "hyperparameters": point,
            "device": f"{device[0]}:{device[1]}",
        }
        result = run_trial(config, trial_dir, cfg.objective, record)
        print(
            f"[rank {comm.rank}] {name}: {cfg.objective} = {result.objective:.4f} "
            f"({result.status}, {result.wall_seconds:.1f} s)",
            flush=True,
        )
        return result.objective

    def loss_fn(individual: Any) -> float:
        try:
            return evaluate(individual)
        except Exception as err:
            if comm.size == 1:
                raise
            # Propulate's other ranks would wait for this one for ever: stop them all.
            print(f"lcag-hpo: error on rank {comm.rank}: {err}", file=sys.stderr, flush=True)
            if not isinstance(err, (LCAGError, FileNotFoundError)):
                traceback.print_exc()
            comm.Abort(2)
            raise

    rng = random.Random(cfg.search.seed + comm.rank)
    propagator = propulate.utils.get_default_propagator(
        pop_size=cfg.search.pop_size,
        limits=space.limits(),
        crossover_prob=cfg.search.crossover_probability,
        mutation_prob=cfg.search.mutation_probability,
        random_init_prob=cfg.search.random_init_probability,
        rng=rng,
    )
    islands = propulate.Islands(
        loss_fn=loss_fn,
        propagator=propagator,
        rng=rng,
        generations=cfg.search.evaluations_per_worker,
        num_islands=cfg.search.islands,
        migration_probability=cfg.search.migration_probability,
        pollination=cfg.search.pollination,
        checkpoint_path=out / "propulate",
    )
    monitor = EnergyMonitor(watts_per_core=cfg.watts_per_core, node_sensors=local.rank == 0)
    with monitor, monitor.phase("search"):
        islands.propulate(logging_interval=1, debug=0)
    if replayed:
        print(f"[rank {comm.rank}] resumed: replayed {len(replayed)} finished evaluations")
    joules = comm.allreduce(monitor.totals().get("search", {}).get("joules", 0.0))
    estimated = comm.allreduce(int(monitor.estimated), op=MPI.MAX)
    comm.barrier()
    if comm.rank != 0:
        return []
    results = collect_results(out)
    _write_table(out, results)
    _write_search_energy(out, monitor, joules, bool(estimated), comm.size, results)
    best = _best(results)
    if best is not None:
        path = Path(cfg.best_config) if cfg.best_config else out / "best.yaml"
        text = yaml.safe_dump(best_fit_config(base, best, cfg), sort_keys=False)
        atomic_write_text(path, _provenance(cfg, best) + text)
        print(f"best: {best.trial} {cfg.objective} = {best.objective:.4f} -> {path}")
    _print_table(results, cfg)
    if lock is not None:
        lock.close()
    return results


SETTINGS = "search.json"
CHANGEABLE = ("search.evaluations_per_worker", "best_config", "top_n")
"""Settings a resumed search may change (raising evaluations_per_worker extends it)."""


def search_settings(cfg: HPOConfig, ranks: int) -> dict[str, Any]:
    """What must stay the same for a search to resume: the settings (flattened), the base
    config's content, the number of ranks."""
    flat = _flatten(asdict(cfg))
    for key in CHANGEABLE:
        flat.pop(key, None)
    flat["base_sha256"] = hashlib.sha256(Path(cfg.base).read_bytes()).hexdigest()
    flat["ranks"] = ranks
    return flat


def _lock_out_dir(out: Path) -> IO[str]:
    """Hold ``out/search.lock`` for this process's lifetime: one search per ``out_dir``.

    The lock (``flock``) goes with the process, so a killed search leaves none behind; a rank
    that outlived its killed ``mpiexec`` still holds it, and a rerun says so.
    """
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / "search.lock", "a+")  # noqa: SIM115 (held until the search ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"out_dir {str(out)!r} is in use by another lcag-hpo (it holds {out}/search.lock); "
            "wait for it or stop it (all of its ranks) first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{socket.gethostname()} {os.getpid()}\n")
    handle.flush()
    return handle


def _claim_out_dir(out: Path, cfg: HPOConfig, ranks: int) -> None:
    """Record the settings in ``out/search.json``, or check that they are those recorded."""
    wanted = search_settings(cfg, ranks)
    path = out / SETTINGS
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except ValueError as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); move it aside") from None
        changed = sorted(k for k in set(wanted) | set(recorded) if wanted.get(k) != recorded.get(k))
        if changed:
            details = "; ".join(
                f"{k}: was {recorded.get(k)!r}, now {wanted.get(k)!r}" for k in changed
            )
            raise ConfigError(
                f"out_dir {str(out)!r} holds a search with other settings ({details}). "
                "Resume with the same settings, or give a new --out_dir"
            )
    (out / "trials").mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, wanted)
    shutil.rmtree(out / "propulate", ignore_errors=True)  # see the module docstring


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    one_hyperparameter = prefix.startswith("space.") and prefix.count(".") == 2
    if isinstance(value, dict) and not one_hyperparameter:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def trial_name(island: int, rank: int, generation: int) -> str:
    """``island0-worker1-eval002``: one evaluation's stable name (also its directory)."""
    return f"island{int(island)}-worker{int(rank)}-eval{int(generation):03d}"


def load_base(path: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """The base fit config as a dict (with ``data.data_dir`` overridden if given)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"base = {str(path)!r}: no such fit config (relative paths start in {Path.cwd()})"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(config, dict) or "model" not in config or "trainer" not in config:
        raise ConfigError(f"{path}: not a fit config (needs model: and trainer: sections)")
    if data_dir is not None:
        config.setdefault("data", {})["data_dir"] = str(data_dir)
    return config


def collect_results(out: str | Path) -> list[TrialResult]:
    """Every finished trial under ``out/trials``, best objective first."""
    results = []
    for trial_dir in sorted((Path(out) / "trials").iterdir()):
        result = load_result(trial_dir)
        if result is not None:
            results.append(result)
    return sorted(results, key=lambda r: (r.objective, r.trial))


def best_fit_config(base: Mapping[str, Any], best: TrialResult, cfg: HPOConfig) -> dict[str, Any]:
    """The base config with the best hyperparameters, its own run name, the base's budget."""
    config = apply(base, best.hyperparameters)
    name = f"{Path(cfg.base).stem}_hpo"
    trainer = config.get("trainer", {})
    save_dir = "runs"
    for logger in as_list(trainer.get("logger")):
        if isinstance(logger, dict):
            init_args = logger.setdefault("init_args", {})
            save_dir = init_args.get("save_dir", save_dir)
            init_args["name"] = name
    for callback in as_list(trainer.get("callbacks")):
        if isinstance(callback, dict) and callback.get("class_path", "").endswith(
            "ModelCheckpoint"
        ):
            callback.setdefault("init_args", {})["dirpath"] = f"{save_dir}/{name}/checkpoints"
    config["seed_everything"] = cfg.search.seed
    return config


def _provenance(cfg: HPOConfig, best: TrialResult) -> str:
    searched = ", ".join(f"{k} = {v}" for k, v in best.hyperparameters.items())
    return (
        f"# Best of the search {cfg.out_dir} (lcag-hpo, {datetime.now(timezone.utc):%Y-%m-%d}):\n"
        f"#   trial {best.trial}: {cfg.objective} = {best.objective:.4f} after "
        f"{best.epochs} epochs of budget\n"
        f"#   {searched}\n"
        f"# The trainer settings are the base config's ({cfg.base}), not the search budget.\n"
        f"#   lcag fit --config <this file>\n"
    )


def _best(results: list[TrialResult]) -> TrialResult | None:
    ok = [r for r in results if r.status == "ok"]
    return ok[0] if ok else None


COLUMNS = [
    "trial",
    "status",
    "objective",
    "val_loss",
    "val_perfect",
    *PARAMETERS,
    "epochs",
    "wall_seconds",
    "energy_joules",
    "energy_estimated",
    "device",
    "error",
]


def _rows(results: list[TrialResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {k: v for k, v in r.to_dict().items() if k != "hyperparameters"}
        row.update(r.hyperparameters)
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def _write_table(out: Path, results: list[TrialResult]) -> None:
    rows = _rows(results)
    atomic_write_json(out / "results.json", [r.to_dict() for r in results])
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", table.getvalue())


def _write_search_energy(
    out: Path,
    monitor: EnergyMonitor,
    joules: float,
    estimated: bool,
    ranks: int,
    results: list[TrialResult],
) -> None:
    seconds = monitor.totals().get("search", {}).get("seconds", 0.0)
    summary = energy_summary({"search": {"joules": joules, "seconds": seconds}})
    trials = [r.energy_joules for r in results if r.energy_joules is not None]
    atomic_write_json(
        out / "energy.json",
        {
            **monitor.describe(),
            "estimated": estimated,  # on any rank
            "ranks": ranks,
            "stages": {"search": {**summary, "world_size": ranks}},
            # per-trial figures added up; node-wide RAPL counters make concurrent trials overlap
            "sum_of_trials_joules": round(sum(trials), 3),
            "trials": len(results),
        },
    )


def _print_table(results: list[TrialResult], cfg: HPOConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lcag-hpo: {len(results)} evaluations, best {cfg.objective} first")
    shown = ["trial", "objective", *[d for d in PARAMETERS if d in cfg.space]]
    shown += ["wall_seconds", "energy_joules"]
    headers = {"wall_seconds": "s", "energy_joules": "J", "weight_decay": "wd"}
    headers.update(pair_features="pairs", batch_size="batch", objective=cfg.objective)
    for column in shown:
        justify = "left" if column == "trial" else "right"
        table.add_column(headers.get(column, column), justify=justify)
    for row in _rows(results)[: cfg.top_n]:
        table.add_row(*(_cell(row.get(c)) for c in shown))
    # Under mpiexec stdout is a pseudo-terminal of 80 columns: do not squeeze the table into it.
    Console(width=max(Console().width, 150)).print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    return "-" if value is None else str(value)


def _set_traits(individual: Any, traits: Mapping[str, Any]) -> None:
    """Write recorded traits into a Propulate individual (its categorical one-hot included)."""
    for key, value in traits.items():
        if isinstance(individual.limits[key][0], str):
            offset = individual.offsets[key]
            individual.position[offset : offset + len(individual.limits[key])] = 0.0
        individual[key] = value


def _device_for(local_rank: int, local_size: int) -> tuple[str, Any]:
    """GPU ``local_rank % n_gpus`` on GPU nodes; on CPU nodes, the cores shared among ranks."""
    import torch

    if torch.cuda.is_available():
        return ("gpu", [local_rank % torch.cuda.device_count()])
    cores = usable_cores() or os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // local_size))
    return ("cpu", 1)


def _check_settings(cfg: HPOConfig, ranks: int) -> None:
    s = cfg.search
    if s.evaluations_per_worker < 1:
        raise ConfigError(f"search.evaluations_per_worker = {s.evaluations_per_worker}: >= 1")
    if s.pop_size < 1:
        raise ConfigError(f"search.pop_size = {s.pop_size}: must be >= 1")
    if not 1 <= s.islands <= ranks:
        raise ConfigError(
            f"search.islands = {s.islands}: between 1 and the number of MPI ranks ({ranks})"
        )
    probabilities = (
        "migration_probability",
        "crossover_probability",
        "mutation_probability",
        "random_init_probability",
    )
    for name in probabilities:
        value = getattr(s, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"search.{name} = {value}: must lie in [0, 1]")
    b = cfg.budget
    if b.max_epochs < 1:
        raise ConfigError(f"budget.max_epochs = {b.max_epochs}: must be >= 1")
    if b.max_minutes is not None and not b.max_minutes > 0:
        raise ConfigError(f"budget.max_minutes = {b.max_minutes}: must be positive (or null)")
    for name in ("max_train_events", "max_eval_events"):
        value = getattr(b, name)
        if value is not None and value < 1:
            raise ConfigError(f"budget.{name} = {value}: must be >= 1 (or null)")
    if not cfg.watts_per_core > 0:
        raise ConfigError(f"watts_per_core = {cfg.watts_per_core}: must be positive")
    if cfg.top_n < 0:
        raise ConfigError(f"top_n = {cfg.top_n}: must be >= 0")


def _require_mpi() -> tuple[Any, Any]:
    try:
        import propulate
        import propulate.utils
        from mpi4py import MPI
    except ImportError as err:
        raise MissingDependencyError(
            f"lcag-hpo needs Propulate and MPI ({err.name} is missing): pip install 'lcag[hpo]'"
        ) from None
    return MPI, propulate
