"""Leaf 4-momenta for decay topologies, with phasespace doing every n-body decay.

Building a new ``phasespace.GenParticle`` tree costs about a second of TensorFlow tracing, so a
loop that builds one tree per topology spends nearly all its time tracing. Here every decay is
done node by node instead:

1. Masses: each node's mass per event, top-down. Fixed masses are nominal; a particle with a
   width gets a relativistic Breit-Wigner mass (constant width, sampled in numpy as a Cauchy
   distribution in ``m^2``), truncated to what its parent leaves free and to its children's
   threshold.
2. Rest-frame decays: n-body phase space is scale-invariant, so a unit mass decays into
   ``m_i / M`` and momenta are scaled by ``M``. :class:`NBodyEngine` keeps one generic
   ``GenParticle`` per number of children, whose children's masses are read from a
   ``tf.Variable``; it is traced once and reused for every node of every topology, in fixed
   chunks of rows gathered across all topologies of a shard.
3. Unweighting (``unweight=True``, the default): phasespace returns each decay's weight; a
   decay is kept when a uniform number times the node's maximum weight falls below it, else
   drawn again, so every node's decay is uniform in its n-body phase space. The maximum is
   estimated per topology node from 2,048 trial decays (+10 %), because phasespace's analytic
   bound is loose by up to 180x for 6 bodies. The paper's published data kept every decay
   and ignored the weights (``unweight: false`` reproduces that).
4. Boosts: children go from their parent's rest frame to the mother's frame in numpy, top-down.

Units follow the masses (arbitrary for random topologies, GeV for decay tables). Momenta are
``(px, py, pz, E)`` in the mother's rest frame unless the mother is given a momentum.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lcag.data_gen.config import Kinematics
from lcag.data_gen.topology import Topology

__all__ = [
    "EventBlock",
    "NBodyEngine",
    "add_background",
    "boost",
    "children_counts",
    "generate_events",
    "max_weights",
    "sample_masses",
    "smear",
]


_MAX_ROWS_PER_PASS = 1 << 20  # bounds memory of one accept-reject pass
_WEIGHT_KEY = 1  # spawn_key prefix of the maximum-weight estimates' seeds
_SCAN_TRIES = 2048  # trial decays per distinct decay for its maximum-weight estimate
_MARGIN = 1.1  # safety factor on the estimated maximum weight


class NBodyEngine:
    """Rest-frame n-body decays of a unit mass through phasespace.

    Args:
        chunk_size: rows per phasespace call; every call has this shape, so each number of
            children is traced exactly once.
    """

    def __init__(self, chunk_size: int = 16384) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        # One thread per process: Eigen splits a tensor across threads into blocks whose edges
        # decide which elements take the vectorised and which the scalar code path, which
        # changes the last bit of sin/cos. One thread makes results reproducible bit for bit
        # (parallelism comes from worker processes instead).
        # Grappler, TensorFlow's graph optimiser, works under a deadline, so how far it
        # rewrites a graph depends on machine load, and the rewritten graphs differ in the
        # last bit (measured: two variants of the same shard). Without it, and with one thread
        # per process, every shard is reproducible bit for bit; parallelism comes from worker
        # processes instead.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already initialised by the caller: keep its setting
            pass
        import phasespace

        self._tf = tf
        self._phasespace = phasespace
        self.chunk_size = chunk_size
        self._generators: dict[int, tuple] = {}
        self._tf_rng = tf.random.Generator.from_seed(0)

    def _generator(self, n_children: int) -> tuple:
        if n_children not in self._generators:
            tf = self._tf
            ratios = tf.Variable(
                np.full((self.chunk_size, n_children), 1.0 / (n_children + 1)),
                dtype=tf.float64,
                trainable=False,
            )

            def child_mass(index: int):
                return lambda min_mass, max_mass, n_events: ratios[:, index]

            children = [
                self._phasespace.GenParticle(f"c{i}", child_mass(i)) for i in range(n_children)
            ]
            top = self._phasespace.GenParticle("top", 1.0).set_children(*children)
            self._generators[n_children] = (ratios, top)
        return self._generators[n_children]

    def prepare(self, children_counts: Iterable[int]) -> None:
        """Trace phasespace for every number of children in ``children_counts`` now (about a
        second each), so that a worker is ready before its first shard; results do not change,
        as every call reseeds phasespace."""
        rng = np.random.default_rng(0)
        for n in sorted(set(children_counts) - set(self._generators)):
            self.raw(np.full((1, n), 0.5 / n), rng)

    def decay(
        self, ratios: np.ndarray, rng: np.random.Generator, ceiling: np.ndarray | None = None
    ) -> np.ndarray:
        """Decay unit masses into children of masses ``ratios``.

        Args:
            ratios: ``(R, n)`` children's masses over the parent's, each row summing below 1.
            rng: numpy generator; seeds phasespace and draws the accept-reject numbers.
            ceiling: ``(R,)`` maximum weight per row for accept-reject (see
                :func:`max_weights`); ``None`` keeps every decay as it comes, unweighted.

        Returns:
            ``(R, n, 4)`` float64 children 4-momenta ``(px, py, pz, E)`` in the rest frame.
        """
        ratios = np.asarray(ratios, dtype=np.float64)
        R, n = ratios.shape
        if ceiling is None or n == 2:  # two-body decays all weigh the same
            return self.raw(ratios, rng)[0]
        out = np.empty((R, n, 4))
        pending = np.arange(R)
        while pending.size:
            # One try per pending row, and the rest of the last phasespace chunk filled with
            # more tries of the first rows: every try is used or spent on a row still pending,
            # so about R / acceptance decays are made. A row takes its first accepted try.
            total = min(-(-pending.size // self.chunk_size) * self.chunk_size, _MAX_ROWS_PER_PASS)
            total = max(total, pending.size)
            copies, extra = divmod(total, pending.size)
            rows = np.concatenate([np.repeat(pending, copies), pending[:extra]])
            momenta, weights = self.raw(ratios[rows], rng)
            accepted = np.flatnonzero(rng.random(rows.size) * ceiling[rows] < weights)
            done, first = np.unique(rows[accepted], return_index=True)
            out[done] = momenta[accepted[first]]
            pending = np.setdiff1d(pending, done, assume_unique=True)
        return out

    def raw(self, ratios: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One phasespace pass over ``ratios (R, n)``.

        Returns:
            momenta ``(R, n, 4)`` and weights ``(R,)`` normalised to phasespace's bound.
        """
        R, n = ratios.shape
        variable, top = self._generator(n)
        momenta = np.empty((R, n, 4))
        weights = np.empty(R)
        for start in range(0, R, self.chunk_size):
            rows = ratios[start : start + self.chunk_size]
            size = len(rows)
            padded = np.concatenate([rows, np.repeat(rows[:1], self.chunk_size - size, axis=0)])
            variable.assign(padded)
            self._tf_rng.reset_from_seed(int(rng.integers(2**62)))
            w, parts = top.generate(self.chunk_size, seed=self._tf_rng)
            momenta[start : start + size] = np.stack(
                [parts[f"c{i}"].numpy()[:size] for i in range(n)], axis=1
            )
            weights[start : start + size] = w.numpy()[:size]
        return momenta, weights


