"""Small generation configs for the simulator tests, and a generation that stops half-way."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "data" / "tiny.yaml"


def tiny_dict(**overrides: dict) -> dict:
    """configs/data/tiny.yaml, made smaller, with nested overrides merged in."""
    data = yaml.safe_load(TINY.read_text())
    data["topologies"] = {"known": 4, "unknown": 2}
    data["events"] = {"train": 120, "val": 20, "test": 20, "test_unknown": 30}
    data["output"]["events_per_shard"] = 200
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return copy.deepcopy(data)


# ------------------------------------------------------------- a generation stuck half-way
PUBLISHED_FIRST = ("train", 0)
"""The one shard :func:`write_shard_then_hold` lets a worker publish."""

HELD_GENERATION = (
    "import runpy, sys; sys.path.insert(0, {here!r}); import gen_configs; "
    "from lcag.data_gen import writer; writer.write_shard = gen_configs.write_shard_then_hold; "
    "runpy.run_module('lcag.data_gen.cli', run_name='__main__', alter_sys=True)"
)
"""``python -c`` code running ``python -m lcag.data_gen.cli`` (arguments follow) whose worker
processes run :func:`write_shard_then_hold` instead of ``write_shard``. Workers are spawned
with this process's ``sys.path``, so they import it from this folder."""


def held_generation_command(python: str) -> list[str]:
    return [python, "-c", HELD_GENERATION.format(here=str(Path(__file__).resolve().parent))]


class _RenameNever:
    """``os`` as the writer module sees it, except that the final rename of a shard waits
    until this worker is killed (or its parent is gone)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def replace(src: Any, dst: Any) -> None:
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(0.05)
        os._exit(1)  # orphaned: the generation it worked for is gone


def write_shard_then_hold(cfg: Any, table: Any, ceilings: Any, out: Path, plan: Any) -> None:
    """``write_shard`` in a worker, except that only :data:`PUBLISHED_FIRST` is published: any
    other shard is written in full to its temporary file, its checksum file is written, and the
    worker then waits at the rename that would publish it. So a generation run with it always
    ends up in the same state, however fast the machine: one shard done, each worker stuck in
    the last step of another, the generation unfinished."""
    from lcag.data_gen import writer

    if (plan.split, plan.index) != PUBLISHED_FIRST:
        writer.os = _RenameNever()
    writer.write_shard(cfg, table, ceilings, out, plan)
