"""``lcag-reconstruct`` over ROOT files of N and 10 N events: events/s and peak memory.

    python benchmarks/bench_reconstruct.py --ckpt runs/tiny_transformer/checkpoints/best.ckpt \\
        --events 100000 1000000

Writes a ROOT file per size (a TTree ``events``: jagged float32 ``px py pz E``, 2-8 leaves per
event with physical 4-momenta, ``E = sqrt(p^2 + m^2)`` for masses of e, mu, pi, K, p and the
photon; int64 ``event`` and int32 ``run`` to carry), then runs ``lcag-reconstruct`` on each
in its own process and reads that process's peak resident memory from ``os.wait4``. The
command reads in chunks of ``--step-size`` entries, so its peak memory should not grow with
the file: the last line compares the largest file's peak with the smallest's.

Columns: wall time of the whole command (Python and torch start-up and checkpoint loading
included) and events/s over it; the command's own events/s (reading, model, decoding,
writing: from its summary line); peak RSS of the process.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MASSES = np.array([0.0, 0.000511, 0.10566, 0.13957, 0.49368, 0.93827])  # GeV
WRITE_CHUNK = 100_000


def make_input(path: Path, n_events: int, seed: int = 0) -> Path:
    """A ROOT file of ``n_events`` random events, written in chunks (flat memory)."""
    import awkward as ak
    import uproot

    rng = np.random.default_rng(seed)
    jagged = ak.types.ListType(ak.types.NumpyType("float32"))
    with uproot.recreate(path) as file:
        tree = file.mktree(
            "events",
            {"px": jagged, "py": jagged, "pz": jagged, "E": jagged,
             "event": np.int64, "run": np.int32},
        )  # fmt: skip
        for start in range(0, n_events, WRITE_CHUNK):
            n = min(WRITE_CHUNK, n_events - start)
            counts = rng.integers(2, 9, size=n)
            total = int(counts.sum())
            p = rng.normal(0.0, 1.5, size=(total, 3))  # GeV
            m = rng.choice(MASSES, size=total)
            e = np.sqrt((p**2).sum(axis=1) + m**2)
            values = zip(("px", "py", "pz", "E"), (*p.T, e), strict=True)
            columns = {
                name: ak.unflatten(np.ascontiguousarray(v, dtype=np.float32), counts)
                for name, v in values
            }
            columns["event"] = np.arange(start, start + n, dtype=np.int64)
            columns["run"] = np.full(n, 1, dtype=np.int32)
            tree.extend(columns)
    return path


def run_command(args: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``args``; returns ``(wall seconds, peak RSS in MiB, exit status)``."""
    began = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    return wall, usage.ru_maxrss / 1024, process.returncode  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="runs/tiny_transformer/checkpoints/best.ckpt")
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--step-size", type=int, default=10_000)
    parser.add_argument("--out-format", choices=("root", "parquet"), default="root")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
    if not Path(args.ckpt).is_file():
        sys.exit(f"{args.ckpt}: no checkpoint (make demo trains one)")

    work = Path(tempfile.mkdtemp(prefix="bench_reconstruct_", dir=args.dir))
    import torch  # only to report the threads the command will use

    print(f"lcag-reconstruct on {os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}),"
          f" step {args.step_size:,}, checkpoint {args.ckpt}")  # fmt: skip
    print()
    print("| events | input MB | output MB | wall s | events/s (wall) | events/s (command) "
          "| peak RSS MiB |")  # fmt: skip
    print("|-------:|---------:|----------:|-------:|----------------:|-------------------:"
          "|-------------:|")  # fmt: skip
    peaks = []
    for n in args.events:
        source = make_input(work / f"in_{n}.root", n)
        out = work / f"out_{n}.{args.out_format}"
        log = work / f"log_{n}.txt"
        command = [
            sys.executable, "-m", "lcag.ntuple.cli", "--ckpt", str(args.ckpt),
            "--input", f"{source}:events", "--carry", "event", "run",
            "--out", str(out), "--step-size", str(args.step_size),
        ]  # fmt: skip
        wall, rss, status = run_command(command, log)
        text = log.read_text()
        if status != 0:
            sys.exit(f"lcag-reconstruct failed ({status}):\n{text}")
        match = re.search(r"in ([\d.]+) s \(([\d,]+) events/s\)", text)
        rate = match.group(2) if match else "?"
        peaks.append(rss)
        print(
            f"| {n:,} | {source.stat().st_size / 1e6:,.1f} | {out.stat().st_size / 1e6:,.1f} "
            f"| {wall:,.1f} | {n / wall:,.0f} | {rate} | {rss:,.0f} |",
            flush=True,
        )
        if not args.keep:
            source.unlink()
            out.unlink()
    if len(peaks) > 1:
        print()
        print(f"peak RSS at {args.events[-1]:,} events / at {args.events[0]:,} events: "
              f"{peaks[-1] / peaks[0]:.2f}x")  # fmt: skip
    if not args.keep:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    else:
        print(f"files in {work}")


if __name__ == "__main__":
    main()