@dataclass
class EventBlock:
    """Generated events of one topology (leaves in the topology's leaf order).

    Attributes:
        momenta: ``(E, n_nodes, 4)`` every node's 4-momentum.
        masses: ``(E, n_nodes)`` every node's mass in that event.
        n_leaves: the topology's leaf count (leaves are the first nodes).
    """

    momenta: np.ndarray
    masses: np.ndarray
    n_leaves: int

    @property
    def leaves(self) -> np.ndarray:
        """``(E, L, 4)`` the leaves' 4-momenta."""
        return self.momenta[:, : self.n_leaves]


def generate_events(
    topologies: Sequence[Topology],
    counts: Sequence[int],
    rng: np.random.Generator,
    engine: NBodyEngine,
    kinematics: Kinematics,
    ceilings: Sequence[np.ndarray] | None = None,
) -> list[EventBlock]:
    """Generate ``counts[k]`` events of ``topologies[k]``, all decays batched together.

    Args:
        ceilings: per topology, :func:`max_weights` (needed when ``kinematics.unweight``;
            estimated here with a seed drawn from ``rng`` when not given).

    The result depends only on the inputs and ``rng``'s state.

    Returns:
        One :class:`EventBlock` per topology, before resolution, background and shuffling.
    """
    if kinematics.unweight and ceilings is None:
        ceilings = max_weights(topologies, engine, int(rng.integers(2**63)))
    masses = [sample_masses(t, int(c), rng) for t, c in zip(topologies, counts, strict=True)]
    # Gather every inner node's rest-frame decay, grouped by its number of children.
    requests: dict[int, list[tuple[int, int]]] = {}
    for k, topology in enumerate(topologies):
        for node in topology.tree.inner_nodes:
            requests.setdefault(len(topology.tree.children(node)), []).append((k, node))
    rest: dict[tuple[int, int], np.ndarray] = {}
    for n_children in sorted(requests):
        pieces = requests[n_children]
        ratios = [
            masses[k][:, list(topologies[k].tree.children(node))] / masses[k][:, node, None]
            for k, node in pieces
        ]
        ceiling = None
        if kinematics.unweight:
            ceiling = np.concatenate(
                [
                    np.full(len(r), ceilings[k][node])
                    for (k, node), r in zip(pieces, ratios, strict=True)
                ]
            )
        decayed = engine.decay(np.concatenate(ratios), rng, ceiling)
        start = 0
        for (k, node), part in zip(pieces, ratios, strict=True):
            scale = masses[k][:, node, None, None]
            rest[k, node] = decayed[start : start + len(part)] * scale
            start += len(part)

    mother = np.asarray(kinematics.mother_momentum, dtype=np.float64)
    blocks = []
    for k, topology in enumerate(topologies):
        tree = topology.tree
        E = masses[k].shape[0]
        momenta = np.zeros((E, tree.n_nodes, 4))
        root_mass = masses[k][:, tree.root]
        momenta[:, tree.root, :3] = mother
        momenta[:, tree.root, 3] = np.sqrt(mother @ mother + root_mass**2)
        for node in tree.preorder():
            if tree.is_leaf(node):
                continue
            kids = list(tree.children(node))
            momenta[:, kids] = boost(
                rest[k, node], momenta[:, node, None, :], masses[k][:, node, None]
            )
        blocks.append(EventBlock(momenta=momenta, masses=masses[k], n_leaves=tree.n_leaves))
    return blocks


