"""Label vocabularies shared by the rover source, the demo world and the SIM heads.

The order is the class id: ``RISK.index("high") == 3``. Changing an order changes every cache and
checkpoint that stores ids, so bump the spec version if you ever do.
"""
from __future__ import annotations

RISK: tuple[str, ...] = ("none", "low", "medium", "high")
REASON: tuple[str, ...] = ("human", "obstacle", "tight_space", "unknown")
ACTION: tuple[str, ...] = ("continue", "slow", "stop", "reverse", "turn_left", "turn_right")

LABELS: dict[str, tuple[str, ...]] = {"risk": RISK, "reason": REASON, "action": ACTION}

TELEMETRY_FIELDS: tuple[str, ...] = ("ax", "ay", "az", "gx", "gy", "gz", "v", "w")

# NaVILA's discrete action space (vlnce_task.yaml): forward in 25 cm steps, turns in 15 degree steps.
NAVILA_FORWARD_CM: tuple[int, ...] = (25, 50, 75)
NAVILA_TURN_DEG: tuple[int, ...] = (15, 30, 45)
