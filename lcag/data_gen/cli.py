"""``lcag-generate``: make a dataset from a config, or convert the paper's published files.

    lcag-generate --config configs/data/tiny.yaml --out data/tiny [--workers N] [--overwrite]
    lcag-generate --config configs/data/paper.yaml --out data/paper --part 3/8   # one of 8 parts
    lcag-generate --finalize data/paper         # check every shard, write the manifest
    lcag-generate --from-paper-npy DIR --out data/paper-published
    lcag-generate --from-hepmc FILE [FILE ...] --mother 511,-511 --out data/b0-hepmc

Rerunning an interrupted command finishes it: completed shards are verified and kept. Without
``--part``, a Slurm array task or an MPI rank writes its own part (:mod:`lcag.data_gen.parts`).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from lcag.console import EXIT_INTERRUPTED, run_console
from lcag.errors import ConfigError

if TYPE_CHECKING:
    from lcag.data_gen.config import GenerationConfig
    from lcag.data_gen.parts import Part

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcag-generate",
        description="Generate an lcag decay-tree dataset (sharded HDF5 + manifest.json).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", type=Path, help="a generation config, e.g. configs/data/tiny.yaml"
    )
    source.add_argument(
        "--finalize",
        type=Path,
        metavar="DIR",
        help="write the manifest of a generation done in parts, after checking every shard",
    )
    source.add_argument(
        "--from-paper-npy",
        type=Path,
        metavar="DIR",
        help="convert the paper's published known|unknown/leaves_<split>.<i>.npy layout instead",
    )
    source.add_argument(
        "--from-hepmc",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="convert the decays of --mother in HepMC3 files (.gz, .bz2, .xz too) instead",
    )
    parser.add_argument("--out", type=Path, help="dataset directory")
    parser.add_argument(
        "--part",
        metavar="i/N",
        help="write only part i (from 0) of N of the shards: shard k when k %% N == i; default: "
        "the Slurm array task or MPI rank, else the whole dataset",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (the output does not depend on it)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset of another config in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from lcag.data_gen.hepmc import add_cli_options

    add_cli_options(parser.add_argument_group("--from-hepmc options"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_console("lcag-generate", lambda: _generate(args))


def _generate(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.finalize is not None:
        return _finalize(args)
    if args.out is None:
        raise ConfigError("--out DIR is required: the dataset directory to write")
    if args.part is not None and args.config is None:
        raise ConfigError(
            "--part splits a --config generation; --from-paper-npy and --from-hepmc "
            "convert in one process"
        )
    try:
        from lcag.data_gen.hepmc import convert_hepmc, options_from_cli

        hepmc_options = options_from_cli(args)  # None without --from-hepmc
        if hepmc_options is not None:
            manifest = convert_hepmc(
                args.from_hepmc,
                args.out,
                hepmc_options,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        elif args.from_paper_npy is not None:
            from lcag.data_gen.paper_npy import convert_paper_npy

            manifest = convert_paper_npy(args.from_paper_npy, args.out, overwrite=args.overwrite)
        else:
            from lcag.data_gen.config import load_config
            from lcag.data_gen.parts import resolve_part

            part = resolve_part(args.part)
            if not part.whole and args.overwrite:
                raise ConfigError(
                    f"--overwrite with part {part} (from {part.source}): parts would delete "
                    "each other's shards; empty --out once before starting the parts"
                )
            cfg = load_config(args.config)
            if not part.whole:
                return _generate_part(cfg, args, part)
            from lcag.data_gen.writer import generate_dataset

            manifest = generate_dataset(
                cfg,
                args.out,
                workers=args.workers,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except BrokenProcessPool:
        print(
            "lcag-generate: a worker process died (killed, or out of memory); finished shards "
            "are kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("lcag-generate: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_summary(manifest, args.out)
    return 0


def _generate_part(cfg: GenerationConfig, args: argparse.Namespace, part: Part) -> int:
    from lcag.data_gen.writer import generate_part

    outcome = generate_part(
        cfg, args.out, part, workers=args.workers, progress=not args.no_progress
    )
    done = (
        f"part {part} (from {part.source}): {outcome.shards} shards, "
        f"{outcome.events:,} events complete"
    )
    if outcome.stale_markers:
        print(
            f"{done}; every part has a done-marker but the shards differ from them: run "
            f"lcag-generate --finalize {args.out} to check every shard"
        )
    elif outcome.parts_done < part.count:
        print(
            f"{done}; {outcome.parts_done} of {part.count} parts complete: the last part to "
            f"finish writes the manifest (or lcag-generate --finalize {args.out})"
        )
    else:
        who = "this part wrote" if outcome.wrote_manifest else "another part wrote"
        print(f"{done}; every part complete: {who} {args.out / 'manifest.json'}")
        if outcome.manifest is not None:
            _print_summary(outcome.manifest, args.out)
    return 0


def _finalize(args: argparse.Namespace) -> int:
    extra = [
        name
        for name, given in (
            ("--out", args.out is not None),
            ("--part", args.part is not None),
            ("--overwrite", args.overwrite),
        )
        if given
    ]
    if extra:
        raise ConfigError(
            f"--finalize DIR takes no {' or '.join(extra)}: DIR is the dataset directory"
        )
    from lcag.data_gen.writer import finalize_dataset

    manifest = finalize_dataset(args.finalize)
    _print_summary(manifest, args.finalize)
    return 0


def _print_summary(manifest: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out}  ({manifest['units']}, features {manifest['dtype']})")
    for column in ("split", "events", "shards", "leaves"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, info in manifest["splits"].items():
        sizes = sorted({int(n) for shard in info["shards"] for n in shard["leaf_counts"]})
        leaves = f"{sizes[0]}..{sizes[-1]}" if sizes else "-"
        table.add_row(split, f"{info['events']:,}", str(len(info["shards"])), leaves)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
