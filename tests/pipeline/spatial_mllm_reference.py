"""Spatial-MLLM's ``maximum_coverage_sampling`` (src/sampling/sa_sampling.py), written out plainly as
the tests' independent reference: greedy over per-frame voxel sets, the first maximum (lowest frame)
winning ties, stopping once no frame adds a voxel."""
from __future__ import annotations


def greedy_picks(sets: list[set], k: int) -> list[int]:
    """Frame positions in pick order; at most ``k``."""
    selected, covered, remaining = [], set(), set(range(len(sets)))
    for _ in range(k):
        if not remaining:
            break
        best, best_gain = None, -1
        for f in sorted(remaining):  # the reference iterates a set of small ints: ascending order
            gain = len(sets[f] - covered)
            if gain > best_gain:
                best, best_gain = f, gain
        if best is None or best_gain <= 0:
            break
        selected.append(best)
        covered |= sets[best]
        remaining.remove(best)
    return selected
