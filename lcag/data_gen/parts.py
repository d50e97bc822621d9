"""One dataset written by many processes: which shards a part writes, and who writes the manifest.

A generation is cut into ``N`` parts; part ``i`` (0-based) writes shard ``k`` of the dataset's
shard list (:func:`~lcag.data_gen.writer.plan_shards`: train, val, test, test_unknown, each in
shard order) when ``k % N == i``. Shards draw their random numbers from their own seeds, so
the bytes do not depend on which process writes them: parts on many nodes give the same
shards as one process.

```
<dir>/parts/part-<i>-of-<N>.json   a part's done-marker: its shards and their checksums
```
A part that has finished its shards writes its marker (atomically), then looks for all ``N``
markers. The one that sees them all writes the manifest with an exclusive create (a hard
link of a complete temporary file, which only one process can win, also on NFS); a part that
loses, or that finishes before the others, writes nothing more. ``lcag-generate --finalize
DIR`` writes the manifest from the shards alone, after checking every checksum.

Where a part comes from (:func:`resolve_part`): ``--part i/N``; else an MPI launcher's
rank and size (``mpi4py``, imported only when ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE`` or
``PMIX_RANK`` is set); else a Slurm job array (``SLURM_ARRAY_TASK_ID`` counted from
``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, ``SLURM_ARRAY_TASK_COUNT``
parts); else the whole dataset.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lcag.errors import ConfigError, MissingDependencyError
from lcag.files import TMP_SUFFIX

__all__ = [
    "PARTS",
    "Part",
    "marker_path",
    "parse_part",
    "part_from_environment",
    "publish_exclusive",
    "read_markers",
    "resolve_part",
    "shards_of_part",
    "write_marker",
    "write_unique",
]

PARTS = "parts"  # the folder of done-markers
MPI_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
ARRAY_ID, ARRAY_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
ARRAY_MIN, ARRAY_MAX, ARRAY_STEP = (
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
)
T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``; ``source`` says where it came from."""

    index: int
    count: int
    source: str = "--part"

    @property
    def whole(self) -> bool:
        return self.count == 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Part(0, 1, "one process")


def parse_part(text: str, where: str = "--part") -> Part:
    """``"i/N"`` -> ``Part(i, N)``, with ``0 <= i < N``.

    Raises:
        ConfigError: not of the form ``i/N``, ``N < 1`` or ``i`` outside ``0..N-1``.
    """
    index, slash, count = str(text).strip().partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = None
    if not slash or i is None or n is None:
        raise ConfigError(
            f"{where} {text!r}: expected i/N (part i of N, i counted from 0), e.g. 0/4"
        )
    if n < 1:
        raise ConfigError(f"{where} {text!r}: the number of parts N must be at least 1")
    if not 0 <= i < n:
        raise ConfigError(
            f"{where} {text!r}: part i must be 0..{n - 1} (counted from 0) for N = {n}"
        )
    return Part(i, n, where)


def part_from_environment(environ: Mapping[str, str] | None = None) -> Part | None:
    """The part an MPI launcher or a Slurm job array gives this process, or ``None``.

    Raises:
        ConfigError: both give several parts, or the array's indices are not a range
            ``MIN-MAX[:STEP]``.
        MissingDependencyError: an MPI launcher's variables are set but mpi4py is missing.
    """
    env = os.environ if environ is None else environ
    mpi = _mpi_part() if any(name in env for name in MPI_VARIABLES) else None
    array = _array_part(env) if ARRAY_ID in env and ARRAY_COUNT in env else None
    if mpi is not None and mpi.count > 1 and array is not None and array.count > 1:
        raise ConfigError(
            f"both an MPI launcher ({mpi.count} ranks) and a Slurm array ({array.count} tasks) "
            "would split this generation; pass --part i/N to say which part this process writes"
        )
    for part in (mpi, array):
        if part is not None and part.count > 1:
            return part
    return None


def resolve_part(option: str | None, environ: Mapping[str, str] | None = None) -> Part:
    """``--part`` if given, else the environment's part (:func:`part_from_environment`), else
    the whole dataset."""
    if option is not None:
        return parse_part(option)
    return part_from_environment(environ) or WHOLE