def children_counts(topologies: Sequence[Topology]) -> set[int]:
    """The numbers of children of the inner nodes of ``topologies``."""
    return {len(t.tree.children(node)) for t in topologies for node in t.tree.inner_nodes}


def max_weights(topologies: Sequence[Topology], engine: NBodyEngine, seed: int) -> list[np.ndarray]:
    """Per topology, ``(n_nodes,)`` the estimated maximum decay weight of each node.

    phasespace normalises weights to an analytic bound that is loose (measured here: the true
    maxima are about 0.45, 0.14, 0.033 and 0.0056 of it for 3, 4, 5 and 6 bodies), so
    accept-reject against the bound would throw away up to 99.9 % of decays. Instead a node's
    maximum is the largest weight of ``_SCAN_TRIES`` trial decays times ``_MARGIN``; a weight
    above it, which is rare, is simply accepted. Two-body decays all weigh the same (1).
    Nodes with fixed masses share one estimate per distinct decay (mass ratios); nodes with
    Breit-Wigner masses get their own. The result depends only on ``seed`` and the topologies.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_WEIGHT_KEY,)))
    out = [np.ones(t.tree.n_nodes) for t in topologies]
    trials: dict[tuple, np.ndarray] = {}  # key -> (_SCAN_TRIES, n) ratios, in first-seen order
    users: dict[tuple, list[tuple[int, int]]] = {}
    for k, topology in enumerate(topologies):
        tree = topology.tree
        for node in tree.inner_nodes:
            kids = list(tree.children(node))
            if len(kids) == 2:
                continue
            if topology.widths[node] == 0 and not topology.widths[kids].any():
                ratios = np.sort(tree.masses[kids] / tree.masses[node])
                key: tuple = (len(kids), ratios.tobytes())
                if key not in trials:
                    trials[key] = np.broadcast_to(ratios, (_SCAN_TRIES, len(kids)))
            else:
                key = (len(kids), k, node)
                masses = sample_masses(topology, _SCAN_TRIES, rng)
                trials[key] = masses[:, kids] / masses[:, node, None]
            users.setdefault(key, []).append((k, node))
    keys = sorted(trials, key=lambda key: key[0])  # stable: first-seen order within each n
    for n_children in sorted({key[0] for key in keys}):
        group = [key for key in keys if key[0] == n_children]
        _, weights = engine.raw(np.concatenate([trials[key] for key in group]), rng)
        for i, key in enumerate(group):
            estimate = min(
                1.0, _MARGIN * float(weights[i * _SCAN_TRIES : (i + 1) * _SCAN_TRIES].max())
            )
            for k, node in users[key]:
                out[k][node] = estimate
    return out


def sample_masses(topology: Topology, n_events: int, rng: np.random.Generator) -> np.ndarray:
    """Per-event node masses ``(E, n_nodes)``: nominal, or Breit-Wigner where a width is set.

    A particle with a width takes a mass between its children's threshold and what its parent
    leaves after the siblings before it took theirs (the later siblings' thresholds reserved).
    """
    tree = topology.tree
    nominal = np.asarray(tree.masses, dtype=np.float64)
    low = topology.thresholds()
    masses = np.broadcast_to(nominal, (n_events, tree.n_nodes)).copy()
    if not np.any(topology.widths > 0):
        return masses
    for node in tree.preorder():
        kids = list(tree.children(node))
        if not kids:
            continue
        free = masses[:, node] - low[kids].sum()
        for child in kids:
            free = free + low[child]  # the room this child may take
            width = topology.widths[child]
            if width > 0:
                masses[:, child] = _breit_wigner(nominal[child], width, low[child], free, rng)
            free = free - masses[:, child]
    return masses


def _breit_wigner(
    mass: float, width: float, low: float, high: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Relativistic Breit-Wigner masses in ``(low, high)``: Cauchy in ``s = m^2``."""
    scale = mass * width

    def cdf(m: np.ndarray | float) -> np.ndarray:
        return np.arctan((np.square(m) - mass**2) / scale) / np.pi + 0.5

    u = cdf(low) + rng.random(np.shape(high)) * (cdf(high) - cdf(low))
    s = mass**2 + scale * np.tan(np.pi * (u - 0.5))
    return np.clip(np.sqrt(np.maximum(s, 0.0)), low, high)


def boost(momenta: np.ndarray, frame: np.ndarray, frame_mass: np.ndarray) -> np.ndarray:
    """Boost 4-momenta from the rest frame of ``frame`` into the frame ``frame`` is given in.

    Args:
        momenta: ``(..., 4)`` ``(px, py, pz, E)`` in the rest frame.
        frame: ``(..., 4)`` the moving frame's 4-momentum (broadcast against ``momenta``).
        frame_mass: ``(...)`` its mass (passed, not recomputed, to keep precision).

    Returns:
        ``(..., 4)`` boosted momenta.
    """
    gamma = frame[..., 3] / frame_mass
    beta = frame[..., :3] / frame[..., 3:4]
    along = (beta * momenta[..., :3]).sum(-1)
    factor = gamma**2 / (gamma + 1) * along + gamma * momenta[..., 3]
    out = np.empty(np.broadcast_shapes(momenta.shape, frame.shape))
    out[..., :3] = momenta[..., :3] + beta * factor[..., None]
    out[..., 3] = gamma * (momenta[..., 3] + along)
    return out


def smear(
    leaves: np.ndarray, leaf_masses: np.ndarray, resolution: float, rng: np.random.Generator
) -> np.ndarray:
    """Relative Gaussian momentum resolution, ``E`` recomputed from the leaf's mass.

    Args:
        leaves: ``(E, L, 4)``.
        leaf_masses: ``(L,)`` or ``(E, L)``.
        resolution: sigma of ``p_i -> p_i (1 + sigma * N(0, 1))`` for each component.

    Returns:
        ``(E, L, 4)`` smeared copy (the input when ``resolution`` is 0).
    """
    if resolution <= 0:
        return leaves
    out = leaves.copy()
    out[..., :3] *= 1.0 + resolution * rng.standard_normal(leaves[..., :3].shape)
    out[..., 3] = np.sqrt(np.square(out[..., :3]).sum(-1) + np.square(leaf_masses))
    return out


def add_background(
    n_events: int, kinematics: Kinematics, masses: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    """Per event, a Poisson number of leaves outside the tree (LCAG class 0 with every leaf).

    Each has a mass drawn from ``masses`` (or ``kinematics.background_masses``), an isotropic
    direction and an exponential ``|p|`` of mean ``kinematics.background_momentum``.

    Returns:
        ``n_events`` arrays ``(k_e, 4)``.
    """
    if kinematics.background_mean <= 0:
        return [np.zeros((0, 4))] * n_events
    pool = np.asarray(kinematics.background_masses or masses, dtype=np.float64)
    counts = rng.poisson(kinematics.background_mean, size=n_events)
    total = int(counts.sum())
    mass = rng.choice(pool, size=total)
    p = rng.exponential(kinematics.background_momentum, size=total)
    cos_theta = rng.uniform(-1, 1, size=total)
    phi = rng.uniform(0, 2 * np.pi, size=total)
    sin_theta = np.sqrt(1 - cos_theta**2)
    vectors = np.stack(
        [
            p * sin_theta * np.cos(phi),
            p * sin_theta * np.sin(phi),
            p * cos_theta,
            np.sqrt(p**2 + mass**2),
        ],
        axis=1,
    )
    return np.split(vectors, np.cumsum(counts)[:-1])
