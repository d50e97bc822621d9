"""Cost of energy logging: sensor reads, phase switches, and a tiny fit with and without the
EnergyLogger callback; prints what the report says on this node.

Run: ``python benchmarks/bench_energy.py [--data data/tiny] [--epochs 5] [--repeats 2]``

The fit uses ``configs/fit/tiny_transformer.yaml`` (loggers and checkpoints in a temporary
directory); with and without the callback alternate so that warm-up favours neither.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def per_call_microseconds(function, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls * 1e6


def fit_seconds(data: Path, epochs: int, with_energy: bool, workdir: Path) -> tuple[float, dict]:
    from lcag.energy.callback import EnergyLogger
    from lcag.hpo.trial import fit_cli

    config = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_transformer.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False)
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(workdir)
    trainer["callbacks"] = [c for c in trainer["callbacks"] if "ProgressBar" not in c["class_path"]]
    for callback in trainer["callbacks"]:
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(workdir / "checkpoints")
    config["data"]["data_dir"] = str(data)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = fit_cli(path)
    if not with_energy:
        cli.trainer.callbacks = [
            c for c in cli.trainer.callbacks if not isinstance(c, EnergyLogger)
        ]
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    report = {}
    energy = workdir / "tiny_transformer" / "energy.json"
    if with_energy and energy.is_file():
        report = json.loads(energy.read_text())
    return seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "tiny")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from lcag.cli import quiet_known_warnings
    from lcag.energy import CpuTimeEstimate, EnergyMonitor

    quiet_known_warnings()

    estimate = CpuTimeEstimate()
    read = per_call_microseconds(estimate.joules_since_last, 20000)
    print(f"CPU-time estimate, one read: {read:.2f} us")
    monitor = EnergyMonitor(poll_seconds=0).start()
    phases = iter(["train", "inference"] * 10000)
    switch = per_call_microseconds(lambda: monitor.switch(next(phases)), 20000)
    monitor.stop()
    print(f"EnergyMonitor.switch (read + account): {switch:.2f} us")

    timings: dict[bool, list[float]] = {True: [], False: []}
    report: dict = {}
    for _ in range(args.repeats):
        for with_energy in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, got = fit_seconds(args.data, args.epochs, with_energy, Path(tmp))
            timings[with_energy].append(seconds)
            report = got or report
    without, with_ = statistics.median(timings[False]), statistics.median(timings[True])
    print(
        f"tiny_transformer fit, {args.epochs} epochs (median of {args.repeats}): "
        f"{without:.2f} s without EnergyLogger, {with_:.2f} s with "
        f"({(with_ / without - 1) * 100:+.1f} %)"
    )
    fit = report["stages"]["fit"]
    train, inference = fit["phases"]["train"], fit["phases"]["inference"]
    print(
        f"report: estimated = {report['estimated']} ({report['estimate_reason']}); "
        f"train {train['joules']:.0f} J at {train['watts']:.1f} W, "
        f"inference {inference['joules']:.0f} J at {inference['watts']:.1f} W, "
        f"{len(fit['epochs'])} epochs logged"
    )


if __name__ == "__main__":
    main()