def _mpi_part() -> Part:
    try:
        from mpi4py import MPI
    except ImportError:
        raise MissingDependencyError(
            "lcag-generate runs under an MPI launcher (one of "
            f"{', '.join(MPI_VARIABLES)} is set) and needs mpi4py to learn its rank: "
            "pip install 'lcag[hpo]', or pass --part i/N"
        ) from None
    comm = MPI.COMM_WORLD
    return Part(comm.Get_rank(), comm.Get_size(), "MPI rank")


def _array_part(env: Mapping[str, str]) -> Part:
    names = (ARRAY_ID, ARRAY_COUNT, ARRAY_MIN, ARRAY_MAX, ARRAY_STEP)
    values: dict[str, int] = {}
    for name in names:
        if name not in env:
            continue
        try:
            values[name] = int(env[name])
        except ValueError:
            raise ConfigError(f"{name}={env[name]!r}: not an integer") from None
    task, count = values[ARRAY_ID], values[ARRAY_COUNT]
    low, step = values.get(ARRAY_MIN, 0), values.get(ARRAY_STEP, 1)
    high = values.get(ARRAY_MAX, low + (count - 1) * step)
    offset = task - low
    if count < 1 or step < 1 or high != low + (count - 1) * step or offset % step:
        raise ConfigError(
            f"Slurm array task {task} of {count} (indices {low}-{high}:{step}): the array's "
            "indices must be one range MIN-MAX[:STEP] to number the parts; pass --part i/N"
        )
    return Part(offset // step, count, ARRAY_ID)


def shards_of_part(shards: Sequence[T], part: Part) -> list[T]:
    """The shards part ``i`` of ``N`` writes: shard ``k`` of the list when ``k % N == i``."""
    return [s for k, s in enumerate(shards) if k % part.count == part.index]


# --------------------------------------------------------------------------- markers
def marker_path(out: Path, part: Part) -> Path:
    return Path(out) / PARTS / f"part-{part.index}-of-{part.count}.json"


def write_marker(out: Path, part: Part, shards: Sequence[dict[str, Any]]) -> Path:
    """Record that ``part`` is complete: ``shards`` lists ``{"file", "sha256"}`` of its shards."""
    payload = {"part": part.index, "of": part.count, "shards": list(shards)}
    return write_unique(marker_path(out, part), json.dumps(payload, indent=1) + "\n")


def read_markers(out: Path, count: int) -> dict[int, dict[str, Any]]:
    """The done-markers of a generation in ``count`` parts: part index -> marker contents.

    A marker that cannot be read (a foreign or damaged file) counts as absent.
    """
    found = {}
    for index in range(count):
        path = marker_path(out, Part(index, count))
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict) and marker.get("of") == count:
            found[index] = marker
    return found


def marker_counts(out: Path) -> list[int]:
    """The part counts ``N`` that done-markers in ``out`` were written for, sorted."""
    counts = set()
    for path in (Path(out) / PARTS).glob("part-*-of-*.json"):
        try:
            counts.add(int(path.stem.rpartition("-of-")[2]))
        except ValueError:
            continue
    return sorted(counts)


# ------------------------------------------------------------------------ writing safely
def _unique_tmp(path: Path) -> Path:
    """A temporary name next to ``path`` that no other writer (thread, process, or process on
    another node) uses."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return path.with_name(f"{path.name}{TMP_SUFFIX}-{host}-{os.getpid()}-{secrets.token_hex(4)}")


def _write_tmp(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_tmp(path)
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def write_unique(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically through a temporary file of this process's own, so
    that processes writing the same path at once cannot mix their bytes."""
    path = Path(path)
    os.replace(_write_tmp(path, text), path)
    return path


def publish_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; ``True`` when this call created it.

    The text goes to a temporary file first, which is then hard-linked to ``path``: the link
    fails when ``path`` exists, so of processes racing here exactly one wins, and a reader
    never sees half a file. On NFS a link can report failure after it succeeded (a
    retransmitted request); the temporary file's link count tells the truth, as ``open(2)``
    advises. Where hard links are not supported, an ``O_EXCL`` claim file decides instead.
    """
    path = Path(path)
    tmp = _write_tmp(path, text)
    try:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return os.stat(tmp).st_nlink == 2
        except OSError:  # no hard links on this file system
            claim = path.with_name(path.name + ".claim")
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                return False
            os.replace(tmp, path)
            return True
    finally:
        tmp.unlink(missing_ok=True)
