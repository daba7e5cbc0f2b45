"""``heads.task.check_same_layout``: a val split cached with other shapes than train is refused by name."""
from __future__ import annotations

import pytest

from navcache.heads.task import check_same_layout


def test_differing_layout_names_the_key_and_both_values():
    check_same_layout(("train", "val"), {"grid": 8, "D": 48}, {"grid": 8, "D": 48}, ("grid", "D"))
    with pytest.raises(ValueError, match=r"train and val caches differ in D: 48 vs 64"):
        check_same_layout(("train", "val"), {"grid": 8, "D": 48}, {"grid": 8, "D": 64}, ("grid", "D"))
