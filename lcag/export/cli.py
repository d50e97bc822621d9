"""``lcag export`` and ``lcag info``, dispatched by :func:`lcag.cli.main` before LightningCLI.

    lcag export --ckpt best.ckpt --format onnx --out model.onnx
    lcag info best.ckpt          # or model.onnx, model.pt; --json for the raw facts

Errors (a missing or corrupt checkpoint, an unreadable export) end with one line on stderr and
exit status 2, as every lcag command does (:func:`lcag.console.run_console`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lcag.console import run_console

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS = ("export", "info")


def _export(argv: list[str]) -> int:
    from lcag.export.onnx import FORMATS, OPSET

    parser = argparse.ArgumentParser(
        prog="lcag export",
        description="Export a checkpoint as ONNX or TorchScript: raw leaf features x "
        "(batch, leaves, F) float32 and mask (batch, leaves) bool in, per-pair class "
        "probabilities (batch, leaves, leaves, C) out; the checkpoint's facts in its metadata.",
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint from lcag fit")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the file format")
    parser.add_argument("--out", type=Path, required=True, help="the file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument(
        "--no-check", action="store_true",
        help="skip running the export on fresh shapes against PyTorch",
    )  # fmt: skip
    args = parser.parse_args(argv)

    def run() -> None:
        from lcag.export.onnx import export_checkpoint

        facts = export_checkpoint(args.ckpt, args.format, args.out, args.opset, not args.no_check)
        export = facts["export"]
        size = args.out.stat().st_size / 1024
        checked = "" if args.no_check else "; checked against PyTorch on fresh shapes"
        print(f"wrote {args.out} ({args.format}, {size:,.0f} KiB): {export['inputs']} -> "
              f"{export['outputs']}{checked}")  # fmt: skip

    return run_console("lcag", run)


def _info(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lcag info",
        description="What a checkpoint (or an ONNX/TorchScript file from lcag export) is: the "
        "model, its training data, the validation figures, the lcag version.",
    )
    parser.add_argument("path", type=Path, help="a checkpoint, .onnx or TorchScript file")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)

    def run() -> None:
        from lcag.export.info import format_facts, read_facts

        facts = read_facts(args.path)
        print(json.dumps(facts, indent=1, sort_keys=True) if args.json else format_facts(facts))

    return run_console("lcag", run)


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``export`` or ``info``; returns the exit status."""
    command, rest = argv[0], list(argv[1:])
    return _export(rest) if command == "export" else _info(rest)
