"""``stream_plan.buffer_order`` against a simulated shuffle buffer, step by step.

The loader's epoch order (and so every resumed or rerun epoch) depends on it: the vectorised
computation must yield exactly the order the buffer it describes would, for any sizes."""
from __future__ import annotations

import numpy as np
import pytest

from navcache.cache_specs.stream_plan import buffer_order


def simulated(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A buffer of ``size`` slots: each new item replaces a uniformly chosen resident, which is
    yielded; then the residents drain in a random order (same draws as ``buffer_order``)."""
    size = min(size, n)
    if size <= 1:
        return np.arange(n)
    buf, out = list(range(size)), []
    for t, j in enumerate(rng.integers(0, size, n - size).tolist()):
        out.append(buf[j])
        buf[j] = size + t
    return np.asarray(out + [buf[j] for j in rng.permutation(size).tolist()])


@pytest.mark.parametrize("n,size", [(815, 256), (815, 1024), (10, 10), (11, 10), (300, 1), (5, 100), (20000, 512), (3, 2)])
def test_buffer_order_is_the_simulated_buffer(n, size):
    for seed in range(3):
        got = buffer_order(n, size, np.random.default_rng([seed, 7]))
        assert np.array_equal(got, simulated(n, size, np.random.default_rng([seed, 7]))), (n, size, seed)
        assert np.array_equal(np.sort(got), np.arange(n))  # a permutation
        assert (got[: max(n - size, 0)] < size + np.arange(max(n - size, 0))).all()  # never yields an item before it is read
