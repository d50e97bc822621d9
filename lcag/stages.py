"""LCAS (lowest common ancestor *stage*) labels, as Belle II's graFEI defines them.

A stage map gives some particle species a stage >= 1 (:data:`GRAFEI_STAGES`: Upsilon(4S) 6,
B 5, D* and D_s* 4, D and D_s 3, K_S0 2, pi0 and J/psi 1). Intermediate particles without a
stage (rho, K*, eta, omega, ...) are contracted: their children count as their parent's, so
a pair's LCAS is the stage of the lowest *staged* ancestor of the pair. The root needs a
stage, and stages never rise going down the tree (a staged particle inside one of lower
stage has no consistent LCAS labelling; :func:`node_stages` rejects it).

An LCAS matrix ``M`` (diagonal 0, off-diagonal >= 1) is then *valid*, the labelling of some
tree, exactly when it is an ultrametric: ``M[i, k] <= max(M[i, j], M[j, k])`` for all
distinct ``i, j, k`` (:func:`is_valid_lcas`); a child of the same stage as its parent is
indistinguishable from its parent, so the tree it determines (:func:`lcas_to_tree`) has
stages strictly falling from parent to child.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lcag.errors import InvalidInputError
from lcag.matrix import tree_to_lcas
from lcag.tree import DecayTree

__all__ = [
    "GRAFEI_STAGES",
    "is_valid_lcas",
    "lcas_to_tree",
    "node_stages",
    "stages_by_name",
    "tree_to_stage_lcas",
]

# |PDG id| -> stage (graFEI's, with D_s and D_s* beside D and D*)
GRAFEI_STAGES: dict[int, int] = {
    300553: 6,  # Upsilon(4S)
    511: 5, 521: 5,  # B0, B+
    413: 4, 423: 4, 433: 4,  # D*+, D*0, D_s*+
    411: 3, 421: 3, 431: 3,  # D+, D0, D_s+
    310: 2,  # K_S0
    111: 1, 443: 1,  # pi0, J/psi
}  # fmt: skip


def stages_by_name(names: Mapping[str, int] | None) -> dict[int, int]:
    """A stage map keyed by decay-table (EvtGen) particle names, as ``|PDG id| -> stage``;
    ``None`` gives :data:`GRAFEI_STAGES`.

    Raises:
        InvalidInputError: a name ``particle`` does not know, or a stage below 1.
    """
    if names is None:
        return dict(GRAFEI_STAGES)
    from particle import Particle

    out: dict[int, int] = {}
    for name, stage in names.items():
        try:
            pdg = abs(int(Particle.from_evtgen_name(name).pdgid))
        except (LookupError, ValueError):
            raise InvalidInputError(f"lcas.stages: unknown particle name {name!r}") from None
        if int(stage) < 1:
            raise InvalidInputError(f"lcas.stages.{name} = {stage}: stages start at 1")
        out[pdg] = int(stage)
    return out


def node_stages(tree: DecayTree, stages: Mapping[int, int] | None = None) -> np.ndarray:
    """``(n_nodes,)`` int64 the stage of each node's lowest staged ancestor-or-self (leaves 0).

    Args:
        tree: a tree with PDG ids.
        stages: ``|PDG id| -> stage``; default :data:`GRAFEI_STAGES`.

    Raises:
        InvalidInputError: no PDG ids, an unstaged root, or a staged particle inside one of
            lower stage (named).
    """
    stages = GRAFEI_STAGES if stages is None else stages
    if tree.pdg_ids is None:
        raise InvalidInputError("LCAS: the tree has no PDG ids to look stages up by")
    own = np.array([int(stages.get(abs(int(p)), 0)) for p in tree.pdg_ids], dtype=np.int64)
    if own[tree.root] < 1:
        raise InvalidInputError(
            f"LCAS: the mother {tree.label(tree.root)} (PDG id {int(tree.pdg_ids[tree.root])}) "
            "has no stage"
        )
    out = np.zeros(tree.n_nodes, dtype=np.int64)
    for node in tree.preorder():
        if tree.is_leaf(node):
            continue
        parent = tree.parent(node)
        above = out[parent] if parent >= 0 else own[node]
        if own[node] > above:
            raise InvalidInputError(
                f"LCAS: {tree.label(node)} (stage {own[node]}) decays inside a particle of "
                f"stage {above}; stages must not rise going down the tree"
            )
        out[node] = own[node] if own[node] else above
    return out


def tree_to_stage_lcas(tree: DecayTree, stages: Mapping[int, int] | None = None) -> np.ndarray:
    """The LCAS matrix ``(L, L)`` int64 of ``tree`` under a stage map (unstaged contracted)."""
    labels = node_stages(tree, stages)
    return tree_to_lcas(tree, lambda node: int(labels[node]))


def is_valid_lcas(matrix: np.ndarray) -> bool:
    """Whether ``matrix (L, L)`` is the LCAS labelling of some tree (see the module doc)."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        return False
    n = m.shape[0]
    off = ~np.eye(n, dtype=bool)
    if not (m == m.T).all() or (np.diag(m) != 0).any() or (m[off] < 1).any():
        return False
    bound = np.maximum(m[:, :, None], m[None, :, :])  # [i, j, k] = max(M[i, j], M[j, k])
    return bool((m[:, None, :] <= bound).all())


def lcas_to_tree(matrix: np.ndarray) -> tuple[DecayTree, np.ndarray]:
    """The tree a valid LCAS matrix ``(L, L)`` labels, and each node's stage ``(n_nodes,)``.

    Leaves are nodes ``0..L-1``; every inner node's stage is above its children's.

    Raises:
        InvalidInputError: the matrix is not a valid LCAS (:func:`is_valid_lcas`).
    """
    m = np.asarray(matrix, dtype=np.int64)
    if not is_valid_lcas(m) or m.shape[0] < 2:
        raise InvalidInputError("lcas_to_tree: not a valid LCAS matrix of two or more leaves")
    n = m.shape[0]
    parents: list[int] = [-1] * n
    stage: list[int] = [0] * n

    def build(members: list[int]) -> int:
        if len(members) == 1:
            return members[0]
        sub = m[np.ix_(members, members)]
        top = int(sub.max())
        blocks: list[list[int]] = []  # classes of "LCAS below top"
        for leaf in members:
            for block in blocks:
                if m[leaf, block[0]] < top:
                    block.append(leaf)
                    break
            else:
                blocks.append([leaf])
        node = len(parents)
        parents.append(-1)
        stage.append(top)
        for block in blocks:
            parents[build(block)] = node
        return node

    build(list(range(n)))
    return DecayTree.from_parents(parents), np.asarray(stage, dtype=np.int64)
