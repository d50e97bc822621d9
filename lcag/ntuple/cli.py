"""``lcag-reconstruct``: a trained model over ntuples, decay trees out.

    lcag-reconstruct --ckpt runs/tiny_transformer/checkpoints/best.ckpt \\
        --input data.root:events more.root:events --carry run event --out reco.root

Per entry (event) the output holds, in the input's order, input files one after another:

- ``n_leaves`` (int32): the event's number of leaves ``L``;
- ``lcag`` (jagged int32, ``L * L`` values): the decoded LCAG, row-major
  (``lcag.reshape(L, L)``; leaf ``k`` is the event's ``k``-th value of the feature branches);
  for a model trained on LCAS targets, the decoded stages;
- ``parent`` (jagged int32, one per tree node): the decay tree as a parent array, the
  event's leaves first, then inner nodes (by height for LCAG), ``-1`` for the root (as
  ``Reconstruction.tree.parents`` when every leaf is in the tree) and ``-2`` for a leaf the
  model left out of the tree (background, for a model decoding with background);
- ``score`` (float64): the tree's score; ``probability`` (float64): its probability among all
  valid trees (above 10 leaves an upper bound, among the approximate decoder's trees);
- ``known_topology`` (int8): 1 when the tree, its leaves labelled by species, has the shape of
  a training topology, 0 when not (its probability is calibrated for such trees apart), -1
  for a model trained before training topologies were catalogued;
- ``reranked`` (int8): 1 when the checkpoint's decay grammar chose the tree among the model's
  and its own candidates (a tree of no training topology; ``probability`` is then among those
  candidates), else 0;
- ``species`` (jagged int32, one per leaf), only for a model with a particle-type head:
  each leaf's most probable species (``Reconstructor.species_names``);
- the ``--carry`` branches, unchanged.

ROOT output adds uproot's counter branches ``n_lcag`` and ``n_parent``. The input is read in
chunks of ``--step-size`` entries, so memory does not grow with the file; the output is written
to ``<out>.partial`` and renamed when complete. Bad input stops the command with one line
naming the file, branch and entry (exit status 2), and no output file is left.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcag.console import run_console
from lcag.errors import InvalidInputError
from lcag.ntuple.parents import parents_from_lcag
from lcag.ntuple.sinks import Sink, counter_name, parse_output
from lcag.ntuple.sources import DEFAULT_FEATURES, Chunk, iter_chunks, need, open_source

__all__ = [
    "OUTPUT_BRANCHES",
    "Summary",
    "event_parents",
    "main",
    "reconstruct_chunk",
    "reconstruct_files",
]

PROG = "lcag-reconstruct"
OUTPUT_BRANCHES = (
    "n_leaves", "lcag", "parent", "score", "probability", "known_topology", "reranked",
)  # fmt: skip
OPTIONAL_OUTPUTS = ("species",)  # with a particle-type head
JAGGED_OUTPUTS = ("lcag", "parent", "species")
DEFAULT_STEP = 10_000


@dataclass(frozen=True)
class Summary:
    """What a run did: ``entries`` events from ``files`` inputs to ``path`` in ``seconds``
    (reading, reconstructing and writing; the checkpoint's loading and the inputs' checks
    before it aside)."""

    path: Path
    entries: int
    files: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("nan")


def reconstruct_chunk(
    reco: Any, chunk: Chunk, *, batch_size: int = 1024, method: str = "auto"
) -> dict[str, Any]:
    """One chunk's output branches (:data:`OUTPUT_BRANCHES`), by ``reco.reconstruct``.

    Returns:
        ``{"n_leaves", "score", "probability", "known_topology", "reranked"}`` as numpy
        arrays,
        ``{"lcag", "parent"}`` (and ``"species"`` with a type head) as jagged awkward arrays,
        one entry per event of the chunk.
    """
    ak = need("awkward")
    try:
        results = reco.reconstruct(chunk.x, chunk.mask, batch_size=batch_size, method=method)
    except InvalidInputError as exc:  # the checks in sources.py should have caught it
        stop = chunk.start + len(chunk)
        raise InvalidInputError(
            f"{chunk.source.label}: entries {chunk.start}-{stop - 1}: {exc}"
        ) from None
    n = chunk.counts.astype(np.int32)
    score = np.fromiter((r.score for r in results), dtype=np.float64, count=len(results))
    probability = np.fromiter(
        (r.probability for r in results), dtype=np.float64, count=len(results)
    )
    known = np.fromiter(
        (-1 if r.known_topology is None else int(r.known_topology) for r in results),
        dtype=np.int8,
        count=len(results),
    )
    reranked = np.fromiter((r.reranked for r in results), dtype=np.int8, count=len(results))
    flat = [r.lcag.ravel() for r in results]
    lcag = np.concatenate(flat).astype(np.int32) if flat else np.zeros(0, dtype=np.int32)
    if reco.target == "lcag" and not reco.background:
        parent = _lcag_parents(results, n)
    else:  # stage trees, or trees leaving leaves out: one tree per event
        parent = ak.Array([event_parents(r).tolist() for r in results])
        parent = ak.values_astype(parent, np.int32)
    columns = {
        "n_leaves": n,
        "lcag": ak.unflatten(lcag, n.astype(np.int64) ** 2),
        "parent": parent,
        "score": score,
        "probability": probability,
        "known_topology": known,
        "reranked": reranked,
    }
    if reco.type_head is not None:
        species = [r.species.astype(np.int32) for r in results]
        flat_species = np.concatenate(species) if species else np.zeros(0, dtype=np.int32)
        columns["species"] = ak.unflatten(flat_species, n.astype(np.int64))
    return columns


def event_parents(result: Any) -> np.ndarray:
    """One reconstruction's tree as an event-level parent array ``(L + inner nodes,)`` int32:
    the event's ``L`` leaves first, then the tree's inner nodes in its order; ``-1`` for the
    root, ``-2`` for a leaf outside the tree."""
    n_leaves = len(result.lcag)
    inside, tree = result.in_tree, result.tree
    k = tree.n_leaves
    out = np.full(n_leaves + tree.n_nodes - k, -2, dtype=np.int32)
    parents = np.asarray(tree.parents)
    shifted = np.where(parents < 0, -1, parents - k + n_leaves)
    out[inside] = shifted[:k]
    out[n_leaves:] = shifted[k:]
    return out


def _lcag_parents(results: list[Any], n: np.ndarray) -> Any:
    """The parent arrays of LCAG trees over every leaf, jagged int32 (awkward), vectorised by
    leaf count."""
    n_nodes = np.zeros(len(n), dtype=np.int64)
    groups = []
    for size in np.unique(n).tolist():
        events = np.flatnonzero(n == size)
        stacked = np.stack([results[i].lcag for i in events]).reshape(len(events), size, size)
        parents, nodes = parents_from_lcag(stacked)
        n_nodes[events] = nodes
        groups.append((events, parents, nodes))
    offsets = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(n_nodes, out=offsets[1:])
    parent = np.empty(offsets[-1], dtype=np.int32)
    for events, parents, nodes in groups:
        width = np.arange(parents.shape[1])
        real = width < nodes[:, None]
        parent[(offsets[events][:, None] + width)[real]] = parents[real]
    return need("awkward").unflatten(parent, n_nodes)


def reconstruct_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    carry: Sequence[str] = (),
    step_size: int = DEFAULT_STEP,
    batch_size: int = 1024,
    device: str = "cpu",
    method: str = "auto",
    progress: bool = False,
) -> Summary:
    """Reconstruct every entry of ``inputs`` into one output file (see the module docstring).

    Every input is opened and checked for its tree and branches before anything is written.

    Raises:
        InvalidInputError: bad arguments or input, naming the file, branch and entry; the
            output file is then not written (an earlier one is left as it was).
        CheckpointError: the checkpoint is missing or unreadable.
    """
    from lcag.inference import Reconstructor

    features, carry = list(features), list(dict.fromkeys(carry))
    path, tree = parse_output(out)
    if not inputs:
        raise InvalidInputError("--input: at least one input file is needed")
    if not features:
        raise InvalidInputError("--features: at least one leaf-feature branch is needed")
    if step_size < 1:
        raise InvalidInputError(f"--step-size: {step_size}, must be at least 1")
    reserved = set(OUTPUT_BRANCHES) | set(OPTIONAL_OUTPUTS)
    if tree is not None:
        reserved |= {counter_name(name) for name in JAGGED_OUTPUTS}
    clash = [name for name in carry if name in reserved]
    if clash:
        raise InvalidInputError(
            f"--carry {clash[0]}: the output has a branch of that name "
            f"({', '.join(sorted(reserved))})"
        )
    sources = [open_source(spec, [*features, *carry]) for spec in inputs]
    for source in sources:
        if source.path.resolve() == path.resolve():
            raise InvalidInputError(f"--out {path}: is also an input")
    reco = Reconstructor.from_checkpoint(checkpoint, device=device)
    if len(features) != reco.n_features:
        raise InvalidInputError(
            f"--features {' '.join(features)}: {len(features)} branches, but {checkpoint} "
            f"takes {reco.n_features} features per leaf (px, py, pz, E first, then the extra "
            "ones it was trained with)"
        )
    total = sum(source.n_entries for source in sources)
    began = time.perf_counter()
    with _Progress(progress, total) as advance, Sink(path, tree) as sink:
        for source in sources:
            for chunk in iter_chunks(source, features, carry, step_size, reco.max_leaves):
                columns = reconstruct_chunk(reco, chunk, batch_size=batch_size, method=method)
                sink.write({**columns, **chunk.carried}, source.label, chunk.start)
                advance(len(chunk))
    return Summary(path, sink.entries, len(sources), time.perf_counter() - began)


class _Progress:
    """A rich progress bar on stderr with events/s, or nothing; the context gives ``advance``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("reconstructing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("events", total=total, rate="")
        self.began = time.perf_counter()
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            rate = self.done / max(time.perf_counter() - self.began, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:,.0f} events/s")

    def __enter__(self) -> Any:
        if self.bar is not None:
            self.bar.start()
        return self.advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reconstruct the decay tree of every event of ROOT or Parquet ntuples.",
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint from lcag fit")
    parser.add_argument(
        "--input", "-i", nargs="+", action="extend", required=True, metavar="FILE",
        help="file.root:tree (or file.root with one tree) or file.parquet; several are "
        "written one after another",
    )  # fmt: skip
    parser.add_argument(
        "--features", nargs="+", default=list(DEFAULT_FEATURES), metavar="BRANCH",
        help="the jagged leaf-feature branches in the model's order (default: px py pz E; "
        "then any extra features the model was trained with)",
    )  # fmt: skip
    parser.add_argument(
        "--carry", nargs="+", action="extend", default=[], metavar="BRANCH",
        help="branches copied to the output unchanged (event numbers, ...)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="out.root[:tree] (tree lcag) or out.parquet")
    parser.add_argument("--step-size", type=int, default=DEFAULT_STEP, help="entries per chunk")
    parser.add_argument("--batch-size", type=int, default=1024, help="events per model call")
    parser.add_argument("--device", default="cpu", help="torch device of the model")
    parser.add_argument("--method", default="auto", choices=("auto", "exact", "approx"))
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)

    def run() -> None:
        summary = reconstruct_files(
            args.ckpt, args.input, args.out,
            features=args.features, carry=args.carry, step_size=args.step_size,
            batch_size=args.batch_size, device=args.device, method=args.method,
            progress=not args.quiet and sys.stderr.isatty(),
        )  # fmt: skip
        if not args.quiet:
            print(
                f"{PROG}: {summary.entries:,} events from {summary.files} file(s) in "
                f"{summary.seconds:.1f} s ({summary.rate:,.0f} events/s) -> {summary.path}",
                file=sys.stderr,
            )

    return run_console(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
