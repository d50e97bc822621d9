"""The NRI model's graph builder and message-passing block."""

from __future__ import annotations

import torch

from lcag.models.nri import NRIBlock, fully_connected_graph


def test_fully_connected_graph_sizes_3_1_4() -> None:
    mask = torch.tensor(
        [[1, 0, 1, 1, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool
    )  # sizes 3, 1, 4; the first event's leaves are not contiguous
    edge_index, batch, pos = fully_connected_graph(mask)
    assert edge_index.shape == (2, 6 + 0 + 12)
    assert batch.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    src, dst = edge_index
    assert (batch[src] == batch[dst]).all()  # all within events
    assert (src != dst).all()  # no self-loops
    assert len(set(zip(src.tolist(), dst.tolist(), strict=True))) == 18  # no duplicates
    assert torch.bincount(batch[src], minlength=3).tolist() == [6, 0, 12]
    # pos = (event, i, j) is the dense slot of each edge: target i, source j
    slots = torch.arange(15).view(3, 5)
    flat = slots[mask]
    b, i, j = pos
    assert (flat[dst] == slots[b, i]).all()
    assert (flat[src] == slots[b, j]).all()


def test_nri_block_shapes_and_reset() -> None:
    torch.manual_seed(0)
    block = NRIBlock(8)
    edge_index, _, _ = fully_connected_graph(torch.ones(2, 3, dtype=torch.bool))
    h, e = torch.randn(6, 8), torch.randn(edge_index.shape[1], 8)
    h2, e2 = block(h, edge_index, e)
    assert h2.shape == (6, 8)
    assert e2.shape == (12, 8)
    before = [p.clone() for p in block.parameters()]
    block.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, block.parameters(), strict=True))
