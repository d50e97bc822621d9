"""The output ntuple, written one chunk at a time under a temporary name, renamed when complete.

``out.root[:tree]`` is written with uproot (``mktree``, then ``extend`` per chunk; the tree is
``lcag`` unless named; a jagged branch ``x`` gets its counter branch ``n_x``), ``out.parquet``
with a pyarrow ``ParquetWriter`` (one row group per chunk, plain Arrow types, not nullable
unless a carried branch has missing values). Until
:meth:`Sink.close` the data lives in ``<out>.partial``; on any error, or Ctrl-C, that file is
removed and an earlier ``out`` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from lcag.console import one_line
from lcag.errors import InvalidInputError
from lcag.files import TMP_SUFFIX
from lcag.ntuple.sources import PARQUET_SUFFIXES, need

__all__ = ["DEFAULT_TREE", "Sink", "counter_name", "parse_output"]

DEFAULT_TREE = "lcag"
_ROOT_SPEC = re.compile(r"^(?P<path>.*\.root):(?P<tree>[^/:][^:]*)$")


def counter_name(branch: str) -> str:
    """The ROOT counter branch of a jagged branch: ``n_<branch>``."""
    return f"n_{branch}"


def parse_output(spec: str | Path) -> tuple[Path, str | None]:
    """``out.root[:tree]`` or ``out.parquet`` as ``(path, tree)`` (``tree`` ``None`` for
    Parquet)."""
    text = str(spec)
    match = _ROOT_SPEC.match(text)
    if match:
        return Path(match["path"]), match["tree"]
    path = Path(text)
    if path.suffix.lower() == ".root":
        return path, DEFAULT_TREE
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return path, None
    raise InvalidInputError(f"--out {text}: expected out.root, out.root:tree or out.parquet")


class Sink:
    """An output file being written: :meth:`write` chunks, then :meth:`close` (or use ``with``).

    Args:
        path: the final file (``.root`` or ``.parquet``).
        tree: the TTree's name (ROOT), ``None`` for Parquet.
    """

    def __init__(self, path: str | Path, tree: str | None) -> None:
        self.path = Path(path)
        self.tree_name = tree
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.entries = 0
        self._file: Any = None
        self._tree: Any = None
        self._schema: Any = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()  # left by a killed run

    def write(self, columns: dict[str, Any], where: str = "", start: int = 0) -> None:
        """Append one chunk: ``{branch: numpy or awkward array}``, all of one length.

        ``where`` and ``start`` (the input and its first entry) name the entry in errors.
        """
        if self.tree_name is not None:
            self._write_root(columns, where, start)
        else:
            self._write_parquet(columns)
        self.entries += len(next(iter(columns.values())))

    def close(self) -> Path:
        """Finish the file and rename it into place; returns the path."""
        self._close_handles()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        with contextlib.suppress(Exception):
            self._close_handles()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    # ------------------------------------------------------------------------------ ROOT
    def _write_root(self, columns: dict[str, Any], where: str, start: int) -> None:
        uproot = need("uproot")
        ak = need("awkward")
        data = {name: _for_root(ak, a, f"{where}: branch '{name}'", start)
                for name, a in columns.items()}  # fmt: skip
        try:
            if self._tree is None:
                self._file = uproot.recreate(self.tmp)
                types = {
                    name: a.dtype if isinstance(a, np.ndarray) else a.type.content
                    for name, a in data.items()
                }
                self._tree = self._file.mktree(self.tree_name, types, counter_name=counter_name)
            self._tree.extend(data)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{self.path}: cannot write the branches to ROOT ({one_line(exc)})"
            ) from None

    # --------------------------------------------------------------------------- Parquet
    def _write_parquet(self, columns: dict[str, Any]) -> None:
        pa = need("pyarrow")
        pq = need("pyarrow.parquet")
        ak = need("awkward")
        arrays, fields = [], []
        for name, a in columns.items():
            if isinstance(a, np.ndarray):
                arrays.append(pa.array(a))
                nullable = False
            else:
                arrays.append(ak.to_arrow(a, extensionarray=False))
                nullable = isinstance(a.type.content, ak.types.OptionType)
            fields.append(pa.field(name, arrays[-1].type, nullable=nullable))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        if self._file is None:
            self._schema = table.schema
            self._file = pq.ParquetWriter(self.tmp, self._schema)
        try:
            table = table.cast(self._schema)
        except (pa.ArrowException, ValueError) as exc:
            raise InvalidInputError(
                f"{self.path}: a chunk's branch types differ from the first's ({one_line(exc)})"
            ) from None
        self._file.write_table(table)

    def _close_handles(self) -> None:
        if self._file is None:  # nothing written: an empty file of the right kind
            if self.tree_name is not None:
                self._file = need("uproot").recreate(self.tmp)
            else:
                pa, pq = need("pyarrow"), need("pyarrow.parquet")
                pq.write_table(pa.table({}), self.tmp)
        if self._file is not None and hasattr(self._file, "close"):
            self._file.close()
        self._file = None
        self._tree = None


def _for_root(ak: Any, array: Any, where: str, start: int) -> Any:
    """A carried branch as uproot writes it: numpy for flat numbers, awkward without option
    types for jagged ones."""
    if isinstance(array, np.ndarray):
        return array
    if "?" in str(array.type):  # from Parquet, say: options ROOT cannot store
        null = np.asarray(ak.is_none(array, axis=0))
        if array.ndim == 2:
            inner = ak.fill_none(ak.any(ak.is_none(array, axis=1), axis=1), False)
            null = null | np.asarray(inner, dtype=bool)
        if null.any():
            entry = int(np.flatnonzero(null)[0])
            raise InvalidInputError(
                f"{where}, entry {start + entry}: a missing (null) value, which ROOT cannot store"
            )
        array = ak.fill_none(array, 0, axis=None)
    if array.ndim == 1:
        try:
            return ak.to_numpy(array)
        except (ValueError, TypeError):
            return array
    return array
