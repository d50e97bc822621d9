"""``lcag-generate``: make a dataset from a config, or convert the paper's published files.

    lcag-generate --config configs/data/tiny.yaml --out data/tiny [--workers N] [--overwrite]
    lcag-generate --from-paper-npy DIR --out data/paper-published
    lcag-generate --from-hepmc FILE [FILE ...] --mother 511,-511 --out data/b0-hepmc

Rerunning an interrupted command finishes it: completed shards are verified and kept.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from lcag.console import EXIT_INTERRUPTED, run_console
from lcag.errors import ConfigError

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
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
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
            from lcag.data_gen.writer import generate_dataset

            cfg = load_config(args.config)
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
