"""Example task functions.

`synapse_profile` is a real per-neuron CAVE task: it takes the worker's injected CAVEclient
(``cave``) and summarises a root ID's synapses from the datastack's synapse table.

`skeleton_stats` runs offline and is what ``tqflow demo`` queues: it grows a **synthetic**
branching neuron skeleton from a root ID and measures it. The skeleton is made up (a seeded
random tree), not data from any connectome; it stands in for the per-neuron work a real batch
does (fetching a skeleton or mesh from CAVE and measuring it), with a real, tunable CPU cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    from caveclient import CAVEclient


def synapse_profile(
    root_id: int,
    cave: "CAVEclient",
    synapse_table: Optional[str] = None,
    size_column: str = "size",
) -> dict[str, float | int | None]:
    """Input and output synapses of one neuron, from the materialization at the CAVE block's
    version. Autapses (pre = post) are left out: in automated segmentations they are
    almost always merge errors.

    Args:
        root_id: The neuron's root ID.
        cave: CAVEclient, injected by the worker from the batch's CAVE block.
        synapse_table: Table to read; default: the datastack's synapse table.
        size_column: Column with the synapse size.

    Returns:
        n_inputs, n_outputs: synapse counts
        n_presynaptic_partners, n_postsynaptic_partners: distinct partner root IDs
        mean_input_size, mean_output_size: mean synapse size (None without synapses)
    """
    table = synapse_table or cave.info.get_datastack_info()["synapse_table"]
    profile: dict[str, float | int | None] = {}
    for direction, own, partner in (
        ("input", "post_pt_root_id", "pre_pt_root_id"),
        ("output", "pre_pt_root_id", "post_pt_root_id"),
    ):
        rows = cave.materialize.query_table(
            table, filter_equal_dict={own: int(root_id)}, metadata=False, log_warning=False
        )
        rows = rows[rows[partner] != rows[own]]
        partners = "n_presynaptic_partners" if direction == "input" else "n_postsynaptic_partners"
        profile[f"n_{direction}s"] = int(len(rows))
        profile[partners] = int(rows[partner].nunique())
        profile[f"mean_{direction}_size"] = float(rows[size_column].mean()) if len(rows) else None
    return profile


def skeleton_stats(
    root_id: int,
    n_nodes: int = 2_000,
    branch_probability: float = 0.02,
    step_um: float = 1.0,
) -> dict[str, float | int]:
    """Statistics of a synthetic neuron skeleton seeded by ``root_id``.

    The tree grows one node at a time from the soma at the origin: each new node continues the
    newest branch, or with ``branch_probability`` starts a branch from a random earlier node,
    a gamma-distributed step (mean ``step_um``) away in a direction that drifts smoothly. Cost grows with ``n_nodes``.

    Returns:
        cable_length_um: total length of all segments
        n_branch_points: nodes with more than one child
        n_tips: nodes with no child
        radius_of_gyration_um: spread of the nodes around their centroid
        max_path_length_um: longest path from the soma to a tip
    """
    if n_nodes < 2:
        raise ValueError(f"n_nodes must be at least 2, got {n_nodes}")
    rng = np.random.default_rng(int(root_id) % 2**63)
    positions = np.zeros((n_nodes, 3))
    parents = np.full(n_nodes, -1)
    directions = np.zeros((n_nodes, 3))
    path_length = np.zeros(n_nodes)
    directions[0] = _unit(rng.normal(size=3))
    jitter = rng.normal(scale=0.3, size=(n_nodes, 3))
    branch_draws = rng.random(n_nodes)
    branch_from = rng.integers(0, np.arange(1, n_nodes + 1))
    steps = rng.gamma(shape=4.0, scale=step_um / 4.0, size=n_nodes)
    tip = 0
    for node in range(1, n_nodes):
        parent = branch_from[node] if branch_draws[node] < branch_probability else tip
        direction = _unit(directions[parent] + jitter[node])
        positions[node] = positions[parent] + steps[node] * direction
        directions[node] = direction
        parents[node] = parent
        path_length[node] = path_length[parent] + steps[node]
        tip = node
    children = np.bincount(parents[1:], minlength=n_nodes)
    centred = positions - positions.mean(axis=0)
    return {
        "cable_length_um": float(steps[1:].sum()),
        "n_branch_points": int((children > 1).sum()),
        "n_tips": int((children == 0).sum()),
        "radius_of_gyration_um": float(np.sqrt((centred**2).sum(axis=1).mean())),
        "max_path_length_um": float(path_length.max()),
    }


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def demo_root_ids(n: int = 200) -> list[int]:
    """Made-up root IDs for the embedded demo and the ``pipeline-local`` deployment."""
    return [864691135000000000 + i for i in range(n)]
